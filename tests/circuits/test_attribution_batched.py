"""EAP-IG with its interpolation steps batched into one pass gives the scores of one pass per step."""
import pytest
import torch

from conftest import ADDITIVE_HEADS, random_model
from lmscope.circuits.attribution import _EdgePlan, _slot_layout, attribute
from lmscope.circuits.tasks import TaskSet


def _task(n=5, length=6):
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (n, length), generator=g).tolist()
    corrupt = [row[:1] + [(row[1] + 5) % 256] + row[2:] for row in clean]
    return TaskSet(name="toy", clean=clean, corrupt=corrupt, answer=[30 + i for i in range(n)],
                   wrong=[40 + i for i in range(n)], metric_name="logit_diff", n_filtered=0, filtered={},
                   templates=[0] * n)


def _close(a, b):
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)


# the families whose heads' edge gradients go through per-head slices of the q/k/v projections, and whose MLPs
# read a channel of their own; the others take the masked backward of the old path for that part
SLICED = {"falcon": False, "falcon_rw": False}                          # no q/k/v projection sites
CHANNEL = {"falcon": False, "gptj": False, "cohere": False, "stablelm_parallel": False}   # a norm shared with attention
EDGE_FAMILIES = ADDITIVE_HEADS


@pytest.mark.parametrize("family", EDGE_FAMILIES)
def test_batched_steps_equal_one_pass_per_step(family, monkeypatch):
    m = random_model(family)
    sliced = []
    through = _EdgePlan._through_projections
    monkeypatch.setattr(_EdgePlan, "_through_projections",
                        lambda self, *a: sliced.append(through(self, *a)) or sliced[-1])
    # 5 steps over batches of 3 and 2 prompts, 6 rows a pass: passes of 2 steps, 2 steps and 1 step
    kw = dict(method="eap-ig", steps=5, edges=True, batch_size=3)
    old = attribute(m, _task(), step_rows=0, **kw)
    assert not sliced                                     # the old path: one backward per head and per MLP
    new = attribute(m, _task(), step_rows=6, **kw)
    assert bool(sliced) == SLICED.get(family, True)
    assert all(g is not None for g in sliced)           # every pass had the structure calibrate() found
    assert bool(_EdgePlan(m, batched=True).mlp_reads) == CHANNEL.get(family, True)
    _close(new.heads, old.heads)
    _close(new.mlps, old.mlps)
    _close([new.embed], [old.embed])
    _close([[v or 0.0 for v in row] for row in new.edges], [[v or 0.0 for v in row] for row in old.edges])
    assert max(abs(v) for row in old.heads for v in row) > 1e-5          # scores that are not all zero
    # the batched path's clean run is the alpha = 1 copy of its last pass (a larger batch: float rounding)
    assert new.clean_metric == pytest.approx(old.clean_metric, rel=1e-5, abs=1e-6)
    assert new.corrupt_metric == old.corrupt_metric


def test_eap_is_untouched_by_step_batching():
    m = random_model("llama")
    assert attribute(m, _task(), "eap").to_json()["heads"] == attribute(m, _task(), "eap", step_rows=0).to_json()["heads"]


def _kinds(family):
    rounds, layouts = _EdgePlan(random_model(family), batched=True).rounds[0]
    return rounds, [lay.kind for lay in layouts]


def test_heads_are_grouped_into_rounds_that_share_no_slot():
    # 4 query heads on 2 KV heads (head h reads KV head h // 2): heads of one KV group go to different rounds
    assert _kinds("llama") == ([[0, 2], [1, 3]], ["own", "grouped", "grouped"])
    assert _kinds("gpt2") == ([[0, 1, 2, 3]], ["own", "own", "own"])                  # one KV head each
    # OLMo 2's q/k norms run over all heads at once: every head reaches every q and k slot, a round of its own
    assert _kinds("olmo2") == ([[0], [1], [2], [3]], ["several", "several", "grouped"])


def test_slots_in_another_order_give_the_same_scores(monkeypatch):
    m = random_model("llama")
    kw = dict(method="eap-ig", steps=2, edges=True, batch_size=3)
    want = attribute(m, _task(), step_rows=6, **kw)
    calibrate = _EdgePlan.calibrate

    def as_one(self, model):      # the same reach, taken by the general gather ("one": any order of slots)
        calibrate(self, model)
        for rounds, layouts in self.rounds:
            for lay in layouts:
                lay.kind = "one"
    monkeypatch.setattr(_EdgePlan, "calibrate", as_one)
    got = attribute(m, _task(), step_rows=6, **kw)
    _close([[v or 0.0 for v in row] for row in got.edges], [[v or 0.0 for v in row] for row in want.edges])


def test_a_path_the_calibration_missed_falls_back_to_the_masked_backward(monkeypatch):
    m = random_model("llama")
    kw = dict(method="eap-ig", steps=2, edges=True, batch_size=3)
    old = attribute(m, _task(), step_rows=0, **kw)
    calibrate = _EdgePlan.calibrate

    def missed(self, model):      # as if every head read KV head 0 only: the heads of KV head 1 reach a slot unseen
        calibrate(self, model)
        for layer, (rounds, layouts) in enumerate(self.rounds):
            q, k, v = (lay.reach for lay in layouts)
            k, v = torch.zeros_like(k), torch.zeros_like(v)
            k[:, 0] = v[:, 0] = True
            rounds = [[h] for h in range(model.n_heads)]
            self.rounds[layer] = (rounds, [_slot_layout(x, rounds) for x in (q, k, v)])
    monkeypatch.setattr(_EdgePlan, "calibrate", missed)
    results = []
    through = _EdgePlan._through_projections
    monkeypatch.setattr(_EdgePlan, "_through_projections",
                        lambda self, *a: results.append(through(self, *a)) or results[-1])
    new = attribute(m, _task(), step_rows=6, **kw)
    assert results and all(g is None for g in results)
    _close([[v or 0.0 for v in row] for row in new.edges], [[v or 0.0 for v in row] for row in old.edges])
