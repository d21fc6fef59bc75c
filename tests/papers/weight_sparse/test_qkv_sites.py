"""q/k/v and attn_in/mlp_in sites on every family: reading leaves the logits bit-identical, writing a site back
with its own value changes nothing, an edit reaches the logits, and q is the projection computed by hand."""
import pytest
import torch

import lmscope

from conftest import plain_logits

NEW_KINDS = ("attn_in", "q", "k", "v", "mlp_in")


def supported(model, kind: str) -> bool:
    """Falcon's fused query_key_value (grouped by KV head) is not split into q/k/v sites, nor its attn_in named."""
    a = model.adapter
    if kind == "mlp_in":
        return model.has_block_module(a.mlp_in_norm)
    return bool(a.qkv) if kind in "qkv" else bool(a.attn_in_norm) if kind == "attn_in" else True


def need(model, *kinds):
    missing = [k for k in kinds if not supported(model, k)]
    if missing:
        with pytest.raises(lmscope.SiteError, match="names no"):  # one clear error
            model.run(torch.zeros(1, 2, dtype=torch.long), read=[f"{missing[0]}.0"])
        pytest.skip(f"{model.adapter.family} has no {missing[0]} site (and says so)")


def test_reading_qkv_and_read_sites_leaves_logits_bit_identical(model, ids):
    need(model, *NEW_KINDS)
    run = model.run(ids, read=[f"{k}.*" for k in NEW_KINDS])
    assert torch.equal(run.logits, plain_logits(model, ids))
    for layer in range(model.n_layers):
        assert run[f"q.{layer}"].shape == (2, 7, model.n_heads, model.d_head)
        for kind in ("k", "v"):     # grouped-query attention: the KV-head count
            assert run[f"{kind}.{layer}"].shape == (2, 7, model.n_kv_heads, model.d_head)
        assert run[f"attn_in.{layer}"].shape == (2, 7, model.d_model)


def test_kv_heads_follow_the_config():
    llama = lmscope.load("random:llama")
    assert (llama.n_heads, llama.n_kv_heads) == (4, 2)
    assert lmscope.load("random:gpt2").n_kv_heads == 4


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_replacing_a_site_with_its_own_value_changes_nothing(model, ids, kind):
    need(model, kind)
    layer = model.n_layers - 1
    site = f"{kind}.{layer}"
    value = model.run(ids, read=[site])[site]
    run = model.run(ids, edits=[lmscope.replace(site, value)])
    assert torch.equal(run.logits, plain_logits(model, ids))
    # and the edit is really applied: another value changes the output
    moved = model.run(ids, edits=[lmscope.replace(site, value + 1.0)])
    assert not torch.equal(moved.logits, run.logits)


def test_read_sites_edit_only_the_read_not_the_residual_stream(model, ids):
    """Zeroing what attention reads at layer 0 leaves resid_pre.1 = resid_pre.0 + attn_out.0 + mlp_out.0 intact
    in its skip part: resid_pre.0 as read is unchanged."""
    need(model, "attn_in")
    run = model.run(ids, read=["resid_pre.0", "attn_in.0"], edits=[lmscope.zero("attn_in.0")])
    assert torch.count_nonzero(run["attn_in.0"]) == 0
    assert torch.count_nonzero(run["resid_pre.0"]) > 0


def test_editing_one_of_fused_qkv_leaves_the_others(model, ids):
    """Zeroing k must not touch q or v, also where q, k and v come out of one fused projection."""
    need(model, "q")
    before = model.run(ids, read=["q.0", "v.0"])
    after = model.run(ids, read=["q.0", "k.0", "v.0"], edits=[lmscope.zero("k.0")])
    assert torch.count_nonzero(after["k.0"]) == 0
    assert torch.equal(after["q.0"], before["q.0"]) and torch.equal(after["v.0"], before["v.0"])


def test_q_channel_weights_mask_single_channels(model, ids):
    """An interpolate weight of the site's full shape [heads, d_head] gates single q channels."""
    need(model, "q")
    w = torch.ones(model.n_heads, model.d_head)
    w[1, 3] = 0
    run = model.run(ids, read=["q.0"], edits=[lmscope.interpolate("q.0", 0.0, w)])
    plain = model.run(ids, read=["q.0"])["q.0"]
    assert torch.count_nonzero(run["q.0"][..., 1, 3]) == 0
    keep = w.bool()
    assert torch.equal(run["q.0"][..., keep], plain[..., keep])


def test_q_equals_the_projection_by_hand_llama_and_gpt2():
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(3))
    llama = lmscope.load("random:llama")
    run = llama.run(ids, read=["attn_in.1", "q.1", "k.1"])
    block = llama.hf.model.layers[1]
    with torch.no_grad():
        x = block.input_layernorm(run["attn_in.1"])
        q = x @ block.self_attn.q_proj.weight.T
        k = x @ block.self_attn.k_proj.weight.T
    torch.testing.assert_close(run["q.1"], q.view(2, 5, 4, 16), rtol=0, atol=1e-6)
    torch.testing.assert_close(run["k.1"], k.view(2, 5, 2, 16), rtol=0, atol=1e-6)
    gpt2 = lmscope.load("random:gpt2")
    run = gpt2.run(ids, read=["attn_in.0", "v.0"])
    attn = gpt2.hf.transformer.h[0]
    with torch.no_grad():
        qkv = attn.ln_1(run["attn_in.0"]) @ attn.attn.c_attn.weight + attn.attn.c_attn.bias
    torch.testing.assert_close(run["v.0"], qkv[..., 128:].view(2, 5, 4, 16), rtol=0, atol=1e-5)
