"""SAE training under torchrun (2 CPU ranks over gloo), stopped after a checkpoint and resumed by the same command,
ends with exactly the weights and history of the uninterrupted 2-rank run: every rank replays its share of the
stream up to the checkpoint, and the SAE, Adam, the schedule and the dead-latent counters (reduced over ranks)
come back from the one checkpoint rank 0 wrote."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_model
from lmscope.harvest import harvest

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _train(out: Path, store: Path) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "lmscope.cli", "sae", "train",
           "--model", "random:llama", "--harvest", str(store), "--site", "resid_post.1", "--out", str(out),
           "--n-tokens", "1536", "--batch-size", "64", "--d-sae", "64", "--k", "4", "--warmup-steps", "2",
           "--dead-tokens", "256", "--norm-batches", "2", "--checkpoint-every", "4", "--shuffle-buffer", "512",
           "--json"]
    return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this interpreter")
def test_two_ranks_stopped_and_resumed_equal_the_uninterrupted_run(tmp_path):
    store = tmp_path / "harvest"
    harvest(random_model("llama"), "python", ["resid_post.1"], 2000, store, seq_len=32, batch_size=4,
            shard_tokens=500, progress=False)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = _train(whole, store)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["world_size"] == 2 and first["n_steps"] == 24 and first["resumed_from"] == 0
    # what a run of the same command stopped between steps 8 and 12 leaves behind (as the one-process test sees
    # after a real interruption): its config and the checkpoints of steps 4 and 8, no SAE, no train.json
    cut.mkdir()
    shutil.copy(whole / "train_config.json", cut)
    for step in ("step_000004", "step_000008"):
        shutil.copytree(whole / "checkpoints" / step, cut / "checkpoints" / step)
    resumed = _train(cut, store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert second["resumed_from"] == 8 and second["world_size"] == 2      # it continued, not started afresh
    assert second["n_steps"] == 24 and second["n_tokens"] == first["n_tokens"]
    assert second["history"] == first["history"]
    a, b = load_file(str(whole / "sae.safetensors")), load_file(str(cut / "sae.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == [f"step_{s:06d}" for s in range(4, 25, 4)]
