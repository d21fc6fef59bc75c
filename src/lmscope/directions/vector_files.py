"""Direction vectors on disk: one safetensors file holding the vector, with JSON metadata in its header.

    save_vector("sentiment.safetensors", direction)      # a lmscope.directions.Direction
    d = load_vector("sentiment.safetensors", model)      # checked against the model it will be used on

The metadata names where the vector came from (model spec, d_model, site, layer, position, method, sha256 of the
two prompt sets, norm, lmscope version). Loading against a model checks the vector's size, that its site exists
in that model, and that it was read from the same model spec (`allow_other_model=True` to use it elsewhere on
purpose). safetensors only: a vector file cannot carry code, unlike a pickle.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lmscope.directions.contrast import Direction
from lmscope.core.errors import InputError, LmscopeError

FORMAT = "lmscope.vector/1"
_KEY = "vector"


def save_vector(path, direction: Direction, *, overwrite: bool = False) -> Path:
    """Write `direction` (vector float32 + metadata) atomically; an existing file is refused unless overwrite."""
    from safetensors.torch import save_file

    from lmscope import __version__
    from lmscope.results.files import atomic_path
    if not isinstance(direction, Direction):
        raise InputError(f"save_vector takes a lmscope Direction, got {type(direction).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"a vector file ends in .safetensors, got {path.name!r}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    vector = direction.vector.detach().to("cpu", torch.float32).contiguous()
    if vector.ndim != 1 or not torch.isfinite(vector).all() or float(vector.norm()) == 0:
        raise InputError("a vector file holds one finite, non-zero 1-d vector")
    meta = {"format": FORMAT, "lmscope_version": __version__, "d_model": int(vector.shape[0]),
            **direction.to_json(), "layer": direction.layer, "norm": float(vector.double().norm())}
    with atomic_path(path) as tmp:
        save_file({_KEY: vector}, str(tmp), metadata={"lmscope": json.dumps(meta)})
    return path


def read_metadata(path) -> dict:
    """The metadata of a vector file, without loading the vector."""
    from safetensors import safe_open
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own types for a damaged header
        raise InputError(f"{path} is not a readable safetensors file: {str(exc).splitlines()[0]}") from None
    if "lmscope" not in header or keys != [_KEY]:
        raise InputError(f"{path} is not a lmscope vector file (no lmscope metadata or not one '{_KEY}' tensor)")
    try:
        meta = json.loads(header["lmscope"])
    except json.JSONDecodeError:
        raise InputError(f"{path}: the lmscope metadata is not valid JSON") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: format {meta.get('format')!r}, this lmscope reads {FORMAT!r}")
    return meta


def load_vector(path, model=None, *, allow_other_model: bool = False) -> Direction:
    """The Direction stored in `path`; with a model, checked against it and returned in the model's dtype/device."""
    from safetensors.torch import load_file
    meta = read_metadata(path)
    vector = load_file(str(path))[_KEY]
    if vector.ndim != 1 or vector.shape[0] != meta.get("d_model"):
        raise InputError(f"{path}: vector of shape {tuple(vector.shape)}, metadata says d_model {meta.get('d_model')}")
    norm = float(vector.double().norm())
    if not math.isclose(norm, float(meta.get("norm", -1)), rel_tol=1e-4):
        raise InputError(f"{path}: the vector's norm {norm:.6g} differs from the recorded {meta.get('norm')}: "
                         f"the file was changed")
    site = meta.get("site")
    if model is not None:
        check_against(meta, model, allow_other_model, str(path))
        site = str(model.site(site))
        vector = vector.to(model.device, model.dtype)
    return Direction(vector, site, meta.get("position"), meta.get("n_positive", 0), meta.get("n_negative", 0),
                     norm, meta.get("method", "unknown"), meta.get("model"), meta.get("prompt_sha256"),
                     meta.get("resid_norm"))


def check_against(meta: dict, model, allow_other_model: bool = False, what: str = "the vector") -> None:
    """One clear error where a vector described by `meta` does not fit `model`."""
    if meta.get("d_model") != model.d_model:
        raise InputError(f"{what} has d_model {meta.get('d_model')}, the model {model.spec} has {model.d_model}")
    if meta.get("model") != model.spec and not allow_other_model:
        raise InputError(f"{what} was extracted from model {meta.get('model')!r}, not {model.spec!r}; pass "
                         f"allow_other_model=True (CLI: --allow-other-model) to use it anyway")
    try:
        model.site(meta.get("site"))
    except LmscopeError as exc:
        raise InputError(f"{what}: its site does not exist in {model.spec}: {exc}") from None


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"vector file not found: {path}")
    return path
