"""Dose-response resumed from the neurons' layer, and effect generations batched over prompts, give the numbers
and texts of the old paths (a full forward per factor, one generation per prompt)."""
import pytest
import torch

from conftest import random_model
from lmscope.neurons import neuron_dose_response, neuron_edit, neuron_effects

PROMPTS = ["the cat sat", "hello", "a b c d e f", "xyz"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_resumed_dose_response_is_bit_exact(family, layer):
    m = random_model(family)
    kw = dict(tokens=["a", "e"], factors=[-2.0, 0.0, 1.0, 8.0], next_tokens=[5, 6, 7, 8])
    old = neuron_dose_response(m, layer, [1, 2, 3], PROMPTS, resume=False, **kw)
    new = neuron_dose_response(m, layer, [1, 2, 3], PROMPTS, **kw)
    assert new.probs == old.probs and new.kl == old.kl
    assert new.kl[-1] > 0 and new.kl[2] == 0.0                         # x8 changes something, x1 nothing
    assert not m.has_hooks() and "forward" not in vars(m.block_module(0))


def test_effect_generations_batched_equal_one_by_one():
    m = random_model("llama")
    r = neuron_effects(m, 1, list(range(40)), PROMPTS, "scale", factor=-20.0, generate=5)
    edit_free = [m.generate(p, max_new_tokens=5).text for p in PROMPTS[:3]]
    edited = [m.generate(p, [neuron_edit(m, 1, list(range(40)), "scale", factor=-20.0)], max_new_tokens=5).text
              for p in PROMPTS[:3]]
    assert [g["before"] for g in r.generations] == edit_free
    assert [g["after"] for g in r.generations] == edited
    assert edited != edit_free
