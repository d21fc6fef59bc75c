"""`lmscope sparse train` under torchrun with 2 CPU ranks (gloo): the same model as one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmscope.papers.weight_sparse.config import preset_config
from lmscope.papers.weight_sparse.train import train_sparse

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this interpreter")
def test_two_gloo_ranks_train_the_same_dense_baseline_as_one_process(tmp_path):
    two = tmp_path / "two"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "lmscope.cli", "sparse", "train",
           "--preset", "tiny", "--weight-frac", "1", "--steps", "4", "--task-prompts", "5", "--out", str(two), "--json"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["final"]["steps"] == 4  # rank 0 speaks
    train_sparse(preset_config("tiny", out=str(tmp_path / "one"), weight_frac=1.0, steps=4, task_prompts=5), progress=False)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for key in a:  # the gradient of the whole batch = the mean of two halves' gradients, up to rounding
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
