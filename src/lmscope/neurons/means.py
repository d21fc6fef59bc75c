"""Mean activations over a reference corpus, for mean ablation: computed once, then read from the user's cache.
(core.runs.mean_activations is the other kind: means at one token per prompt, not over a corpus stream.)"""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file, save_file

from lmscope.core.models.loading import cache_root
from lmscope.results.files import atomic_path
from lmscope.neurons.observe import record_neurons


def corpus_mean_activations(model, layer: int, corpus: str = "wiki", *, n_tokens: int = 20_000, seed: int = 0,
                     progress: bool = True) -> torch.Tensor:
    """Mean of every neuron of `layer` over `n_tokens` of a named corpus (float64, [d_mlp]).
    Cached as safetensors, keyed by model, layer, corpus, token count and seed; random models are not cached."""
    layer = model.site(f"neurons.{layer}").layer
    cacheable = not model.spec.startswith("random:")
    key = json.dumps({"model": model.spec, "dtype": str(model.dtype), "layer": layer, "corpus": corpus,
                      "n_tokens": n_tokens, "seed": seed}, sort_keys=True)
    path = cache_root() / "means" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
    if cacheable and path.is_file():
        return load_file(path)["mean"]
    mean = record_neurons(model, [layer], corpus, n_tokens=n_tokens, k=1, n_samples=1, seed=seed,
                          progress=progress).mean(layer)
    if cacheable:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"mean": mean.contiguous()}, str(tmp), metadata={"key": key})
    return mean
