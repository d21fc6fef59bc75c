"""Issue 14 item 3: when the model and the empty circuit score the same (or nearly), faithfulness is undefined:
null in the JSON with a reason, "undefined" in the summary, no crash (random draws included)."""
import json

import pytest
import torch

import lmscope.circuits.faithfulness as faithfulness
from circuit_toy_task import toy_task
from conftest import random_model
from lmscope.circuits.faithfulness import evaluate_circuit, gap_is_undefined, normalised
from lmscope.circuits.means import task_means
from lmscope.circuits.nodes import gates
from lmscope.results import Result


def _strict(data):
    return json.loads(json.dumps(data, allow_nan=False), parse_constant=lambda c: pytest.fail(f"bare {c}"))


@pytest.mark.parametrize("epsilon", [0.0, 1e-9])
def test_equal_full_and_empty_metrics_give_undefined(monkeypatch, epsilon, tmp_path):
    m, task = random_model("llama"), toy_task(8)
    means = task_means(m, task)
    fixed = torch.randn(len(task), m.vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def same_logits(model, task_, means_, heads, mlps, rows=None, **kwargs):   # every circuit scores the same,
        return (fixed + epsilon * float(heads.sum() + mlps.sum())).to(model.dtype)  # up to epsilon x its size

    monkeypatch.setattr(faithfulness, "gated_logits", same_logits)
    r = evaluate_circuit(m, task, means, *gates(m, ["head.0.1", "mlp.0"]), n_random=5,
                         ranking=[(0, 1), (1, 2)], sizes=(1, 2))
    assert r.faithfulness != r.faithfulness and r.necessity_drop != r.necessity_drop
    assert r.random_faithfulness != r.random_faithfulness and len(r.random_draws) == 5
    assert "score the same" in r.undefined_reason
    data = _strict(r.to_json())
    assert data["faithfulness"] is None and data["necessity_drop"] is None and data["random_std"] is None
    assert data["random_draws"] == [None] * 5 and [p["faithfulness"] for p in data["curve"]] == [None, None]
    assert data["undefined_reason"] == r.undefined_reason
    assert "faithfulness undefined" in r.summary()
    assert Result.load(r.save(tmp_path / "f.json")).to_json() == r.to_json()


def test_one_tolerance_separates_defined_from_undefined():
    assert gap_is_undefined(1.0, 1.0) and gap_is_undefined(1.0, 1.0 - 1e-7) and gap_is_undefined(float("nan"), 0.0)
    assert not gap_is_undefined(1.0, 0.5) and not gap_is_undefined(1e-3, 0.0)
    assert normalised(0.75, 1.0, 0.5) == 0.5
    assert normalised(5.0, 1.0, 1.0 - 1e-9) != normalised(5.0, 1.0, 1.0 - 1e-9)   # nan, not 4e9
