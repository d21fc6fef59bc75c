"""A traced forward must be the plain forward: same logits bit for bit, and sites that mean what they say."""
import pytest
import torch

import lmscope

from conftest import plain_logits


def non_pattern_sites(model):
    return [s for s in model.sites() if s.kind != "pattern"]


def test_reading_every_site_leaves_logits_bit_identical(model, ids):
    run = model.run(ids, read=non_pattern_sites(model))
    assert torch.equal(run.logits, plain_logits(model, ids))
    assert torch.equal(run.acts["logits"], run.logits)
    assert len(run.acts) == len(non_pattern_sites(model))


def test_reading_patterns_switches_to_eager_for_the_trace_only(model, ids):
    before = model.hf.config._attn_implementation
    run = model.run(ids, read=model.sites())
    assert model.hf.config._attn_implementation == before
    model.hf.set_attn_implementation("eager")
    try:
        assert torch.equal(run.logits, plain_logits(model, ids))
    finally:
        model.hf.set_attn_implementation(before)
    for layer in range(model.n_layers):
        pattern = run.acts[f"pattern.{layer}"]
        assert pattern.shape == (2, model.n_heads, 7, 7)
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
    torch.testing.assert_close(a["resid_pre.0"], a["embed"] if model.adapter.family != "gpt2" else
                               a["embed"] + model.module("transformer.wpe")(torch.arange(7))[None])
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
    run = model.run(ids, read=[f"z.{layer}", f"neurons.{layer}"])
    z, neurons = run.acts[f"z.{layer}"], run.acts[f"neurons.{layer}"]
    assert z.shape == (2, 7, model.n_heads, model.d_head)
    assert neurons.shape == (2, 7, model.d_mlp)
    o_proj = model.block_module(layer, model.adapter.o_proj)
    down = model.block_module(layer, model.adapter.down_proj)
    attn_out, mlp_out = model.run(ids, read=[f"attn_out.{layer}", f"mlp_out.{layer}"]).acts.values()
    if model.adapter.family != "gemma":  # Gemma normalises the projection's output before adding it
        torch.testing.assert_close(o_proj(z.flatten(-2)), attn_out)
        torch.testing.assert_close(down(neurons), mlp_out)
    else:
        post_attn = model.block_module(layer, "post_attention_layernorm")
        torch.testing.assert_close(post_attn(o_proj(z.flatten(-2))), attn_out)


def test_stop_early_runs_nothing_after_the_last_site(model, ids):
    calls = []
    handle = model.block_module(model.n_layers - 1).register_forward_hook(lambda *a: calls.append(1))
    try:
        run = model.run(ids, read=["resid_post.0", "neurons.0"], stop_early=True)
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
    run = model.run(ids, read=["blocks.-1.hook_resid_post", "blocks.0.mlp.hook_post"])
    last = model.n_layers - 1
    assert list(run.acts) == [f"resid_post.{last}", "neurons.0"]  # in the order asked
    assert run["resid_post.-1"] is run[f"blocks.{last}.hook_resid_post"] is run.acts[f"resid_post.{last}"]
    with pytest.raises(lmscope.SiteError, match="was not read"):
        run["resid_pre.0"]


def test_at_last_picks_each_rows_last_real_token(model):
    run = model.run(["hello there", "hi"], read=["resid_post.0"])
    assert torch.equal(run.at_last(run.logits), torch.stack([run.logits[0, 10], run.logits[1, 1]]))
    alone = model.run("hi", read=["resid_post.0"])
    torch.testing.assert_close(run.at_last(run["resid_post.0"])[1], alone["resid_post.0"][0, -1])
