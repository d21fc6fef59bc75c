"""Edits change exactly what they say, and nothing upstream."""
import pytest
import torch

import lmscope
from lmscope import SiteError
from conftest import plain_logits


def all_sites(model):
    return [s for s in model.sites() if s.kind != "pattern"]


def test_add_at_resid_post_changes_that_layer_and_downstream_only(model, ids):
    layer = 1
    site = f"resid_post.{layer}"
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    clean = model.run(ids, read=all_sites(model)).acts
    edited = model.run(ids, read=all_sites(model), edits=[lmscope.add(site, vector)]).acts
    n = model.n_layers
    edit_key = model.site(site).order_key(n)
    for s in all_sites(model):
        if s.order_key(n) < edit_key:  # earlier layers and this layer's own inner sites
            assert torch.equal(edited[str(s)], clean[str(s)]), f"{s} changed upstream of the edit"
    assert torch.equal(edited[site], clean[site] + vector)
    # Downstream: exactly what the model computes from the edited stream (the same edit seen from layer + 1) ...
    same = model.run(ids, read=all_sites(model), edits=[lmscope.add(f"resid_pre.{layer + 1}", vector)]).acts
    for later in range(layer + 1, n):
        assert torch.equal(edited[f"resid_post.{later}"], same[f"resid_post.{later}"])
        assert not torch.allclose(edited[f"resid_post.{later}"], clean[f"resid_post.{later}"])
    # ... and at the last layer the logits are the unembedding of (clean + vector).
    last = model.run(ids, read=["logits"], edits=[lmscope.add(f"resid_post.{n - 1}", vector)]).acts["logits"]
    torch.testing.assert_close(last, model.unembed(clean[f"resid_post.{n - 1}"] + vector), rtol=1e-5, atol=1e-5)


def test_zero_ablating_one_neuron(model, ids):
    layer, neuron = 1, 5
    if not model.adapter.has_neurons:  # mixture of experts: refused with a pointer to mlp_out
        with pytest.raises(SiteError, match="mixture-of-experts .* no neurons site"):
            model.run(ids, edits=[lmscope.zero(f"neurons.{layer}", neurons=[neuron])])
        return
    clean = model.run(ids, read=all_sites(model)).acts
    edited = model.run(ids, read=all_sites(model), edits=[lmscope.zero(f"neurons.{layer}", neurons=[neuron])]).acts
    acts, before = edited[f"neurons.{layer}"], clean[f"neurons.{layer}"]
    active = before[..., neuron] != 0  # AbsTopK (sparse_gpt) keeps a quarter of the neurons at each position
    assert torch.all(active) if model.adapter.family != "sparse_gpt" else torch.any(active)
    assert torch.all(acts[..., neuron] == 0)
    others = [i for i in range(model.d_mlp) if i != neuron]
    assert torch.equal(acts[..., others], before[..., others])
    assert torch.equal(edited[f"resid_mid.{layer}"], clean[f"resid_mid.{layer}"])
    assert not torch.equal(edited[f"mlp_out.{layer}"], clean[f"mlp_out.{layer}"])


def test_positions_respect_causality(model, ids):
    vector = torch.ones(model.d_model)
    clean = model.run(ids, read=["resid_post.2"]).acts["resid_post.2"]
    edited = model.run(ids, read=["resid_post.2"], edits=[lmscope.add("resid_pre.0", vector, positions=[4])])
    out = edited.acts["resid_post.2"]
    if model.adapter.family == "mixtral":
        # a mixture of experts runs each expert over the tokens routed to it: a later token routed elsewhere changes
        # the row count of an expert's matmul, which moves earlier tokens' values by float rounding only
        assert torch.allclose(out[:, :4], clean[:, :4], rtol=0, atol=1e-6)
    else:
        assert torch.equal(out[:, :4], clean[:, :4])
    assert not torch.allclose(out[:, 4:], clean[:, 4:])


def test_negative_positions_slices_and_token_masks_agree(model, ids):
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(7, dtype=torch.bool)
    mask[5:] = True
    results = [model.run(ids, read=["resid_pre.0"], edits=[lmscope.add("resid_pre.0", vector, positions=p)])
               .acts["resid_pre.0"] for p in ([5, 6], [-2, -1], slice(5, None), mask, mask[None].expand(2, 7))]
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_patching_a_whole_layer_restores_the_source_run(model, ids):
    other = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(9))
    source = model.run(other, read=["resid_pre.1"]).acts["resid_pre.1"]
    patched = model.run(ids, edits=[lmscope.replace("resid_pre.1", source)])
    assert torch.equal(patched.logits, plain_logits(model, other))


def test_scale_replace_and_mean_ablate(model, ids):
    clean = model.run(ids, read=["mlp_out.0"]).acts["mlp_out.0"]
    scaled = model.run(ids, read=["mlp_out.0"], edits=[lmscope.scale("mlp_out.0", -2.0)]).acts["mlp_out.0"]
    assert torch.equal(scaled, clean * -2.0)
    mean = clean.mean(dim=(0, 1))
    ablated = model.run(ids, read=["mlp_out.0"], edits=[lmscope.mean_ablate("mlp_out.0", mean, positions=[0])])
    assert torch.equal(ablated.acts["mlp_out.0"][:, 0], mean.expand(2, -1))
    assert torch.equal(ablated.acts["mlp_out.0"][:, 1:], clean[:, 1:])


def test_project_out_removes_the_direction(model, ids):
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    run = model.run(ids, read=["resid_post.1"], edits=[lmscope.project_out("resid_post.1", direction)])
    along = run.acts["resid_post.1"] @ (direction / direction.norm())
    assert along.abs().max() < 1e-4
    clean = model.run(ids, read=["resid_post.1"]).acts["resid_post.1"]
    assert (clean @ (direction / direction.norm())).abs().max() > 1e-2


def test_per_head_edit_touches_only_that_head(model, ids):
    clean = model.run(ids, read=["z.1", "attn_out.1"]).acts
    edited = model.run(ids, read=["z.1", "attn_out.1"], edits=[lmscope.zero("z.1", heads=[2])]).acts
    assert torch.all(edited["z.1"][..., 2, :] == 0)
    keep = [h for h in range(model.n_heads) if h != 2]
    assert torch.equal(edited["z.1"][..., keep, :], clean["z.1"][..., keep, :])
    assert not torch.allclose(edited["attn_out.1"], clean["attn_out.1"])


def test_resid_mid_edit(model, ids):
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    if model.parallel:
        with pytest.raises(SiteError, match="parallel attention"):
            model.run(ids, edits=[lmscope.add("resid_mid.1", vector)])
        return
    sites = ["resid_pre.1", "attn_out.1", "resid_mid.1", "mlp_out.1"]
    clean = model.run(ids, read=sites).acts
    edited = model.run(ids, read=sites, edits=[lmscope.add("resid_mid.1", vector)]).acts
    # the block really carries the edited stream (read at the MLP's input norm) ...
    torch.testing.assert_close(edited["resid_mid.1"], clean["resid_mid.1"] + vector, rtol=0, atol=1e-5)
    # ... sites upstream of it are untouched, the MLP downstream sees the change
    assert torch.equal(edited["resid_pre.1"], clean["resid_pre.1"])
    assert torch.equal(edited["attn_out.1"], clean["attn_out.1"])
    assert not torch.allclose(edited["mlp_out.1"], clean["mlp_out.1"])


def test_generation_with_edits_and_reads(model):
    prompt = "hello there"
    plain = model.generate(prompt, max_new_tokens=5)
    ids, mask = model.encode(prompt)
    reference = model.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  pad_token_id=model.tokenizer.pad_token_id)
    assert plain.token_ids == reference[0].tolist()
    if model.adapter.has_neurons:
        gen = model.generate(prompt, edits=[lmscope.zero("neurons.0", neurons=[1, 2])], read=["neurons.0"],
                             max_new_tokens=5)
        acts = gen.acts["neurons.0"]
        assert torch.all(acts[..., [1, 2]] == 0) and torch.any(acts[..., 3] != 0)
    else:  # mixture of experts: no neurons; zero the MoE block's output at two positions
        gen = model.generate(prompt, edits=[lmscope.zero("mlp_out.0", positions=[1, 2])], read=["mlp_out.0"],
                             max_new_tokens=5)
        acts = gen.acts["mlp_out.0"]
        assert torch.all(acts[:, [1, 2]] == 0) and torch.any(acts[:, 3] != 0)
    assert acts.shape[1] == len(gen.token_ids) - 1  # every token the model was fed
    # position-specific edits count positions over the whole sequence, also after the prompt
    n_prompt = ids.shape[1]
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(6)) * 10
    late = model.generate(prompt, edits=[lmscope.add("resid_post.0", vec, positions=[n_prompt + 1])],
                          read=["resid_post.0"], max_new_tokens=4)
    early = model.generate(prompt, read=["resid_post.0"], max_new_tokens=4)
    assert late.token_ids[: n_prompt + 2] == early.token_ids[: n_prompt + 2]
    diff = (late.acts["resid_post.0"] - early.acts["resid_post.0"]).abs().amax(-1)[0]
    assert torch.all(diff[: n_prompt + 1] == 0) and diff[n_prompt + 1] > 1


def test_a_size_1_sequence_axis_broadcasts(model, ids):
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    flat = model.run(ids, read=["resid_post.0"], edits=[lmscope.add("resid_post.0", vector, positions=[2])])
    row = model.run(ids, read=["resid_post.0"], edits=[lmscope.add("resid_post.0", vector[None], positions=[2])])
    assert torch.equal(flat.acts["resid_post.0"], row.acts["resid_post.0"])


def test_generate_rows_matches_one_prompt_at_a_time(model):
    rows = [model.encode("hello")[0][0].tolist(), model.encode("world")[0][0].tolist()]
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(8)) * 5
    edit = [lmscope.add("resid_post.0", vector)]
    batched = model.generate_rows(rows, edit, max_new_tokens=4)
    alone = [model.generate(text, edit, max_new_tokens=4).text for text in ("hello", "world")]
    assert batched == alone and batched != model.generate_rows(rows, max_new_tokens=4)
    with pytest.raises(lmscope.InputError, match="equal length"):
        model.generate_rows([rows[0], rows[0][:-1]])
