"""The lab's latency on a model (default: the default model, SmolLM2-135M-Instruct).

    OMP_NUM_THREADS=1 python benchmarks/lab_latency.py [--model smollm2] [--repeats 7]

1. Logit lens end to end: POST /api/run/lens to a real `lmscope lab` subprocess over HTTP (Host/Origin checks,
   the model lock, lmscope.logit_lens, .figure() and .target_figure(), Plotly JSON, the HTTP round trip), as a ratio to
   the bare library call lmscope.logit_lens(model, prompt, target=...) in this process (one thread each, medians
   of --repeats after one warm-up each). Target: <= 1.2x.
2. The page's time to interactive in headless Chromium (Playwright): from navigation to the forms working with the
   model's info filled in (body[data-ready]); to Plotly.js (4 MB, loaded asynchronously) being ready; and the first
   heatmap after a click on "Logit lens".
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request

import torch

import lmscope
from lmscope.lab.testing import browser, lab_process

PROMPT = "The capital of Japan is"
TARGET = " Tokyo"


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def page_timings(url: str) -> dict:
    with browser() as context:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        interactive = time.perf_counter() - start
        page.wait_for_selector("body[data-plotly='1']", state="attached")
        plotly = time.perf_counter() - start
        page.fill("#wb-prompt", PROMPT)
        start = time.perf_counter()
        page.click("#wb-lens")
        page.wait_for_selector("#wb-lens-plot[data-ready='1'] .heatmaplayer")
        heatmap = time.perf_counter() - start
        nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    nav = json.loads(nav)
    return {"time_to_interactive_s": interactive, "plotly_loaded_s": plotly, "dom_content_loaded_s": nav["domContentLoadedEventEnd"] / 1000,
            "first_heatmap_after_click_s": heatmap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = lmscope.load(args.model)
    target = TARGET if args.model == "smollm2" else None
    bare = median_seconds(lambda: lmscope.logit_lens(model, PROMPT, target=target), args.repeats)
    with tempfile.TemporaryDirectory() as runs, lab_process(args.model, runs) as url:
        body = {"prompt": PROMPT, "target": target, "top_k": 5}
        end_to_end = median_seconds(lambda: post(url + "api/run/lens", body), args.repeats)
        page = page_timings(url)
    print(f"model {args.model}, prompt {PROMPT!r}, target {target!r}, medians of {args.repeats} (1 thread each)")
    print(f"  bare lmscope.logit_lens           {bare * 1000:8.1f} ms")
    print(f"  lab POST /api/run/lens end to end {end_to_end * 1000:8.1f} ms   ratio {end_to_end / bare:.2f}x "
          f"(target <= 1.2x)")
    print(f"  page time to interactive          {page['time_to_interactive_s'] * 1000:8.1f} ms "
          f"(DOMContentLoaded {page['dom_content_loaded_s'] * 1000:.0f} ms)")
    print(f"  Plotly.js loaded and parsed       {page['plotly_loaded_s'] * 1000:8.1f} ms")
    print(f"  first heatmap after the click     {page['first_heatmap_after_click_s'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
