"""The implicit rank-1 update of in-context learning (Dherin et al. 2025): identities on real modules, ranks,
the residual term, trajectories, bad input, the CLI, and the paper's toy regression model."""
import dataclasses
import functools
import math

import pytest
import torch

import lmscope
from conftest import random_model
from lmscope.papers.icl_update.dynamics import (MLP_MODULE, IclUpdateResult, context_query_ids, first_matrices,
                                                icl_update, implicit_update, rank1_update, read_block,
                                                token_increments, update_trajectory)
from lmscope.papers.icl_update.regression import (OneBlockTransformer, RegressionConfig, RegressionResult,
                                                  icl_regression, implicit_updates, sample_tasks)
from lmscope.results import Result

PROMPT = "hot -> cold\nbig -> small\nfast ->"
FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen3", "gemma2", "gemma3", "phi3")


@functools.cache
def float64_model(family: str) -> lmscope.Model:
    return lmscope.load(f"random:{family}", dtype=torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_holds_to_float64_round_off_and_update_is_rank_one(family):
    model = float64_model(family)
    # a one-token query: the random Gemma 3's sliding window (4 tokens) must reach into the context
    layers = implicit_update(model, "hot -> cold\nbig -> small\n", "f")
    assert len(layers) == model.n_layers
    for layer in layers:
        assert layer.mlp_error < 1e-10 and layer.block_error < 1e-10
        if model.parallel and layer.layer == 0:
            # a parallel block's MLP reads resid_pre: at layer 0 that is the token embedding, blind to context
            assert layer.delta_a_norm == 0.0 and set(layer.ranks.values()) == {0}
            continue
        assert set(layer.ranks.values()) == {1}
        # not vacuous: the context moves A, the update is non-zero, and the residual term is needed
        assert layer.delta_a_norm > 1e-3 and min(layer.update_norms.values()) > 1e-6
        assert layer.residual_term_norm > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma2", "phi3"])
def test_mlp_input_is_what_the_real_mlp_module_receives(family):
    """A is computed by applying the model's own input norm; a pre-hook on the MLP sees the same vector."""
    model = float64_model(family)
    ids, _ = context_query_ids(model, "ab\n", "cd")
    seen = {}
    handles = [model.block_module(layer, MLP_MODULE).register_forward_pre_hook(
        lambda mod, args, layer=layer: seen.__setitem__(layer, args[0][0, -1].clone()))
        for layer in range(model.n_layers)]
    try:
        a = read_block(model, ids, -1)["A"]
    finally:
        for h in handles:
            h.remove()
    for layer in range(model.n_layers):
        torch.testing.assert_close(a[layer], seen[layer], rtol=0, atol=1e-12)


def test_float32_model_identity_holds_to_float32_round_off():
    model = random_model("llama")   # cached float32 model from conftest
    layers = implicit_update(model, "one two\n", "three")
    assert max(layer.mlp_error for layer in layers) < 1e-5
    assert {r for layer in layers for r in layer.ranks.values()} == {1}


def test_gpt2_conv1d_update_is_stored_transposed():
    """GPT-2's c_fc weight is [in, out]: dW has that layout, and W + dW reproduces the context's pre-activations."""
    model = float64_model("gpt2")
    c_fc = model.block_module(1, "mlp.c_fc")
    full, alone = context_query_ids(model, "xy\n", "z")
    a_ctx, a = read_block(model, full, -1)["A"][1], read_block(model, alone, -1)["A"][1]
    dw = rank1_update(c_fc, a, a_ctx - a)
    assert dw.shape == c_fc.weight.shape == (64, 256)
    torch.testing.assert_close(a @ (c_fc.weight + dw), a_ctx @ c_fc.weight, rtol=0, atol=1e-12)


def test_trajectory_norms_agree_with_the_materialised_update():
    model = float64_model("llama")
    result = icl_update(model, PROMPT)
    given = result.trajectories[0]
    assert given.order == [0, 1] and result.trajectories[1].order == [1, 0]
    assert given.update_norms[0] == 0.0                       # no context, no update
    assert given.increment_norms[0] == pytest.approx(given.update_norms[1], rel=1e-12)
    # the factored norms (|W dA| / |A|) match the Frobenius norms of the dW matrices built for the identity
    materialised = math.sqrt(sum(v ** 2 for layer in result.layers for v in layer.update_norms.values()))
    assert given.update_norms[-1] == pytest.approx(materialised, rel=1e-10)
    assert result.order_gap > 1e-3                            # order matters on this model


def test_identical_examples_have_no_order_effect():
    model = float64_model("llama")
    result = icl_update(model, "up -> down\nup -> down\nup ->")
    assert result.order_gap == pytest.approx(0.0, abs=1e-12)
    t = update_trajectory(model, ["a\n", "b\n", "c\n"], "d", [2, 0, 1])
    assert len(t.update_norms) == 4 and len(t.increment_norms) == 3


@pytest.mark.parametrize("prompt, position, message", [
    ("fast ->", -1, "empty context"),
    ("hot -> cold\n\nfast ->\n", -1, "empty query"),
    ("", -1, "empty prompt"),
    (PROMPT, 7, "out of range"),
    (PROMPT, -8, "out of range"),
])
def test_bad_input_gets_one_clear_error(prompt, position, message):
    with pytest.raises(lmscope.InputError, match=message) as info:
        icl_update(float64_model("llama"), prompt, position=position)
    assert "\n" not in str(info.value)


def test_position_counts_in_the_query():
    model = float64_model("llama")
    first = implicit_update(model, "ab\n", "cde", position=0)
    same = implicit_update(model, "ab\n", "cde", position=-3)
    assert [layer.update_norms for layer in first] == [layer.update_norms for layer in same]
    assert first[1].update_norms != implicit_update(model, "ab\n", "cde")[1].update_norms


# -- the paper's toy setting ------------------------------------------------------------------------------------------
SMALL = RegressionConfig(dim=2, n_context=4, d_model=8, d_mlp=16, steps=60, batch=32, n_test=32, gd_steps=2,
                         gd_lrs=(0.01, 0.1))


@pytest.fixture(scope="module")
def regression():
    return icl_regression(SMALL)


def test_regression_identity_and_reports(regression):
    assert regression.max_abs_error < 1e-12
    assert len(regression.increment_norms) == SMALL.n_context and min(regression.increment_norms) > 0
    assert len(regression.mse_icl) == len(regression.mse_gd) == SMALL.n_context + 1
    # with no examples both are the untouched model without context
    assert regression.mse_icl[0] == regression.mse_gd[0]
    # least squares recovers a noise-free linear task from dim examples
    assert regression.mse_least_squares[SMALL.dim] < 1e-20 and regression.mse_least_squares[1] > 0.1
    assert set(regression.to_json()) >= {"max_abs_error", "increment_norms", "final_mse_icl", "final_mse_gd"}


def test_regression_update_reproduces_context_and_is_needed():
    torch.manual_seed(0)
    model = OneBlockTransformer(2, 8, 16).double()
    context, query_x, _ = sample_tasks(5, 3, 2, torch.Generator().manual_seed(0), torch.float64)
    with torch.no_grad():
        updates, a_query = implicit_updates(model, context, query_x)
        with_context = model(context, query_x)
        torch.testing.assert_close(model.mlp(a_query, model.w1.weight + updates[-1]), with_context, rtol=0, atol=1e-13)
        assert (model.mlp(a_query) - with_context).abs().max() > 1e-4      # without dW it differs
        assert all(int(torch.linalg.matrix_rank(dw)) == 1 for dw in updates[-1])
        assert updates[0].abs().max() == 0                              # no examples, no update


def test_token_increments_match_the_full_updates():
    model = lmscope.load("random:llama", dtype=torch.float64)
    context, query = "ab\ncd\n", "ef"
    increments = token_increments(model, context, query)
    assert len(increments) == len(model.tokenizer(context, add_special_tokens=False)["input_ids"]) == 6
    full, alone = context_query_ids(model, context, query)
    a = read_block(model, alone, -1)["A"]
    def updates(ids):
        A = read_block(model, ids, -1)["A"]
        return [rank1_update(m, a[layer], A[layer] - a[layer]) for layer in range(model.n_layers)
                for m in first_matrices(model, layer).values()]
    with torch.no_grad():
        first, second = updates(full[:1] + alone), updates(full[:2] + alone)
    direct = sum(float((x - y).square().sum()) for x, y in zip(second, first)) ** 0.5
    assert abs(increments[1] - direct) < 1e-9 * max(1.0, direct) and direct > 0


def test_icl_update_result_round_trip_and_page(tmp_path):
    result = icl_update(float64_model("llama"), PROMPT)
    loaded = Result.load(result.save(tmp_path / "r.json"))
    assert isinstance(loaded, IclUpdateResult) and loaded.to_json() == result.to_json()
    assert loaded.to_json()["kind"] == "icl_update" and loaded.rank == result.rank == 1
    assert loaded.layers[1].update_norms == result.layers[1].update_norms
    page = result.save(tmp_path / "r.html").read_text()
    assert page.count("Plotly.newPlot") == 3 and "Implicit ICL update - random:llama" in page


def test_regression_result_round_trip_keeps_its_config(regression, tmp_path):
    loaded = Result.load(regression.save(tmp_path / "r.json"))
    assert isinstance(loaded, RegressionResult) and loaded.to_json() == regression.to_json()
    assert loaded.config == SMALL and isinstance(loaded.config.gd_lrs, tuple)
    assert loaded.to_json()["config"]["gd_steps"] == 2 and loaded.final_mse_icl == regression.mse_icl[-1]


@pytest.mark.parametrize("change, message", [
    (dict(dim=0), "dim must be an integer >= 1"),
    (dict(gd_steps=-1), "gd_steps must be an integer >= 0"),
    (dict(gd_lrs=()), "gd_lrs: the list is empty"),
    (dict(lr=float("nan")), "lr must be a finite number"),
])
def test_regression_bad_config_is_one_clear_error(change, message):
    with pytest.raises(lmscope.InputError, match=message):
        icl_regression(dataclasses.replace(SMALL, **change))


def test_in_order_trajectory_first_update_uses_the_first_example_only():
    """W_i = W + dW(c_1..c_i): dW_1 is the update of c_1 alone, whatever follows it; the suffix variant's dW_1 is
    the update of the LAST example alone."""
    model = float64_model("llama")
    examples, query = ["a -> b\n", "c -> d\n", "e -> f\n"], "g ->"
    alone = implicit_update(model, examples[0], query)
    only_c1 = math.sqrt(sum(v ** 2 for layer in alone for v in layer.update_norms.values()))
    t = update_trajectory(model, examples, query, [0, 1, 2])
    assert t.reading == "in_order" and t.update_norms[1] == pytest.approx(only_c1, rel=1e-10)
    changed = update_trajectory(model, [examples[0], "x -> y\n", "z -> w\n"], query, [0, 1, 2])
    assert changed.update_norms[1] == t.update_norms[1] and changed.update_norms[2] != t.update_norms[2]
    suffix = update_trajectory(model, examples, query, [0, 1, 2], reading="suffix")
    last = implicit_update(model, examples[2], query)
    assert suffix.update_norms[1] == pytest.approx(
        math.sqrt(sum(v ** 2 for layer in last for v in layer.update_norms.values())), rel=1e-10)
    assert suffix.update_norms[-1] == pytest.approx(t.update_norms[-1], rel=1e-12)   # same full context
    with pytest.raises(lmscope.InputError, match="reading"):
        update_trajectory(model, examples, query, [0, 1, 2], reading="backwards")
    result = icl_update(model, "".join(examples) + query, suffix=True)
    assert [x.reading for x in result.trajectories] == ["in_order", "in_order", "suffix"]
    assert result.increment_norms == result.trajectories[0].increment_norms
    assert "suffix variant" in result.summary()
