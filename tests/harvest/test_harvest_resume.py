"""A harvest killed with SIGKILL midway and rerun ends with the same files, byte for byte, as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import random_model
from lmscope.harvest import harvest, open_store
from lmscope.harvest.store import file_sha256

# The child runs a real harvest; each forward pass is slowed a little so that the parent can kill it between
# shards (the tiny model alone would finish before the parent looks). The slowdown touches no numbers. The
# uninterrupted reference and the rerun happen in the test's own process.
CHILD = """
import sys, time
import lmscope
from lmscope.harvest import harvest
model = lmscope.load("random:llama")
delay = float(sys.argv[2])
run = model.run
def slow_run(*args, **kwargs):
    time.sleep(delay)
    return run(*args, **kwargs)
model.run = slow_run
harvest(model, "python", SITES, 3000, sys.argv[1], **OPTIONS)
"""
SITES = ["resid_post.2", "attn_out.1"]
OPTIONS = dict(seq_len=32, batch_size=4, shard_tokens=256, progress=False)
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count in both processes: the same float rounding


def child(folder, delay):
    code = f"SITES = {SITES!r}\nOPTIONS = {OPTIONS!r}\n" + CHILD
    return subprocess.Popen([sys.executable, "-c", code, str(folder), str(delay)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shards_done(folder):
    try:
        return len(json.loads((folder / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_midway_then_rerun_gives_identical_shards(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    first = child(resumed, delay=0.02)
    uninterrupted = harvest(random_model("llama"), "python", SITES, 3000, reference, **OPTIONS)
    assert uninterrupted.shards_computed == 12 and uninterrupted.complete
    deadline = time.monotonic() + 60
    while shards_done(resumed) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    _, err = first.communicate()
    assert first.returncode == -signal.SIGKILL, err
    killed = json.loads((resumed / "manifest.json").read_text())
    n_before = len(killed["shards"])
    assert not killed["complete"] and 3 <= n_before < 12  # 3000 tokens in 12 shards of 256 (the last smaller)
    before = {e["file"]: (resumed / e["file"]).read_bytes() for e in killed["shards"]}

    rerun = harvest(random_model("llama"), "python", SITES, 3000, resumed, **OPTIONS)
    assert (rerun.shards_computed, rerun.shards_skipped, rerun.complete) == (12 - n_before, n_before, True)

    ref_store, res_store = open_store(reference), open_store(resumed)
    assert res_store.n_tokens == ref_store.n_tokens == 3000
    assert res_store.shards == ref_store.shards  # names, sizes, sha256, first windows
    for entry in ref_store.shards:
        name = entry["file"]
        assert (resumed / name).read_bytes() == (reference / name).read_bytes()
        assert file_sha256(resumed / name) == entry["sha256"]
    for name, data in before.items():  # shards finished before the kill were left as they were
        assert (resumed / name).read_bytes() == data
    leftovers = sorted(p.name for p in resumed.iterdir())
    assert leftovers == sorted(["manifest.json"] + [e["file"] for e in ref_store.shards])
