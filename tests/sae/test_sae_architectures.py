"""SAE architectures: exact semantics of encode / decode / loss terms with hand-set weights."""
import pytest
import torch

from lmscope.core.errors import InputError
from lmscope.sae import SAEConfig, build_sae


def _identity_sae(arch, d=6, scale=1.0, **kw):
    """d_sae = 2d: latents relu(x_i) and relu(-x_i), so decode(encode(x)) == x exactly for relu-like SAEs."""
    sae = build_sae(SAEConfig(architecture=arch, d_in=d, d_sae=2 * d, k=kw.pop("k", 2 * d), input_scale=scale,
                              output_scale=scale, **kw))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_identity_weights_reconstruct_exactly_and_scale_is_undone(arch):
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) * 30
    sae = _identity_sae(arch, scale=0.1)
    out = sae(x)
    assert torch.allclose(out.recon, x, atol=1e-5)
    # latents live in normalised units: x * input_scale
    assert torch.allclose(out.latents.to_dense()[:, :6], torch.relu(x * 0.1), atol=1e-6)
    assert torch.allclose(out.terms["mse"], torch.tensor(0.0), atol=1e-8)


def test_topk_keeps_exactly_the_k_largest():
    sae = _identity_sae("topk", k=3)
    x = torch.tensor([[5.0, -4.0, 3.0, 0.5, -0.1, 2.0]])
    z = sae.encode(x)
    assert (z > 0).sum() == 3
    assert torch.equal(z[0, :6], torch.tensor([5.0, 0, 3.0, 0, 0, 0]))
    assert z[0, 7] == 4.0   # relu(-x_1)


def test_relu_l1_is_weighted_by_decoder_norms():
    sae = _identity_sae("relu", l1_coeff=0.5)
    with torch.no_grad():
        sae.W_dec[0] *= 3.0
    x = torch.tensor([[1.0, 2.0, 0, 0, 0, 0]])
    out = sae(x)
    assert torch.isclose(out.terms["l1"], torch.tensor(1.0 * 3 + 2.0))


def test_batchtopk_selects_k_times_batch_over_the_batch_and_learns_a_threshold():
    sae = _identity_sae("batchtopk", k=2)
    x = torch.tensor([[9.0, 8.0, 7.0, 0, 0, 0], [1.0, 0.5, 0, 0, 0, 0]])
    sae.train()
    z = sae.encode(x)
    # 4 largest positive latents of the whole batch: 9, 8, 7 (row 0) and 1 (row 1)
    assert torch.equal((z > 0).sum(1), torch.tensor([3, 1]))
    assert float(sae.threshold) == 1.0
    sae.eval()
    assert torch.equal(sae.encode(x)[1, :6], torch.tensor([0.0, 0, 0, 0, 0, 0]))  # 1.0 is not > threshold 1.0


def test_jumprelu_threshold_and_its_straight_through_gradient():
    sae = _identity_sae("jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.2, l0_coeff=1.0)
    x = torch.tensor([[0.45, 0.55, 2.0, 0, 0, 0]])
    z = sae.encode(x)
    assert torch.allclose(z[0, :3], torch.tensor([0.0, 0.55, 2.0]))
    out = sae(x)
    assert torch.isclose(out.terms["l0_penalty"], torch.tensor(2.0))
    out.loss.backward()
    g = sae.log_threshold.grad
    # only latents with pre-activation within bandwidth/2 of the threshold get a threshold gradient
    assert g[0] != 0 and g[1] != 0 and g[2] == 0 and g[3] == 0


def test_auxk_uses_dead_latents_only():
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(architecture="topk", d_in=8, d_sae=32, k=2))
    x = torch.randn(16, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    assert sae(x, dead=dead).terms["auxk"] == 0
    dead[:10] = True
    out = sae(x, dead=dead)
    assert out.terms["auxk"] > 0
    out.loss.backward()
    # AuxK's decoder gradient reaches dead rows that the main TopK did not pick
    live_rows = out.fired
    reached = sae.W_dec.grad.abs().sum(1) > 0
    assert reached[:10].any() and not reached[10:][~live_rows[10:]].any()


def test_transcoder_predicts_another_width_without_subtracting_b_dec():
    sae = build_sae(SAEConfig(architecture="topk", d_in=4, d_sae=8, d_out=3, k=2, site_in="resid_mid.0",
                              site_out="mlp_out.0"))
    assert sae.is_transcoder
    x, t = torch.randn(5, 4), torch.randn(5, 3)
    out = sae(x, t)
    assert out.recon.shape == (5, 3)
    with torch.no_grad():
        sae.b_dec.fill_(100.0)
    assert torch.equal(sae.encode(x), sae.activate(x @ sae.W_enc + sae.b_enc))


def test_bad_configs_and_inputs():
    with pytest.raises(InputError):
        build_sae(SAEConfig(architecture="gated", d_in=4, d_sae=8))
    with pytest.raises(InputError):
        SAEConfig(architecture="topk", d_in=4, d_sae=8, k=9)
    sae = build_sae(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2))
    with pytest.raises(InputError, match="size 4"):
        sae.encode(torch.randn(2, 5))


def test_decoder_normalisation_and_parallel_gradient_removal():
    sae = build_sae(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2))
    with torch.no_grad():
        sae.W_dec.mul_(torch.arange(1, 9.0)[:, None])
    sae.W_dec.grad = sae.W_dec.detach().clone()     # entirely parallel to the rows
    sae.remove_parallel_grad()
    assert sae.W_dec.grad.abs().max() < 1e-5
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(8))


def test_topk_training_fast_path_equals_the_dense_path():
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(architecture="topk", d_in=16, d_sae=64, k=4, input_scale=0.5))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    sae.train()
    fast = sae(x, dead=dead)
    fast.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    dense = super(type(sae), sae).forward(x, None, dead)      # the generic path of the base class
    dense.loss.backward()
    assert torch.allclose(fast.loss, dense.loss) and fast.terms["auxk"] > 0
    assert torch.equal(fast.latents.to_dense(), dense.latents) and torch.equal(fast.fired, dense.fired)
    for name, p in sae.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5), name
