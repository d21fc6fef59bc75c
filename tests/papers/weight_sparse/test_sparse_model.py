"""The weight-sparse GPT: AbsTopK semantics, Auto-class registration, save -> lmscope.load round trip."""
import json

import pytest
import torch

import lmscope
from lmscope.papers.weight_sparse.model import MODEL_TYPE, AbsTopK, SparseGPTConfig, SparseGPTForCausalLM, abstopk


def test_abstopk_keeps_exactly_k_per_row_the_largest_magnitudes():
    x = torch.randn(5, 7, 40, generator=torch.Generator().manual_seed(0))
    y = abstopk(x, 10)
    assert torch.equal((y != 0).sum(-1), torch.full((5, 7), 10))
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # kept entries unchanged
    smallest_kept = x.abs().masked_fill(~kept, float("inf")).amin(-1)
    largest_dropped = x.abs().masked_fill(kept, -1.0).amax(-1)
    assert torch.all(smallest_kept > largest_dropped)
    assert torch.equal(abstopk(x, 40), x)
    assert AbsTopK(64, 0.25).k == 16


def test_abstopk_passes_gradient_only_through_kept_entries():
    x = torch.tensor([[3.0, -5.0, 0.5, 1.0], [0.1, 0.2, -0.3, 4.0]], requires_grad=True)
    abstopk(x, 2).mul(torch.arange(1.0, 5.0)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]]))


def test_saved_folder_loads_with_lmscope_and_gives_equal_logits(tmp_path):
    from lmscope.papers.weight_sparse.data import train_tokenizer
    tok = train_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    config = SparseGPTConfig(vocab_size=len(tok), n_positions=32, n_embd=32, n_inner=64, n_layer=2)
    torch.manual_seed(0)
    hf = SparseGPTForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == MODEL_TYPE
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    model = lmscope.load(f"hf:{tmp_path}")
    assert model.adapter.family == "sparse_gpt" and model.d_head == 16
    ids = torch.tensor([tok("def f(x):\n    return")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model.hf(ids).logits, hf(ids).logits)
    assert torch.equal(model.run(ids).logits, hf(ids).logits)


def test_config_refuses_a_width_that_is_not_a_multiple_of_d_head():
    with pytest.raises(ValueError, match="multiple of d_head"):
        SparseGPTConfig(n_embd=40, d_head=16)
