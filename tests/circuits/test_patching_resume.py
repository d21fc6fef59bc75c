"""Patching sweeps resumed from the patched layer (and position) give the numbers of full patched runs."""
import pytest
import torch

from conftest import random_model
from lmscope.circuits.patching import activation_patching
from lmscope.circuits.tasks import TaskSet


def _task(n=4, length=7, change=2):
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(0, 256, (n, length), generator=g).tolist()
    corrupt = [row[:change] + [(row[change] + 9) % 256] + row[change + 1:] for row in clean]
    return TaskSet(name="toy", clean=clean, corrupt=corrupt, answer=[10 + i for i in range(n)],
                   wrong=[20 + i for i in range(n)], metric_name="logit_diff", n_filtered=0, filtered={},
                   templates=[0] * n)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3", "qwen3"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_resumed_sweep_is_bit_exact_without_the_prefix_cache(family, direction):
    m = random_model(family)
    sites = ["resid_pre", "attn_out", "mlp_out", "z", "resid_post"] + ([] if m.parallel else ["resid_mid"])
    for per_position in (True, False):
        kw = dict(sites=sites, direction=direction, per_position=per_position, batch_size=3, prefix_cache=False)
        old = activation_patching(m, _task(), resume=False, **kw)
        new = activation_patching(m, _task(), head_batch=False, layer_batch=False, **kw)
        assert new.raw == old.raw and new.effects == old.effects             # exact floats, every cell
        batched = activation_patching(m, _task(), **kw)     # heads of a layer, layers of a position: one batch
        for kind in old.raw:
            torch.testing.assert_close(torch.tensor(batched.raw[kind], dtype=torch.float64),
                                       torch.tensor(old.raw[kind], dtype=torch.float64), rtol=1e-5, atol=1e-6)
        base = new.corrupt_metric if direction == "denoising" else new.clean_metric   # the unpatched run
        assert any(abs(v - base) > 1e-3 for row in new.raw["resid_pre"] for v in row)  # the patches act
    assert not m.has_hooks() and "forward" not in vars(m.block_module(0))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_resumed_sweep_with_position_prefixes_matches_full_runs(family):
    m = random_model(family)
    kw = dict(sites=["resid_pre", "mlp_out", "z"], batch_size=3)
    full = activation_patching(m, _task(), resume=False, prefix_cache=False, **kw)
    new = activation_patching(m, _task(), **kw)
    assert "prefix cache" in new.notes[-1]
    for kind in full.raw:
        torch.testing.assert_close(torch.tensor(new.raw[kind], dtype=torch.float64),
                                   torch.tensor(full.raw[kind], dtype=torch.float64), rtol=0, atol=1e-5)
    # the prefix cache splits the attention sums differently: float rounding (1.8e-5 on gemma3, soft-capped)
    assert new.effects["resid_pre"][0][2] == pytest.approx(1.0, abs=5e-5)


def test_layer_batches_split_when_rows_are_capped(monkeypatch):
    import lmscope.circuits.patching as patching
    m = random_model("llama")
    kw = dict(sites=["resid_pre", "mlp_out"], batch_size=4)
    whole = activation_patching(m, _task(), **kw)
    calls = []
    original = patching._patch_layers
    monkeypatch.setattr(patching, "_patch_layers", lambda *a: calls.append(len(a[-2])) or original(*a))
    monkeypatch.setattr(patching, "MAX_BATCH_ROWS", 8)                 # 4 prompts: 2 layers per pass
    split = activation_patching(m, _task(), **kw)
    assert calls and max(calls) == 2
    for kind in whole.raw:
        torch.testing.assert_close(torch.tensor(split.raw[kind], dtype=torch.float64),
                                   torch.tensor(whole.raw[kind], dtype=torch.float64), rtol=1e-5, atol=1e-6)
