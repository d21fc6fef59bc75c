"""Helpers to drive a real `lmscope lab` from outside (the browser tests, the latency benchmark, the screenshots):
start it in a subprocess on a free loopback port, and open Debian's chromium through Playwright.

    with lab_process("random:llama", runs) as url:
        with browser() as context:
            page = context.new_page(); page.goto(url)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> "str | None":
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lab_process(model: str, runs, *, port: "int | None" = None, timeout: float = 180, log=None):
    """`lmscope lab` in a subprocess (this interpreter, this copy of lmscope); yields its address."""
    port = port or free_port()
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-c", "import sys; from lmscope.cli import main; sys.exit(main())", "lab",
           "--model", model, "--port", str(port), "--runs", str(runs)]
    proc = subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lmscope lab exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "api/info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > end:
                raise RuntimeError(f"lmscope lab did not answer within {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def browser(viewport=(1400, 900)):
    """A headless Chromium context with a fresh profile (Playwright driving Debian's chromium)."""
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield context
        finally:
            context.close()
