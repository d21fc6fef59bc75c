"""Resuming a forward from a cached residual stream (Trace(resume=(L, resid_pre.L))) gives the full run's numbers."""
import pytest
import torch

import lmscope
from lmscope.core.errors import EditError, SiteError


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_resume_gives_the_full_runs_logits_and_sites(model, ids, where):
    layer = {"first": 0, "middle": model.n_layers // 2, "last": model.n_layers - 1}[where]
    full = model.run(ids, read=[f"resid_pre.{layer}", f"resid_post.{model.n_layers - 1}"])
    resumed = model.run(ids, read=[f"resid_post.{model.n_layers - 1}"],
                        resume=(layer, full.acts[f"resid_pre.{layer}"]))
    assert torch.equal(resumed.logits, full.logits)
    assert torch.equal(resumed.acts[f"resid_post.{model.n_layers - 1}"], full.acts[f"resid_post.{model.n_layers - 1}"])


def test_skipped_blocks_really_are_skipped(ids):
    model = lmscope.load("random:llama")
    layer = model.n_layers - 1
    full = model.run(ids, read=[f"resid_pre.{layer}"])
    calls = []
    handle = model.block_module(0).mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.run(ids, resume=(layer, full.acts[f"resid_pre.{layer}"]))
    finally:
        handle.remove()
    assert calls == []
    # and the blocks run again afterwards: the skip does not outlive the trace
    after = model.run(ids)
    assert torch.equal(after.logits, model.run(ids).logits) and "forward" not in vars(model.block_module(0))


def test_edits_above_the_resume_point_apply_as_in_a_full_run(ids):
    model = lmscope.load("random:llama")
    edit = [lmscope.zero("mlp_out.1")]
    full = model.run(ids, read=["resid_pre.1"], edits=edit)
    resumed = model.run(ids, edits=edit, resume=(1, full.acts["resid_pre.1"]))
    assert torch.equal(resumed.logits, full.logits)


def test_gradient_flows_to_the_cached_stream(ids):
    model = lmscope.load("random:llama")
    start = model.run(ids, read=["resid_pre.1"]).acts["resid_pre.1"].clone().requires_grad_(True)
    out = model.run(ids, resume=(1, start), grad=True)
    out.logits[0, -1].sum().backward()
    assert start.grad is not None and start.grad.abs().sum() > 0


def test_sites_below_the_resume_point_are_refused(ids):
    model = lmscope.load("random:llama")
    start = model.run(ids, read=["resid_pre.1"]).acts["resid_pre.1"]
    with pytest.raises(SiteError, match="lies below"):
        model.run(ids, read=["resid_post.0"], resume=(1, start))
    with pytest.raises(EditError, match="resume needs"):
        model.run(ids, resume=(1, start[..., :3]))
    with pytest.raises(SiteError, match="out of range"):
        model.run(ids, resume=(99, start))
    assert "forward" not in vars(model.block_module(0))
