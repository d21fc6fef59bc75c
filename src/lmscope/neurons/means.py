"""Mean activations over a reference corpus, for mean ablation: computed once, then read from the user's cache.
(core.runs.mean_activations is the other kind: means at one token per prompt, not over a corpus stream.)

The cache is keyed by the model itself, not by its name: lmscope.core.fingerprint's config hash and the sha256 of
its weights (the same `hf:m` in another folder, or a rebuilt model, gets its own entry), plus dtype, layer, corpus,
token count and seed. The key is also written into the file and compared on reading."""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lmscope.core.fingerprint import config_sha256, weights_sha256
from lmscope.core.models.loading import cache_root
from lmscope.results.files import atomic_path
from lmscope.neurons.observe import record_neurons


def means_cache_key(model, layer: int, corpus: str, n_tokens: int, seed: int) -> str:
    """The cache key: the model's identity (config hash and weights hash, not its spec) and the computation's
    arguments, as sorted JSON."""
    return json.dumps({"config_sha256": config_sha256(model), "weights_sha256": weights_sha256(model),
                       "dtype": str(model.dtype), "layer": layer, "corpus": corpus, "n_tokens": n_tokens,
                       "seed": seed}, sort_keys=True)


def corpus_mean_activations(model, layer: int, corpus: str = "wiki", *, n_tokens: int = 20_000, seed: int = 0,
                     progress: bool = True) -> torch.Tensor:
    """Mean of every neuron of `layer` over `n_tokens` of a named corpus (float64, [d_mlp]).
    Cached as safetensors, keyed by the model's fingerprint (means_cache_key); random models are not cached."""
    layer = model.site(f"neurons.{layer}").layer
    cacheable = not model.spec.startswith("random:")
    key = means_cache_key(model, layer, corpus, n_tokens, seed) if cacheable else ""
    path = cache_root() / "means" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
    cached = _read_cached(path, key) if cacheable else None
    if cached is not None:
        return cached
    mean = record_neurons(model, [layer], corpus, n_tokens=n_tokens, k=1, n_samples=1, seed=seed,
                          progress=progress).mean(layer)
    if cacheable:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"mean": mean.contiguous()}, str(tmp), metadata={"key": key})
    return mean


def _read_cached(path, key: str) -> "torch.Tensor | None":
    """The cached mean when the file exists, reads, and records exactly `key`; otherwise None (recomputed)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key or list(f.keys()) != ["mean"]:
                return None
            mean = f.get_tensor("mean")
    except (SafetensorError, OSError):
        return None
    return mean if torch.isfinite(mean).all() else None
