"""interpolate: w * act + (1 - w) * value, exact at w = 1 and w = 0, differentiable in w."""
import pytest
import torch

import lmscope
from lmscope.core.edits import interpolate
from conftest import random_model


def _mean_z(model, ids, layer):
    return model.run(ids, read=[f"z.{layer}"]).acts[f"z.{layer}"].mean(dim=(0, 1))


def test_weight_one_is_the_model_and_weight_zero_is_the_value(model, ids):
    value = _mean_z(model, ids, 1)
    clean = model.run(ids, read=["z.1"])
    kept = model.run(ids, read=["z.1"], edits=[interpolate("z.1", value, torch.ones(model.n_heads))])
    assert torch.equal(kept.logits, clean.logits)
    gone = model.run(ids, read=["z.1"], edits=[interpolate("z.1", value, torch.zeros(model.n_heads))])
    replaced = model.run(ids, read=["z.1"], edits=[lmscope.mean_ablate("z.1", value)])
    assert torch.equal(gone.acts["z.1"], torch.broadcast_to(value, clean.acts["z.1"].shape))
    assert torch.equal(gone.logits, replaced.logits)


def test_per_head_weights_mix_each_head_on_its_own(ids):
    m = random_model("llama")
    value = torch.randn(m.n_heads, m.d_head, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([1.0, 0.0, 0.25, 0.5])
    clean = m.run(ids, read=["z.0"]).acts["z.0"]
    out = m.run(ids, read=["z.0"], edits=[interpolate("z.0", value, w)]).acts["z.0"]
    assert torch.equal(out[:, :, 0], clean[:, :, 0])
    assert torch.equal(out[:, :, 1], torch.broadcast_to(value[1], out[:, :, 1].shape))
    torch.testing.assert_close(out[:, :, 2], 0.25 * clean[:, :, 2] + 0.75 * value[2])
    torch.testing.assert_close(out[:, :, 3], 0.5 * clean[:, :, 3] + 0.5 * value[3])


def test_gradient_reaches_the_weight(ids):
    m = random_model("llama")
    value = torch.zeros(m.d_model)
    w = torch.tensor(0.5, requires_grad=True)
    run = m.run(ids, read=["mlp_out.1"], edits=[interpolate("mlp_out.1", value, w)], grad=True)
    run.logits[0, -1, 3].backward()
    assert w.grad is not None and float(w.grad) != 0.0
    # d logit / d w at w: finite difference agrees
    with torch.no_grad():
        lo = m.run(ids, edits=[interpolate("mlp_out.1", value, 0.5 - 1e-2)]).logits[0, -1, 3]
        hi = m.run(ids, edits=[interpolate("mlp_out.1", value, 0.5 + 1e-2)]).logits[0, -1, 3]
    assert float(w.grad) == pytest.approx(float(hi - lo) / 2e-2, rel=2e-2, abs=1e-4)
    assert not m.has_hooks()


def test_per_position_batch_value_and_neuron_weights(ids):
    m = random_model("llama")
    source = m.run(ids.flip(0), read=["neurons.2"]).acts["neurons.2"]        # [batch, seq, d_mlp]
    w = torch.zeros(m.d_mlp)
    w[:10] = 1.0
    clean = m.run(ids, read=["neurons.2"]).acts["neurons.2"]
    out = m.run(ids, read=["neurons.2"], edits=[interpolate("neurons.2", source, w)]).acts["neurons.2"]
    assert torch.equal(out[..., :10], clean[..., :10]) and torch.equal(out[..., 10:], source[..., 10:])


def test_bad_weights_are_one_clear_error(ids):
    m = random_model("llama")
    value = torch.zeros(m.n_heads, m.d_head)
    for bad in (torch.ones(m.n_heads + 1), torch.ones(m.n_heads, dtype=torch.float64), "x"):
        with pytest.raises(lmscope.EditError):
            m.run(ids, edits=[interpolate("z.0", value, bad)])
    assert not m.has_hooks()
