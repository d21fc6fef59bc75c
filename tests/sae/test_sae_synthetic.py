"""Synthetic ground truth: a TopK SAE recovers planted sparse features; data-parallel training (torchrun, 2 CPU
ranks over gloo) reaches the same quality as one rank."""
import json
import os
import subprocess
import sys

import pytest
import torch

from lmscope.sae import SyntheticFeatures, synthetic_benchmark


def test_planted_features_have_the_stated_statistics():
    data = SyntheticFeatures(256, 96, mean_active=5.0, seed=0)
    assert torch.allclose(data.features.norm(dim=1), torch.ones(256))
    assert data.probs.sum() == pytest.approx(5.0, rel=1e-5) and data.probs[0] > data.probs[-1]
    _, coef = data.sample(20000, torch.Generator().manual_seed(1))
    assert (coef > 0).sum(1).float().mean() == pytest.approx(5.0, rel=0.03)
    # the score: the true features themselves as a decoder score 1, random directions far less
    assert data.mean_max_cos(data.features)[0] == pytest.approx(1.0)
    assert data.mean_max_cos(torch.randn(512, 96, generator=torch.Generator().manual_seed(2)))[0] < 0.5


def test_topk_sae_recovers_planted_features():
    r = synthetic_benchmark()           # 256 features in d=96, ~5 active, TopK k=10, d_sae=512, 150k samples
    assert r.mean_max_cos > 0.9, r.summary()
    assert r.fvu < 0.1, r.summary()
    assert r.dead_frac < 0.05, r.summary()


def test_torchrun_two_ranks_matches_one_rank():
    args = ["sae", "synthetic", "--json", "--tokens", "30000", "--features", "128", "--dim", "64",
            "--expansion", "2", "--k", "8"]
    one = synthetic_benchmark(n_features=128, d=64, expansion=2, k=8, n_tokens=30000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lmscope.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["world_size"] == 2 and one.world_size == 1
    assert two["n_tokens"] == one.n_tokens
    # each rank takes half of every global batch and DDP averages the gradients: the same training up to float
    # summation order (and AuxK's per-rank normalisation), so the scores agree closely
    assert abs(two["mean_max_cos"] - one.mean_max_cos) < 0.003
    assert abs(two["fvu"] - one.fvu) < 0.005
    assert abs(two["dead_frac"] - one.dead_frac) < 0.02
    assert one.mean_max_cos > 0.9
