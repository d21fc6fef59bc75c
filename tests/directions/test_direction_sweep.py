"""Selection sweep: induce / bypass / KL per candidate, the filter and the ranking."""
import math
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import random_model
from lmscope.core.runs import last_logits
from lmscope.directions.sweep import best_direction, direction_sweep, metric, selection_sweep, sweep_split
from lmscope.core.metrics import KL_REFERENCE_EDITED, kl_reference_edited
from lmscope.results import Result
from lmscope.directions.contrast import contrast
from lmscope.core.edits import add
from lmscope.core.errors import InputError
from lmscope.directions.steering import ablation_edits

POS = ["hello there", "ab", "the cat sat", "good"]
NEG = ["xyz", "a longer prompt", "q r", "bad"]
NEUTRAL = ["some text", "more words here"]


@pytest.fixture(scope="module")
def setup():
    m = random_model("llama")
    return m, contrast(m, POS, NEG, last_k=2, probe=False)


def test_metric_known_values():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(metric(logits, [0]), torch.tensor([0.0, math.log(0.1 / 0.9)], dtype=torch.float64))
    torch.testing.assert_close(metric(logits, [0, 1]), torch.tensor([math.log(3), math.log(0.2 / 0.8)],
                                                                    dtype=torch.float64))
    torch.testing.assert_close(metric(logits, [0], [2]), torch.tensor([math.log(2), math.log(0.125)],
                                                                      dtype=torch.float64))


def test_last_logits_are_the_model_logits_at_each_last_token(setup):
    m, _ = setup
    rows = [m.tokenizer(p)["input_ids"] for p in POS]
    got = last_logits(m, rows, batch_size=3)
    for i, r in enumerate(rows):
        torch.testing.assert_close(got[i], m.run([r]).logits[0, -1].float(), rtol=0, atol=1e-5)


def test_scores_match_a_direct_computation(setup):
    m, c = setup
    s = selection_sweep(m, c, NEUTRAL, ["a", "e"], n_eval=4, protocol="same_prompts")
    assert s.layers == [0, 1, 2] and s.positions == [-2, -1] and s.n_eval == (4, 4, 2)
    ids = [m.token_id("a"), m.token_id("e")]
    rows = lambda ps: [m.tokenizer(p)["input_ids"] for p in ps]  # noqa: E731
    clean_pos, clean_neg = metric(last_logits(m, rows(POS)), ids), metric(last_logits(m, rows(NEG)), ids)
    toward = 1.0 if clean_pos.mean() >= clean_neg.mean() else -1.0
    r = c.direction(1, -2).vector
    induced = metric(last_logits(m, rows(NEG), [add("resid_post.1", r)]), ids)
    ablated = metric(last_logits(m, rows(POS), ablation_edits(m, r)), ids)
    assert s.induce[0][1] == pytest.approx(toward * float(induced.mean() - clean_neg.mean()), abs=1e-9)
    assert s.bypass[0][1] == pytest.approx(-toward * float(ablated.mean() - clean_pos.mean()), abs=1e-9)
    clean_neu = last_logits(m, rows(NEUTRAL))
    neu = last_logits(m, rows(NEUTRAL), ablation_edits(m, r))
    lp, lq = torch.log_softmax(neu.double(), -1), torch.log_softmax(clean_neu.double(), -1)
    assert s.kl[0][1] == pytest.approx(float((lp.exp() * (lp - lq)).sum(-1).mean()), abs=1e-9)
    assert all(k >= 0 for row in s.kl for k in row)
    assert not m.has_hooks()


def test_filter_and_ranking(setup):
    m, c = setup
    s = selection_sweep(m, c, NEUTRAL, ["a", "e"], n_eval=4, max_kl=1.0, max_layer_fraction=0.67,
                        protocol="same_prompts")
    assert s.max_layer == 3                  # layers 0, 1, 2 are all below 0.67 * 3 = 2.01
    for cand in s.ranking:
        assert cand["kl"] <= 1.0 and cand["layer"] < s.max_layer and cand["induce"] > 0
    assert [x["bypass"] for x in s.ranking] == sorted((x["bypass"] for x in s.ranking), reverse=True)
    passing = sum(1 for p in range(2) for i in range(3) if s.kl[p][i] <= 1.0 and s.layers[i] < s.max_layer
                  and s.induce[p][i] > 0)
    assert len(s.ranking) == passing
    if s.ranking:
        best = best_direction(c, s)
        assert best.site == f"resid_post.{s.ranking[0]['layer']}"
    strict = selection_sweep(m, c, NEUTRAL, ["a"], n_eval=2, max_kl=-1.0, layers=[0], protocol="same_prompts")
    assert strict.ranking == [] and "no candidate" in strict.summary()
    with pytest.raises(InputError, match="no candidate passed"):
        best_direction(c, strict)
    assert strict.figure().data and strict.to_json()["max_kl"] == -1.0
    assert "No candidate passes the filter" in strict.page_body()


def test_figure_shows_the_arditi_filter_quantity_and_one_colour_per_position(tmp_path):
    m = random_model("llama")
    pos, neg, sel_p, sel_n = sweep_split(MANY_POS, MANY_NEG, 3, 0)
    c = contrast(m, pos, neg, last_k=2, probe=False)
    s = selection_sweep(m, c, None, ["a", "e"], n_eval=3, selection=(sel_p, sel_n), max_kl=1e9,
                        max_layer_fraction=1.0)
    fig = s.figure()
    titles = [a.text for a in fig.layout.annotations]
    assert any("metric under addition" in t for t in titles)       # the quantity the filter needs > 0
    by_position = {}
    for trace in fig.data:
        by_position.setdefault(trace.name, set()).add(trace.line.color)
    assert len(by_position) == len(s.positions) == 2 and all(len(c) == 1 for c in by_position.values())
    assert len({next(iter(c)) for c in by_position.values()}) == 2
    added = next(t for t in fig.data if t.yaxis == "y2")
    assert list(added.y) == pytest.approx(s.induce_score[0])


def test_bad_input(setup):
    m, c = setup
    with pytest.raises(InputError, match="not one"):
        selection_sweep(m, c, NEUTRAL, ["ab"], protocol="same_prompts")
    with pytest.raises(InputError, match="not extracted"):
        selection_sweep(m, c, NEUTRAL, ["a"], positions=[-3])
    with pytest.raises(InputError, match="computed on"):
        selection_sweep(random_model("qwen2"), c, NEUTRAL, ["a"])
    with pytest.raises(InputError, match="empty"):
        selection_sweep(m, c, [], ["a"], protocol="same_prompts")
    with pytest.raises(InputError, match="needs selection"):
        selection_sweep(m, c, NEUTRAL, ["a"])
    with pytest.raises(InputError, match="also build prompts"):
        selection_sweep(m, c, None, ["a"], selection=(POS[:2], ["fresh one", "fresh two"]))
    with pytest.raises(InputError, match="protocol"):
        selection_sweep(m, c, None, ["a"], selection=(["u"], ["v"]), protocol="mine")
    assert not m.has_hooks()


MANY_POS = [f"please tell me item {i} now" for i in range(10)]
MANY_NEG = [f"a quiet note number {i}" for i in range(10)]


def test_arditi_build_and_selection_prompts_are_disjoint():
    m = random_model("llama")
    c, s = direction_sweep(m, MANY_POS, MANY_NEG, None, ["a", "e"], n_eval=3, contrast_options={"last_k": 1})
    build = set(c.positive) | set(c.negative)
    _, _, sel_p, sel_n = sweep_split(MANY_POS, MANY_NEG, 3, 0)
    assert len(c.positive) == len(c.negative) == 7 and not build & (set(sel_p) | set(sel_n))
    assert set(c.positive) | set(sel_p) == set(MANY_POS) and s.n_eval == (3, 3, 3) and s.n_build == (7, 7)
    # pairs stay together: the i-th positive and negative prompt go to the same side
    assert [MANY_POS.index(p) for p in sel_p] == [MANY_NEG.index(q) for q in sel_n]
    assert s.protocol == "arditi" and s.kl_direction == KL_REFERENCE_EDITED
    # the sweep's scores do not move when the build prompts' direction is fixed and the selection is the same
    again = selection_sweep(m, c, None, ["a", "e"], n_eval=3, selection=(sel_p, sel_n))
    assert again.bypass == s.bypass and again.kl == s.kl


def test_arditi_filter_and_kl_as_published():
    """induce filter: the absolute metric under addition > 0 (not the shift); KL(clean || ablated) on the harmless
    (negative) selection prompts."""
    m = random_model("llama")
    pos, neg, sel_p, sel_n = sweep_split(MANY_POS, MANY_NEG, 3, 0)
    c = contrast(m, pos, neg, last_k=1, probe=False)
    s = selection_sweep(m, c, None, ["a", "e"], n_eval=3, selection=(sel_p, sel_n), max_kl=1e9,
                        max_layer_fraction=1.0)
    ids = [m.token_id("a"), m.token_id("e")]
    rows = lambda ps: [m.tokenizer(p)["input_ids"] for p in ps]  # noqa: E731
    r = c.direction(1, -1).vector
    added = metric(last_logits(m, rows(sel_n), [add("resid_post.1", r)]), ids)
    assert s.induce_score[0][1] == pytest.approx(float(added.mean()), abs=1e-9)
    clean, ablated = last_logits(m, rows(sel_n)), last_logits(m, rows(sel_n), ablation_edits(m, r))
    assert s.kl[0][1] == pytest.approx(float(kl_reference_edited(clean, ablated).mean()), abs=1e-12)
    kept = {(x["layer"], x["position"]) for x in s.ranking}
    for i, layer in enumerate(s.layers):
        assert ((layer, -1) in kept) == (s.induce_score[0][i] > 0)
    assert "Protocol arditi" in s.summary() and "KL(reference || edited)" in s.summary()
    assert Result.load(s.save(Path(tempfile.mkdtemp()) / "s.json")).to_json() == s.to_json()
