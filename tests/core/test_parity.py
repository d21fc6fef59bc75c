"""A traced forward must be the plain forward: same logits bit for bit, and sites that mean what they say."""
import pytest
import torch

import lmscope
from lmscope.core.trace import set_attention

from conftest import plain_logits


def non_pattern_sites(model):
    return [s for s in model.sites() if s.kind != "pattern"]


def inner_mlp_site(model, layer: int) -> str:
    """neurons.L, or mlp_out.L for a mixture of experts (which has no neurons site)."""
    return f"neurons.{layer}" if model.adapter.has_neurons else f"mlp_out.{layer}"


def first_resid(model, embed):
    """resid_pre.0 from the embedding site: GPT-2 adds the position embedding, Granite multiplies."""
    if model.adapter.family in ("gpt2", "sparse_gpt"):
        return embed + model.module("transformer.wpe")(torch.arange(embed.shape[1]))[None]
    if model.adapter.family == "granite":
        return embed * model.hf.config.embedding_multiplier
    return embed


def test_reading_every_site_leaves_logits_bit_identical(model, ids):
    run = model.run(ids, read=non_pattern_sites(model))
    assert torch.equal(run.logits, plain_logits(model, ids))
    assert torch.equal(run.acts["logits"], run.logits)
    assert len(run.acts) == len(non_pattern_sites(model))


def test_reading_patterns_switches_to_eager_for_the_trace_only(model, ids):
    before = model.hf.config._attn_implementation
    run = model.run(ids, read=model.sites())
    assert model.hf.config._attn_implementation == before
    set_attention(model.hf, "eager")
    try:
        assert torch.equal(run.logits, plain_logits(model, ids))
    finally:
        set_attention(model.hf, before)
    for layer in range(model.n_layers):
        pattern = run.acts[f"pattern.{layer}"]
        assert pattern.shape == (2, model.n_heads, 7, 7)
        if model.adapter.family == "sparse_gpt":  # attention sinks take the rest of each row
            assert torch.all((pattern.sum(-1) > 0) & (pattern.sum(-1) <= 1 + 1e-6))
        else:
            torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.n_heads, 7))
        assert torch.all(pattern.triu(diagonal=1) == 0), "attention must be causal"


def test_last_resid_post_through_final_norm_and_unembedding_is_the_logits(model, ids):
    run = model.run(ids, read=[f"resid_post.{model.n_layers - 1}", "final_norm"])
    last = run.acts[f"resid_post.{model.n_layers - 1}"]
    torch.testing.assert_close(model.unembed(last), run.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.module(model.adapter.final_norm)(last), run.acts["final_norm"])


def test_residual_stream_adds_up(model, ids):
    run = model.run(ids, read=non_pattern_sites(model))
    a = run.acts
    assert torch.equal(a["resid_pre.0"], first_resid(model, a["embed"]))
    for layer in range(model.n_layers):
        pre, attn, mid = a[f"resid_pre.{layer}"], a[f"attn_out.{layer}"], a[f"resid_mid.{layer}"]
        mlp, post = a[f"mlp_out.{layer}"], a[f"resid_post.{layer}"]
        torch.testing.assert_close(mid, pre + attn, rtol=0, atol=1e-6)
        if model.parallel:  # Pythia: attention and MLP both read resid_pre; resid_mid is their sum's first half
            torch.testing.assert_close(post, pre + attn + mlp, rtol=0, atol=1e-5)
        else:
            assert torch.equal(mid, pre + attn)  # the tensor the block itself computes
            torch.testing.assert_close(post, mid + mlp, rtol=0, atol=1e-6)
        if layer + 1 < model.n_layers:
            assert torch.equal(a[f"resid_pre.{layer + 1}"], post)


def test_z_and_neurons_are_the_inputs_of_the_output_projections(model, ids):
    layer = 1
    family = model.adapter.family
    run = model.run(ids, read=[f"z.{layer}", inner_mlp_site(model, layer), f"attn_out.{layer}", f"mlp_out.{layer}"])
    z, attn_out, mlp_out = run[f"z.{layer}"], run[f"attn_out.{layer}"], run[f"mlp_out.{layer}"]
    assert z.shape == (2, 7, model.n_heads, model.d_head)
    written = model.block_module(layer, model.adapter.o_proj)(z.flatten(-2))
    if family in ("gemma", "olmo2"):  # the projection's output is normalised before it is added
        written = model.block_module(layer, "post_attention_layernorm")(written)
    if family == "granite":  # ... or multiplied
        written = written * model.hf.config.residual_multiplier
    if family == "sparse_gpt":  # ... or AbsTopK'd
        written = model.block_module(layer, "attn.write")(written)
    torch.testing.assert_close(written, attn_out)
    if not model.adapter.has_neurons:
        with pytest.raises(lmscope.SiteError, match="mixture-of-experts .* no neurons site; read or edit mlp_out"):
            model.run(ids, read=[f"neurons.{layer}"])
        return
    neurons = run[f"neurons.{layer}"]
    assert neurons.shape == (2, 7, model.d_mlp)
    written = model.block_module(layer, model.adapter.down_proj)(neurons)
    if family in ("gemma", "olmo2"):
        written = model.block_module(layer, model.adapter.mlp_out)(written)
    if family == "granite":
        written = written * model.hf.config.residual_multiplier
    if family == "sparse_gpt":
        written = model.block_module(layer, "mlp.write")(written)
    torch.testing.assert_close(written, mlp_out)


def test_stop_early_runs_nothing_after_the_last_site(model, ids):
    calls = []
    handle = model.block_module(model.n_layers - 1).register_forward_hook(lambda *a: calls.append(1))
    try:
        run = model.run(ids, read=["resid_post.0", inner_mlp_site(model, 0)], stop_early=True)
    finally:
        handle.remove()
    assert run.logits is None and calls == []
    full = model.run(ids, read=["resid_post.0"])
    assert torch.equal(run.acts["resid_post.0"], full.acts["resid_post.0"])


def test_to_cpu_detach_and_grad(model, ids):
    run = model.run(ids, read=["resid_post.0"], to_cpu=True)
    assert run.acts["resid_post.0"].device.type == "cpu" and not run.acts["resid_post.0"].requires_grad
    run = model.run(ids, read=["resid_post.0"], grad=True)
    act = run.acts["resid_post.0"]
    assert act.requires_grad
    run.logits[0, -1, 3].backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    model.hf.zero_grad(set_to_none=True)


def test_results_accept_any_spelling_of_a_site(model, ids):
    inner = "blocks.0.mlp.hook_post" if model.adapter.has_neurons else "blocks.0.hook_mlp_out"
    run = model.run(ids, read=["blocks.-1.hook_resid_post", inner])
    last = model.n_layers - 1
    assert list(run.acts) == [f"resid_post.{last}", inner_mlp_site(model, 0)]  # in the order asked
    assert run["resid_post.-1"] is run[f"blocks.{last}.hook_resid_post"] is run.acts[f"resid_post.{last}"]
    with pytest.raises(lmscope.SiteError, match="was not read"):
        run["resid_pre.0"]


def test_at_last_picks_each_rows_last_real_token(model):
    run = model.run(["hello there", "hi"], read=["resid_post.0"])
    assert torch.equal(run.at_last(run.logits), torch.stack([run.logits[0, 10], run.logits[1, 1]]))
    alone = model.run("hi", read=["resid_post.0"])
    torch.testing.assert_close(run.at_last(run["resid_post.0"])[1], alone["resid_post.0"][0, -1])
