"""One model identity for every saved artefact (vectors, circuits, SAEs, harvests, caches), with one check.

    model_identity(model)  -> {"spec", "model_type", "n_layers", "d_model", "vocab_size", "config_sha256"}
    weights_sha256(model)  -> sha256 of every parameter's bytes (computed once per model object; for cache keys)
    check_identity(saved, model, what)   one clear InputError when `saved` (an identity dict) is another model's

The config hash leaves out what changes with how a model was loaded (its path, the library version, the weight
dtype, the attention implementation), so the same model loaded from another folder or in bfloat16 still matches.
"""
from __future__ import annotations

import hashlib
import json

import torch

from lmscope.core.errors import InputError

_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype",
                         "_attn_implementation", "_attn_implementation_internal", "use_cache", "_commit_hash",
                         "architectures")


def config_sha256(model) -> str:
    """sha256 of the model's HF config as sorted JSON, without the load-dependent keys."""
    config = {k: v for k, v in model.hf.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model) -> dict:
    return {"spec": model.spec, "model_type": model.hf.config.model_type, "n_layers": model.n_layers,
            "d_model": model.d_model, "vocab_size": model.vocab_size, "config_sha256": config_sha256(model)}


@torch.no_grad()
def weights_sha256(model) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), computed once per model object."""
    cached = getattr(model, "_weights_sha256", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(model.hf.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    model._weights_sha256 = digest.hexdigest()
    return model._weights_sha256


def check_identity(saved: dict, model, what: str, *, allow_other_model: bool = False) -> None:
    """InputError where `saved` (a model_identity dict, or one with at least config_sha256) is not `model`."""
    if not isinstance(saved, dict):
        raise InputError(f"{what} does not say which model it belongs to")
    if saved.get("d_model") not in (None, model.d_model):
        raise InputError(f"{what} has d_model {saved.get('d_model')}, the model {model.spec} has {model.d_model}")
    if allow_other_model:
        return
    theirs = saved.get("config_sha256")
    if theirs is None:
        raise InputError(f"{what} does not record the model's config hash; it cannot be checked against "
                         f"{model.spec}")
    mine = config_sha256(model)
    if theirs[:16] != mine[:16]:
        raise InputError(f"{what} belongs to another model ({saved.get('spec', 'unknown')}, config "
                         f"{theirs[:12]}), not {model.spec} (config {mine[:12]})")


# Config hashes written before issue 12's layout: harvest manifests and SAE cfg.json (full sha256; these keys left
# out) and circuit files (first 16 hex digits; those keys left out). Read only, so that old files keep working.
_OLD_HARVEST_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype",
                     "_attn_implementation", "_attn_implementation_internal", "use_cache")
_OLD_CIRCUIT_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "architectures")


def same_config(saved_hash: str, model) -> bool:
    """True where `saved_hash` (a file's config hash) is `model`'s: as config_sha256 writes it (its first 16 hex
    digits suffice), or as an older lmscope wrote it into harvest manifests, SAE cfg.json and circuit files."""
    if not isinstance(saved_hash, str) or len(saved_hash) < 16:
        return False
    if saved_hash[:16] == config_sha256(model)[:16]:
        return True
    config = model.hf.config.to_dict()
    for keys in (_OLD_HARVEST_KEYS, _OLD_CIRCUIT_KEYS):
        old = {k: v for k, v in config.items() if k not in keys}
        if hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest().startswith(saved_hash):
            return True
    return False
