"""Weight-sparse training on the tiny preset: scheduled nonzeros after every step, j per neuron, the annealing
schedule, resume == uninterrupted, the dense baseline, bad output folders."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lmscope.core.errors import InputError
from lmscope.papers.weight_sparse.config import preset_config
from lmscope.papers.weight_sparse.sparsity import apply_masks, kept_fraction, n_kept, sparse_matrices, topk_mask
from lmscope.papers.weight_sparse.train import train_sparse


def test_annealing_schedule_values():
    assert kept_fraction(0, 100, 1 / 64) == 1.0
    assert kept_fraction(25, 100, 1 / 64) == pytest.approx(1 - (1 - 1 / 64) / 2)
    assert kept_fraction(50, 100, 1 / 64) == 1 / 64
    assert kept_fraction(99, 100, 1 / 64) == 1 / 64
    assert kept_fraction(10, 100, 1.0) == 1.0
    assert kept_fraction(10, 100, 0.5, anneal=0.2) == pytest.approx(0.75)


def test_topk_mask_is_exact_and_keeps_j_per_row_and_column():
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    w[:, 3] *= 1e-3  # a column that a plain global top-k would drop entirely
    k = n_kept((40, 24), 0.05, 2)
    assert k == 2 * (40 + 24)  # 5% of 960 is 48: the per-neuron floor wins
    mask = topk_mask(w, k, 2)
    assert int(mask.sum()) == k
    assert mask.sum(0).min() >= 2 and mask.sum(1).min() >= 2
    big = n_kept((40, 24), 0.5, 2)
    mask = topk_mask(w, big, 2)
    assert int(mask.sum()) == big == 480
    assert mask.sum(0).min() >= 2


def _cfg(tmp_path, name="run", **kw):
    return preset_config("tiny", out=str(tmp_path / name), **kw)


def test_after_every_step_each_matrix_has_its_scheduled_nonzeros(tmp_path):
    cfg = _cfg(tmp_path)
    seen = []

    def check(step, model):
        frac = kept_fraction(step, cfg.steps, cfg.weight_frac, cfg.anneal)
        for name, w in sparse_matrices(model):
            assert int((w != 0).sum()) == n_kept(tuple(w.shape), frac, cfg.min_per_neuron), (step, name)
            assert (w != 0).sum(0).min() >= cfg.min_per_neuron and (w != 0).sum(1).min() >= cfg.min_per_neuron
        seen.append(frac)

    result = train_sparse(cfg, progress=False, on_step=check)
    assert len(seen) == cfg.steps and seen[0] < 1 and seen[-1] == cfg.weight_frac
    assert result.final["nonzero_params"] < 0.4 * result.final["total_params"]
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["history"][-1]["density"]["transformer.wte.weight"] == pytest.approx(cfg.weight_frac, abs=0.01)
    assert set(log["tasks"]) and all("accuracy" in v or "error" in v for v in log["tasks"].values())


def test_dense_baseline_keeps_every_weight(tmp_path):
    result = train_sparse(_cfg(tmp_path, weight_frac=1.0), progress=False)
    assert result.final["nonzero_params"] == result.final["total_params"]


def test_resume_equals_uninterrupted(tmp_path):
    straight = _cfg(tmp_path, "straight")
    train_sparse(straight, progress=False)
    split = _cfg(tmp_path, "split")
    partial = train_sparse(split, progress=False, stop_after=4)
    assert partial.final.get("stopped")
    train_sparse(split, progress=False, resume=True)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = json.loads((tmp_path / "straight" / "train_log.json").read_text())["history"]
    lb = json.loads((tmp_path / "split" / "train_log.json").read_text())["history"]
    assert [r["val_loss"] for r in la] == [r["val_loss"] for r in lb]


def test_occupied_or_foreign_output_folder_is_refused_before_work(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        train_sparse(_cfg(tmp_path), progress=False)
    with pytest.raises(InputError, match="holds no sparse training run"):
        train_sparse(_cfg(tmp_path), progress=False, overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="cannot resume"):
        train_sparse(_cfg(tmp_path), progress=False, resume=True)


def test_bad_options_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="unknown preset"):
        preset_config("huge", out=str(tmp_path))
    with pytest.raises(InputError, match="weight-frac"):
        preset_config("tiny", out=str(tmp_path), weight_frac=0.0)
    with pytest.raises(InputError, match="multiple of --d-head"):
        preset_config("tiny", out=str(tmp_path), n_embd=40)


def test_apply_masks_at_fraction_one_changes_nothing():
    from lmscope.papers.weight_sparse.model import SparseGPTConfig, SparseGPTForCausalLM
    model = SparseGPTForCausalLM(SparseGPTConfig(vocab_size=300, n_positions=16, n_embd=32, n_inner=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_masks(model, 1.0, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
