"""Selection sweep: induce / bypass / KL per candidate, the filter and the ranking."""
import math

import pytest
import torch

from conftest import random_model
from lmscope.core.runs import last_logits
from lmscope.directions.sweep import best_direction, metric, selection_sweep
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
    s = selection_sweep(m, c, NEUTRAL, ["a", "e"], n_eval=4)
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
    s = selection_sweep(m, c, NEUTRAL, ["a", "e"], n_eval=4, max_kl=1.0, max_layer_fraction=0.67)
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
    strict = selection_sweep(m, c, NEUTRAL, ["a"], n_eval=2, max_kl=-1.0, layers=[0])
    assert strict.ranking == [] and "no candidate" in strict.summary()
    with pytest.raises(InputError, match="no candidate passed"):
        best_direction(c, strict)
    assert strict.figure().data and strict.to_json()["max_kl"] == -1.0


def test_bad_input(setup):
    m, c = setup
    with pytest.raises(InputError, match="not one"):
        selection_sweep(m, c, NEUTRAL, ["ab"])
    with pytest.raises(InputError, match="not extracted"):
        selection_sweep(m, c, NEUTRAL, ["a"], positions=[-3])
    with pytest.raises(InputError, match="computed on"):
        selection_sweep(random_model("qwen2"), c, NEUTRAL, ["a"])
    with pytest.raises(InputError, match="empty"):
        selection_sweep(m, c, [], ["a"])
    assert not m.has_hooks()
