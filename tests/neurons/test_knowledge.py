"""Knowledge neurons: the resumed IG path equals the plain one; attribution and evaluation prompts are disjoint."""
import pytest
import torch
from conftest import random_model

import lmscope.neurons.knowledge as knowledge
from lmscope.core.errors import InputError
from lmscope.data.number_agreement import AgreementPrompt
from lmscope.neurons import integrated_gradients


@pytest.mark.parametrize("prompt", ["hello wor", "x"])
def test_resumed_integrated_gradients_equal_the_plain_path(model, prompt):
    if not model.adapter.has_neurons:
        pytest.skip("mixture of experts: no neurons site to attribute to")
    layers = [0, model.n_layers - 1]
    fast = integrated_gradients(model, prompt, "l", layers=layers, steps=3)
    plain = integrated_gradients(model, prompt, "l", layers=layers, steps=3, resume=False)
    assert fast.shape == plain.shape == (2, model.d_mlp)
    assert plain.abs().max() > 0
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))


@pytest.mark.parametrize("per_pass", [1, 2, 0])
def test_layers_sharing_a_pass_equal_the_plain_path(model, per_pass):
    # copy g of the steps is edited at its own layer only and the pass resumes at the group's lowest layer: each
    # layer's attribution must be the one its own pass gives (layers given out of order come back in that order)
    if not model.adapter.has_neurons:
        pytest.skip("mixture of experts: no neurons site to attribute to")
    layers = [model.n_layers - 1, 0, 1] if model.n_layers > 2 else [1, 0]
    grouped = integrated_gradients(model, "hello wor", "l", layers=layers, steps=3, layers_per_pass=per_pass)
    plain = integrated_gradients(model, "hello wor", "l", layers=layers, steps=3, resume=False)
    assert plain.abs().max() > 0
    torch.testing.assert_close(grouped, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))


@pytest.fixture
def byte_items(monkeypatch):
    items = [AgreementPrompt(f"{w} dogs", "s", "x", "plural", "subject-verb", i) for i, w in enumerate("abcdef")]
    items += [AgreementPrompt(f"{w} dog", "x", "s", "singular", "subject-verb", i) for i, w in enumerate("abcdef")]
    monkeypatch.setattr(knowledge, "load_number_agreement", lambda: items)
    return items


def test_attribution_prompts_are_disjoint_from_the_evaluated_ones(byte_items, monkeypatch):
    model = random_model("llama")
    attributed, evaluated = [], []
    find, margins = knowledge.find_knowledge_neurons, knowledge.agreement_margins
    monkeypatch.setattr(knowledge, "find_knowledge_neurons",
                        lambda m, prompts, *a, **k: attributed.extend(prompts) or find(m, prompts, *a, **k))
    monkeypatch.setattr(knowledge, "agreement_margins",
                        lambda m, items, *a, **k: evaluated.extend(it.prompt for it in items) or margins(m, items, *a,
                                                                                                           **k))
    r = knowledge.number_agreement_experiment(model, attribution_prompts=2, steps=2, layers=[0], sweep=[1])
    assert attributed == ["a dogs", "d dogs"]              # evenly spaced over the 6 plural prompts
    assert evaluated and not set(attributed) & set(evaluated)
    assert "a dog" not in evaluated and "b dog" in evaluated  # the singular twin of an attribution prompt is out
    assert r.n_prompts == 4 and r.attribution_pairs == [0, 3] and r.evaluated_pairs == [1, 2, 4, 5]


def test_attribution_must_leave_prompts_to_evaluate(byte_items):
    with pytest.raises(InputError, match="leaves no plural prompt"):
        knowledge.number_agreement_experiment(None, attribution_prompts=6)
