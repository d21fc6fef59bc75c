"""Each result class of the directions part saves to JSON and loads back as itself, unchanged."""
import pytest
import torch

from conftest import random_model
from lmscope.directions import (Contrast, SteeringDoseResponse, SteeringResult, SweepResult, TruthResult, contrast,
                                selection_sweep, steer, steering_dose_response, truth_direction)
from lmscope.results import Result

POS = ["I love this film", "What a great day", "This is wonderful", "So happy now"]
NEG = ["I hate this film", "What a bad day", "This is terrible", "So sad now"]


@pytest.fixture(scope="module")
def case():
    m = random_model("llama")
    return m, contrast(m, POS, NEG, last_k=2, test_fraction=0.5)


def _round_trip(result, cls, tmp_path):
    back = Result.load(result.save(tmp_path / f"{result.kind}.json"))
    assert type(back) is cls and back.to_json() == result.to_json()
    return back


def test_contrast(case, tmp_path):
    m, c = case
    back = _round_trip(c, Contrast, tmp_path)
    assert back.dom.dtype == torch.float64 and torch.equal(back.direction(1, -1).vector, c.direction(1, -1).vector)


def test_sweep(case, tmp_path):
    m, c = case
    _round_trip(selection_sweep(m, c, ["The weather", "A table"], ["a"], n_eval=2, layers=[0, 1],
                                protocol="same_prompts"), SweepResult,
                tmp_path)


def test_steer_and_dose(case, tmp_path):
    m, c = case
    d = c.direction(1, -1)
    r = steer(m, ["hello"], d, coefs=[0, 1], max_new_tokens=2, scorer=len, score_name="length")
    assert _round_trip(r, SteeringResult, tmp_path).config.max_new_tokens == 2
    dose = steering_dose_response(m, d, ["hello"], coefs=[0, 1], max_new_tokens=2, kl_tokens=30)
    assert _round_trip(dose, SteeringDoseResponse, tmp_path).kl_direction == "KL(edited || reference)"


def test_truth(tmp_path):
    r = truth_direction(random_model("llama"), layers=[1], heads=False)
    back = _round_trip(r, TruthResult, tmp_path)
    assert back.direction.dtype == torch.float64 and back.head_val is None
