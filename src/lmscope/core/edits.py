"""Edits: what to do to a site's activation. Plain data; `trace.py` applies them inside hooks.

    add(site, vector)          act + vector
    replace(site, value)       value (a vector, or a full [batch, seq, ...] activation, e.g. from another run)
    scale(site, factor)        act * factor (negative included)
    zero(site)                 0
    mean_ablate(site, mean)    the mean activation (computed by the caller over a reference set)
    project_out(site, dir)     act - (act . u) u with u = dir / |dir|   (directional ablation)
    interpolate(site, value, w)  w * act + (1 - w) * value, w per unit (head, neuron); a differentiable mask

Each takes `positions` (int, list, slice or a boolean mask over the sequence, [seq] or [batch, seq]; negative
ints count from the end of the sequence seen so far), `heads` (z sites) and `neurons` (neurons sites).
A value, factor or weight holding NaN or infinity is refused when the edit is made (an EditError); a forward pass
whose logits go non-finite under edits (e.g. a float16 overflow) gives one RuntimeWarning per trace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lmscope.core.errors import EditError

OPS = ("add", "replace", "scale", "zero", "project_out", "interpolate")


@dataclass(frozen=True)
class Edit:
    site: str
    op: str
    value: "torch.Tensor | float | None" = None
    positions: "int | Sequence[int] | slice | torch.Tensor | None" = None
    heads: "int | Sequence[int] | None" = None
    neurons: "int | Sequence[int] | None" = None
    weight: "torch.Tensor | float | None" = None     # interpolate only

    def __post_init__(self):
        _check_finite(self.value, "value" if self.op != "scale" else "factor", self)
        _check_finite(self.weight, "weight", self)


def _check_finite(value, what: str, edit: Edit) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        finite = math.isfinite(value)
    elif isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
        finite = bool(torch.isfinite(value.detach()).all())
    else:
        return  # not a number: the type is checked when the edit is bound to a model
    if not finite:
        raise EditError(f"{edit.op} on '{edit.site}': the {what} holds NaN or infinity; give finite numbers")


def add(site, vector, *, positions=None, heads=None, neurons=None) -> Edit:
    return Edit(site, "add", vector, positions, heads, neurons)


def replace(site, value, *, positions=None, heads=None, neurons=None) -> Edit:
    return Edit(site, "replace", value, positions, heads, neurons)


def scale(site, factor: float, *, positions=None, heads=None, neurons=None) -> Edit:
    return Edit(site, "scale", factor, positions, heads, neurons)


def zero(site, *, positions=None, heads=None, neurons=None) -> Edit:
    return Edit(site, "zero", None, positions, heads, neurons)


def mean_ablate(site, mean, *, positions=None, heads=None, neurons=None) -> Edit:
    return Edit(site, "replace", mean, positions, heads, neurons)


def project_out(site, direction, *, positions=None, heads=None) -> Edit:
    return Edit(site, "project_out", direction, positions, heads, None)


def interpolate(site, value, weight, *, positions=None, heads=None, neurons=None) -> Edit:
    """weight * act + (1 - weight) * value. `weight` is a number or a tensor with one entry per unit of the site
    ([n_heads] on z, [d_mlp] on neurons, [d_model] elsewhere) or one per feature (the site's feature shape, e.g.
    [heads, d_head] on q); it may require grad, so a mask over heads or neurons
    can be learned. Weight exactly 1 keeps the activation bit for bit, exactly 0 gives the value bit for bit."""
    return Edit(site, "interpolate", value, positions, heads, neurons, weight)
