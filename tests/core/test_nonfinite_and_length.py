"""NaN/inf edits are refused when made; non-finite logits under edits warn once; inputs past the model's positions
are an error (fixed position tables) or a warning (RoPE past its configured length)."""
import math
import warnings

import pytest
import torch

import lmscope
from lmscope import EditError, InputError
from conftest import random_model

NAN, INF = float("nan"), float("inf")


def vector(value, n=64):
    v = torch.zeros(n)
    v[3] = value
    return v


@pytest.mark.parametrize("make", [
    lambda: lmscope.add("resid_post.0", vector(NAN)),
    lambda: lmscope.add("resid_post.0", vector(-INF)),
    lambda: lmscope.scale("mlp_out.0", INF),
    lambda: lmscope.scale("mlp_out.0", NAN),
    lambda: lmscope.scale("mlp_out.0", torch.tensor(INF)),
    lambda: lmscope.replace("resid_post.0", vector(NAN)),
    lambda: lmscope.replace("resid_post.0", NAN),
    lambda: lmscope.mean_ablate("resid_post.0", vector(INF)),
    lambda: lmscope.project_out("resid_post.0", vector(NAN)),
    lambda: lmscope.interpolate("resid_post.0", vector(1.0), NAN),
    lambda: lmscope.interpolate("resid_post.0", vector(1.0), torch.full((64,), NAN)),
    lambda: lmscope.interpolate("resid_post.0", vector(INF), 0.5),
    lambda: lmscope.add("resid_post.0", vector(NAN).to(torch.float16)),
])
def test_non_finite_edits_are_refused_when_made(make):
    with pytest.raises(EditError, match="NaN or infinity; give finite numbers"):
        make()


def test_finite_edits_are_still_made():
    assert lmscope.scale("mlp_out.0", -1e30).value == -1e30
    assert lmscope.interpolate("z.0", vector(1.0), torch.ones(4, requires_grad=True)).op == "interpolate"


def test_float16_overflow_under_an_edit_warns_once():
    model = lmscope.load("random:llama", dtype="float16")
    huge = [lmscope.scale("resid_post.0", 60000.0), lmscope.scale("resid_post.1", 60000.0)]  # ~1e8 > 65504
    with pytest.warns(RuntimeWarning, match="non-finite values .* scale resid_post.1.*float16 overflows") as record:
        model.generate("hello", huge, max_new_tokens=3)
    assert len([w for w in record if "non-finite" in str(w.message)]) == 1  # once, not once per step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite result under edits warns nothing
        run = model.run("hello", edits=[lmscope.scale("resid_post.0", 2.0)])
    assert torch.isfinite(run.logits).all()
    assert not model.has_hooks()


def test_no_warning_without_edits_or_with_finite_logits(ids):
    model = random_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(ids, edits=[lmscope.add("resid_post.0", vector(1e3))])
        model.run(ids)


@pytest.mark.parametrize("family", ["gpt2", "gptj"])
def test_past_a_fixed_position_table_is_one_clear_error(family):
    model = random_model(family)
    limit, hard = model.max_positions
    assert (limit, hard) == (256, True)
    too_long = torch.zeros(1, limit + 1, dtype=torch.long)
    with pytest.raises(InputError, match=f"the input is 257 tokens; {family} has .* for 256 positions"):
        model.run(too_long)
    with pytest.raises(InputError, match="the prompt plus 20 new tokens is 260 tokens"):
        model.generate("x" * 240)
    with pytest.raises(InputError, match="each row plus 5 new tokens is 261 tokens"):
        model.generate_rows([[1] * 256], max_new_tokens=5)
    assert model.run(torch.zeros(1, limit, dtype=torch.long)).logits.shape[1] == limit  # the limit itself runs
    assert not model.has_hooks()


def test_rope_models_warn_past_their_configured_length():
    model = random_model("llama")
    assert model.max_positions == (256, False)
    with pytest.warns(RuntimeWarning, match="300 tokens, longer than the 256 positions random:llama"):
        run = model.run(torch.zeros(1, 300, dtype=torch.long))
    assert run.logits.shape[1] == 300 and math.isfinite(float(run.logits.abs().max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(torch.zeros(1, 256, dtype=torch.long))
