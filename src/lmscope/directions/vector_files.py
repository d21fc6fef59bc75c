"""A direction (`Direction`: a vector and where it was read) and its file on disk: one safetensors file holding the
vector, with JSON metadata in its header.

    save_vector("sentiment.safetensors", direction)      # a lmscope.directions.Direction
    d = load_vector("sentiment.safetensors", model)      # checked against the model it will be used on

The metadata names where the vector came from (model spec, d_model, site, layer, position, method, sha256 of the
two prompt sets, norm, lmscope version, the model's config hash). Loading against a model checks the vector's
size, that its site exists in that model, and that it was read from the same model (lmscope.core.fingerprint:
the config hash; `allow_other_model=True` to use it elsewhere on purpose). safetensors only: a vector file cannot
carry code, unlike a pickle.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmscope.core import __version__
from lmscope.core.errors import InputError, LmscopeError
from lmscope.core.fingerprint import check_identity
from lmscope.results.files import atomic_path
from lmscope.results.output import check_output

FORMAT = "lmscope.vector/1"
_KEY = "vector"


@dataclass
class Direction:
    """A direction in activation space and where it came from. Not a Result: its file is a safetensors vector
    (save / load_vector), its to_json() the metadata written beside it."""
    vector: torch.Tensor       # [*feature shape of the site], model dtype
    site: str                  # canonical site name, e.g. 'resid_post.12'
    position: "int | None"     # None = the last real token of each prompt
    n_positive: int
    n_negative: int
    norm: float                # |vector|, computed in float64
    method: str = "dom"        # dom (difference of means), pca, probe, or where a loaded vector says it came from
    model: "str | None" = None           # the spec of the model it was read from
    prompt_sha256: "str | None" = None   # hash of the two prompt sets (see contrast.prompt_hash)
    resid_norm: "float | None" = None    # mean |activation| at the site over the prompts: a natural unit of strength
    config_sha256: "str | None" = None   # the model's config hash (lmscope.core.fingerprint), checked on load

    @property
    def unit(self) -> torch.Tensor:
        """The direction scaled to norm 1 (model dtype)."""
        return (self.vector.double() / self.vector.double().norm()).to(self.vector.dtype)

    @property
    def layer(self) -> "int | None":
        return int(self.site.rsplit(".", 1)[1]) if "." in self.site else None

    def to_json(self) -> dict:
        """Metadata only: the vector itself belongs in a safetensors file, not in JSON."""
        return {"site": self.site, "position": self.position, "n_positive": self.n_positive,
                "n_negative": self.n_negative, "norm": self.norm, "method": self.method, "model": self.model,
                "prompt_sha256": self.prompt_sha256, "resid_norm": self.resid_norm,
                "config_sha256": self.config_sha256}

    def save(self, path, *, overwrite: bool = False):
        """A safetensors file with the vector and this metadata (save_vector)."""
        return save_vector(path, self, overwrite=overwrite)


def save_vector(path, direction: Direction, *, overwrite: bool = False) -> Path:
    """Write `direction` (vector float32 + metadata) atomically; an existing file is refused unless overwrite."""
    if not isinstance(direction, Direction):
        raise InputError(f"save_vector takes a lmscope Direction, got {type(direction).__name__}")
    path = check_output(path, overwrite=overwrite, suffixes=(".safetensors",), what="vector file")
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
    meta = read_metadata(path)
    vector = load_file(str(path))[_KEY]
    if vector.ndim != 1 or vector.shape[0] != meta.get("d_model"):
        raise InputError(f"{path}: vector of shape {tuple(vector.shape)}, metadata says d_model {meta.get('d_model')}")
    if not torch.isfinite(vector).all():
        raise InputError(f"{path}: the vector holds NaN or infinite values")
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
                     meta.get("resid_norm"), meta.get("config_sha256"))


def check_against(meta: dict, model, allow_other_model: bool = False, what: str = "the vector") -> None:
    """One clear error where a vector described by `meta` does not fit `model` (lmscope.core.fingerprint's check:
    its size, then its model's config hash unless allow_other_model; then its site)."""
    try:
        check_identity({"spec": meta.get("model"), "d_model": meta.get("d_model"),
                        "config_sha256": meta.get("config_sha256")}, model, what,
                       allow_other_model=allow_other_model)
    except InputError as exc:
        hint = "" if allow_other_model or "d_model" in str(exc) else (
            "; pass allow_other_model=True (CLI: --allow-other-model) to use it anyway")
        raise InputError(f"{exc}{hint}") from None
    try:
        model.site(meta.get("site"))
    except LmscopeError as exc:
        raise InputError(f"{what}: its site does not exist in {model.spec}: {exc}") from None


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"vector file not found: {path}")
    return path
