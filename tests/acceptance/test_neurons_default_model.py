"""Part 1 on the default model: real corpus contexts, and the number-agreement experiment end to end (small)."""
import json

import pytest
import torch

from lmscope.cli import main
from lmscope.data.number_agreement import load_number_agreement
from lmscope.neurons import agreement_margins, number_agreement_experiment, suppress

pytestmark = pytest.mark.default_model


def test_neuron_profile_on_wiki(smollm2, capsys):
    assert main(["neuron", "12", "100", "--tokens", "1500", "--top-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_tokens"] == 1500 and len(out["top_contexts"]) == 5
    top = out["top_contexts"][0]
    assert top["value"] == out["stats"]["max"]
    text = top["left"] + top["token"] + top["right"]
    assert len(text) > 20 and any(ch.isalpha() for ch in text)  # real text around the token
    assert 0 < out["stats"]["frac_active"] < 1


def test_number_agreement_experiment_is_consistent(smollm2):
    result = number_agreement_experiment(smollm2, attribution_prompts=2, steps=3, layers=[27, 28, 29], sweep=(1, 5))
    every_plural = [it for it in load_number_agreement() if it.number == "plural"]
    assert len(every_plural) == 150 and len(result.attribution_pairs) == 2
    # evaluated on the plural prompts that were not used for attribution (disjoint sets)
    plural = [it for it in every_plural if it.pair in set(result.evaluated_pairs)]
    assert not set(result.attribution_pairs) & set(result.evaluated_pairs)
    before = agreement_margins(smollm2, plural)
    assert result.n_prompts == len(plural) == 148
    assert abs(result.margin_before - float(before.mean())) < 1e-4
    assert result.accuracy_before == float((before > 0).float().mean()) > 0.9
    if result.neurons:
        after = agreement_margins(smollm2, plural, suppress(result.neurons))
        assert abs(result.margin_after - float(after.mean())) < 1e-4
        assert result.flip_fraction == float(((after > 0) != (before > 0)).float().mean())
    assert [row["k"] for row in result.sweep] == [1, 5]
    assert set(result.to_json()) >= {"neurons", "n_prompts", "margin_before", "margin_after", "flip_fraction"}


def test_mean_activations_are_computed_once_then_cached(smollm2, tmp_path, monkeypatch):
    import lmscope.neurons.means as means
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    first = means.corpus_mean_activations(smollm2, 5, "wiki", n_tokens=300, progress=False)
    assert first.shape == (smollm2.d_mlp,) and first.dtype == torch.float64
    direct = means.record_neurons(smollm2, [5], "wiki", n_tokens=300, progress=False).mean(5)
    assert torch.equal(first, direct)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the mean should come from the cache")
    monkeypatch.setattr(means, "record_neurons", no_second_pass)
    assert torch.equal(means.corpus_mean_activations(smollm2, 5, "wiki", n_tokens=300, progress=False), first)
    assert len(list((tmp_path / "means").glob("*.safetensors"))) == 1
