"""Issue 14 item 2: the corpus-means cache is keyed by the model's fingerprint (config and weights hashes), not by
its spec string: another model under the same name never gets the first one's means."""
import hashlib

import pytest
import torch

import lmscope
import lmscope.neurons.means as means
from lmscope.neurons.means import corpus_mean_activations, means_cache_key

ARGS = dict(corpus="python", n_tokens=48, seed=0, progress=False)


def _named(name: str, perturb: bool = False) -> lmscope.Model:
    m = lmscope.load("random:llama")
    if perturb:                                   # "rebuilt": same name and config, other weights
        with torch.no_grad():
            m.hf.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    m.spec = name                                 # looks like a cacheable model to the cache
    return m


def _path(tmp_path, model, layer=1):
    key = means_cache_key(model, layer, ARGS["corpus"], ARGS["n_tokens"], ARGS["seed"])
    return tmp_path / "means" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


def test_a_cache_from_another_model_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    a, b = _named("hf:m"), _named("hf:m", perturb=True)
    mean_a = corpus_mean_activations(a, 1, **ARGS)
    assert _path(tmp_path, a).is_file() and len(list((tmp_path / "means").iterdir())) == 1
    real = means.record_neurons
    calls = []
    monkeypatch.setattr(means, "record_neurons", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert torch.equal(corpus_mean_activations(a, 1, **ARGS), mean_a) and not calls       # its own cache: read
    mean_b = corpus_mean_activations(b, 1, **ARGS)
    assert calls == [1] and not torch.equal(mean_b, mean_a)                                # same name: recomputed
    assert _path(tmp_path, b) != _path(tmp_path, a) and len(list((tmp_path / "means").iterdir())) == 2


def test_a_file_with_another_key_is_recomputed(tmp_path, monkeypatch):
    """Even a file at the right name is used only if it records this model's key (a colliding or planted file)."""
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    a, b = _named("hf:m"), _named("hf:m", perturb=True)
    mean_a = corpus_mean_activations(a, 1, **ARGS)
    _path(tmp_path, a).rename(_path(tmp_path, b))
    mean_b = corpus_mean_activations(b, 1, **ARGS)
    fresh = means.record_neurons(b, [1], "python", n_tokens=48, k=1, n_samples=1, seed=0, progress=False).mean(1)
    assert torch.equal(mean_b, fresh) and not torch.equal(mean_b, mean_a)


def test_random_models_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    corpus_mean_activations(lmscope.load("random:llama"), 1, **ARGS)
    assert not (tmp_path / "means").exists()
