"""The checks behind `lmscope check`: every family passes every check; a broken adapter fails the check that covers
it; tolerances scale with the dtype."""
import dataclasses

import pytest
import torch

import lmscope
from lmscope.core.check import run_checks, tolerance


def by_name(checks):
    return {c.name: c for c in checks}


def test_every_family_passes_every_check(model):
    checks, n_tokens = run_checks(model)
    assert all(c.passed for c in checks), "\n".join(f"{c.name}: {c.max_abs_diff} > {c.tolerance}" for c in checks)
    assert len(checks) == (7 if model.parallel else 8)
    assert any("parallel" in c.name for c in checks) == model.parallel
    assert all(c.max_abs_diff == 0 for c in checks if c.tolerance == 0)  # bit-identical where exactness is claimed
    assert n_tokens > 20


def test_half_precision_uses_dtype_scaled_tolerances():
    checks, _ = run_checks(lmscope.load("random:gpt_neox", dtype="bfloat16"))
    assert all(c.passed for c in checks)
    parallel = next(c for c in checks if "parallel" in c.name)
    assert parallel.tolerance > 1e-3  # bfloat16 has eps 7.8e-3; a float32 tolerance would be far below it


def broken(family: str, **changes):
    model = lmscope.load(f"random:{family}")
    model.adapter = dataclasses.replace(model.adapter, **changes)
    return model


@pytest.mark.parametrize("family, changes, failing", [
    ("gemma2", dict(attn_out="self_attn"), "resid_mid == resid_pre + attn_out"),   # forgets Gemma's post-norm
    ("llama", dict(mlp_out="mlp.gate_proj"), "residual stream adds up"),           # a module of the wrong shape
    ("llama", dict(mlp_out="post_attention_layernorm"), "resid_post == resid_mid + mlp_out"),  # the wrong module
    ("cohere", dict(logits_scale=None), "unembed(resid_post.last) == logits"),     # forgets the logit scale
    ("granite", dict(residual_scale=None), "resid_mid == resid_pre + attn_out"),   # forgets residual_multiplier
    ("gptj", dict(always_parallel=False), "resid_post == resid_mid + mlp_out"),    # a parallel block as sequential
])
def test_a_broken_adapter_fails_its_check(family, changes, failing):
    checks, _ = run_checks(broken(family, **changes))
    failed = by_name(c for c in checks if not c.passed)
    assert failing in failed
    assert all(c.max_abs_diff > c.tolerance for c in failed.values())


def test_a_check_that_cannot_compute_is_a_failure_that_says_why():
    checks = by_name(run_checks(broken("llama", mlp_out="mlp.gate_proj"))[0])
    item = checks["residual stream adds up"]
    assert not item.passed and item.max_abs_diff == float("inf")
    assert item.where.startswith("error: RuntimeError: The size")


def test_a_model_whose_sites_cannot_be_read_fails_without_a_traceback():
    checks = run_checks(broken("llama", mlp_out="mlp.no_such_module"))[0]
    assert [c.name for c in checks] == ["reading every site leaves the logits bit-identical",
                                        "no hook is left on the model"]
    assert not checks[0].passed and "KeyError" in checks[0].where and checks[1].passed


def test_tolerance_scales_with_dtype_size_and_terms():
    assert tolerance(torch.float32) == 4 * torch.finfo(torch.float32).eps
    assert tolerance(torch.float16, 10.0) == 40 * torch.finfo(torch.float16).eps
    assert tolerance(torch.bfloat16, 1.0, terms=3) == 12 * 2.0 ** -7
    assert tolerance(torch.float64) < tolerance(torch.float32) < tolerance(torch.float16) < tolerance(torch.bfloat16)
    assert tolerance(torch.float32, 0.0) == 0.0
