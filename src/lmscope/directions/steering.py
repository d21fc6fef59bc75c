"""Steering: add, subtract, ablate or clamp a direction in the residual stream, during a forward pass or generation.

    add        act + coef * v                      at the chosen layers' site (the site the vector was read at)
    subtract   act - coef * v
    clamp      act - (act . u) u + value * u       the projection onto u = v/|v| set to `value`
    ablate     act - (act . u) u                   directional ablation (Arditi et al. 2024): at resid_pre.0 and at
                                                   every attn_out.L and mlp_out.L, i.e. every tensor that writes
                                                   into the residual stream, so no layer ever sees a component on u

Positions: "all", "prompt" (positions < prompt length) or "generated" (>= prompt length; the first generated token
is still predicted from an unsteered prompt), or explicit positions. Positions count over the whole sequence
(prompt + generated) via the KV cache length, as everywhere in lmscope.

The embedding is ablated at resid_pre.0 rather than `embed`: on GPT-2 the position embedding is added after the
token embedding, and both must lose their component on u.

`steer` runs the same prompts unsteered and at several coefficients, side by side (greedy, batched by prompt
length so that no prompt is padded).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_layers, check_number, check_prompts
from lmscope.core.config import option, with_overrides
from lmscope.core.edits import Edit, add, project_out
from lmscope.core.errors import InputError
from lmscope.core.runs import prompt_rows
from lmscope.directions.vector_files import Direction
from lmscope.results.base import Result
from lmscope.results.html import table

MODES = ("add", "subtract", "clamp", "ablate")
POSITIONS = ("all", "prompt", "generated")
SCALES = ("unit", "raw", "resid")


def as_vector(model, direction) -> torch.Tensor:
    """A Direction or a [d_model] tensor, checked, on the model's device and dtype."""
    v = direction.vector if isinstance(direction, Direction) else direction
    if not isinstance(v, torch.Tensor):
        raise InputError(f"a direction is a lmscope Direction or a tensor, got {type(direction).__name__}")
    if v.ndim != 1 or v.shape[0] != model.d_model:
        raise InputError(f"the direction has shape {tuple(v.shape)}; {model.spec} needs [{model.d_model}] (d_model)")
    if not v.is_floating_point() or not torch.isfinite(v).all():
        raise InputError("the direction must be a finite floating-point vector")
    return v.detach().to(model.device, model.dtype)


def ablation_edits(model, direction, *, positions=None) -> list[Edit]:
    """Directional ablation everywhere: project u out of resid_pre.0 and of every attn_out.L and mlp_out.L."""
    v = as_vector(model, direction)
    if float(v.double().norm()) == 0:
        raise InputError("cannot ablate a zero direction")
    sites = ["resid_pre.0"] + [f"{kind}.{layer}" for layer in range(model.n_layers) for kind in ("attn_out", "mlp_out")]
    return [project_out(site, v, positions=positions) for site in sites]


def position_spec(positions, prompt_length: "int | None" = None):
    """'all' / 'prompt' / 'generated' / explicit positions -> the `positions=` of an edit."""
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise InputError(f"positions must be one of {', '.join(POSITIONS)} or a list of ints, got {positions!r}")
        if positions == "all":
            return None
        if not isinstance(prompt_length, int) or prompt_length < 1:
            raise InputError(f"positions={positions!r} needs the prompt length")
        return slice(0, prompt_length) if positions == "prompt" else slice(prompt_length, None)
    return positions


def steering_edits(model, direction, *, mode: str = "add", coef: float = 1.0, layers=None, site_kind=None,
                   positions="all", prompt_length: "int | None" = None) -> list[Edit]:
    """Edits that steer with `direction`. add/subtract: coef * vector; clamp: projection set to coef (in the
    vector's units: value = coef * |vector| along u); ablate: everywhere (layers ignored).
    layers default to the direction's own layer; site_kind to its own site kind (else resid_post)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_number("coef", coef)
    v = as_vector(model, direction)
    spec = position_spec(positions, prompt_length)
    if mode == "ablate":
        return ablation_edits(model, v, positions=spec)
    own_kind, own_layer = _site_of(direction)
    kind = site_kind or own_kind or "resid_post"
    if layers is None:
        if own_layer is None:
            raise InputError("give layers=: a bare tensor does not say where it was read")
        layers = [own_layer]
    layers = check_layers(model, layers)
    if mode in ("add", "subtract"):
        delta = v * (coef if mode == "add" else -coef)
        return [add(f"{kind}.{layer}", delta, positions=spec) for layer in layers]
    unit = v / v.norm()
    target = unit * (coef * v.double().norm()).to(v.dtype)
    edits = []
    for layer in layers:
        edits += [project_out(f"{kind}.{layer}", v, positions=spec), add(f"{kind}.{layer}", target, positions=spec)]
    return edits


def scaled(direction: Direction, scale: str) -> Direction:
    """The direction rescaled so that coef 1 means: unit -> norm 1; raw -> the vector as extracted; resid -> the mean
    residual norm at its site (recorded when it was extracted)."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if not isinstance(direction, Direction):
        raise InputError("scale applies to a lmscope Direction")
    v = direction.vector.double()
    if scale == "raw":
        return direction
    size = 1.0
    if scale == "resid":
        if not direction.resid_norm:
            raise InputError("this direction has no recorded residual norm; use scale='unit' or 'raw'")
        size = float(direction.resid_norm)
    new = (v / v.norm() * size).to(direction.vector.dtype)
    return Direction(new, direction.site, direction.position, direction.n_positive, direction.n_negative, size,
                     direction.method, direction.model, direction.prompt_sha256, direction.resid_norm,
                     direction.config_sha256)


def _site_of(direction) -> tuple["str | None", "int | None"]:
    if isinstance(direction, Direction) and "." in direction.site:
        kind, layer = direction.site.rsplit(".", 1)
        return kind, int(layer)
    return None, None


# ---------------------------------------------------------------------------------------------------------------
# Generation, side by side.

def generate_steered(model, rows: list[list[int]], make_edits, *, max_new_tokens: int) -> list[str]:
    """Greedy continuations of token rows, with `make_edits(prompt_length)` applied to each row, all rows in one
    left-padded batch (Model.generate_batch counts each row's positions in its own tokens)."""
    by_length = {length: make_edits(length) for length in sorted({len(r) for r in rows})}
    return model.generate_batch(rows, [by_length[len(r)] for r in rows], max_new_tokens=max_new_tokens)


@dataclass
class SteerConfig:
    """The options of `steer` (and of `lmscope steer`)."""
    coefs: list[float] = option([-0.5, 0.0, 0.5], "coefficients; 0 = no edit (clamp: the projection value)")
    mode: str = option("add", "add, subtract, clamp or ablate (ablate runs coef 0 and 1)", choices=list(MODES))
    layers: "list[int] | None" = option(None, "layers to steer at (None: the vector's own layer)",
                                        flag="--at-layers")
    positions: str = option("all", "positions edited: all, prompt or generated", choices=list(POSITIONS))
    scale: str = option("resid", "coef 1 = a vector as long as the mean residual stream at the site (resid), the "
                                 "vector as extracted (raw), or norm 1 (unit)", choices=list(SCALES))
    chat: bool = option(False, "wrap prompts in the tokenizer's chat template")
    max_new_tokens: int = option(30, "greedy tokens generated per prompt")


@dataclass
class SteeringResult(Result, kind="steering"):
    model: str
    prompts: list[str]
    mode: str
    site: str                   # where it acts ('everywhere' for ablate)
    layers: list[int]
    positions: str
    scale: str
    coefs: list[float]          # 0 is the unsteered baseline
    vector_norm: float          # |vector| that coef 1 multiplies
    texts: list[list[str]]      # [coef][prompt]
    scores: "list[list[float]] | None" = None   # [coef][prompt], when a scorer was given (else null)
    score_name: str = ""
    notes: list[str] = field(default_factory=list)
    config: "SteerConfig | None" = None

    def json_extras(self) -> dict:
        return {"mean_scores": self.mean_scores()}

    def mean_scores(self) -> "list[float] | None":
        return None if self.scores is None else [sum(s) / len(s) for s in self.scores]

    def figure(self):
        means = self.mean_scores() or [0.0] * len(self.coefs)
        fig = go.Figure(go.Scatter(x=self.coefs, y=means, mode="lines+markers"))
        fig.update_layout(title=f"Steering ({self.mode} at {self.site}): mean {self.score_name or 'score'} by "
                                f"coefficient", xaxis_title=f"coefficient (x {self.vector_norm:.3g}, scale "
                                                            f"{self.scale})", yaxis_title=self.score_name, width=800)
        return fig

    def figures(self) -> list:
        return [self.figure()] if self.scores else []

    def title(self) -> str:
        return f"Steering - {self.model}"

    def page_intro(self) -> str:
        return f"{self.mode} at {self.site}, positions {self.positions}, {self._scale_text()}. " + " ".join(self.notes)

    def page_body(self) -> str:
        headers = ["prompt"] + [f"coef {c:g}" for c in self.coefs]
        rows = [[p] + [self.texts[c][i] for c in range(len(self.coefs))] for i, p in enumerate(self.prompts)]
        return table(headers, rows)

    def _scale_text(self) -> str:
        if self.mode == "ablate":
            return "coef 0 = clean, 1 = ablated"
        return f"coef x {self.vector_norm:.4g} ({self.scale})"

    def summary(self) -> str:
        lines = [f"steering | {self.model} | {self.mode} at {self.site} | positions {self.positions} | "
                 f"{self._scale_text()}"]
        means = self.mean_scores()
        for c, coef in enumerate(self.coefs):
            head = f"coef {coef:+g}" + (f"  mean {self.score_name} {means[c]:+.3f}" if means else "")
            lines.append(head)
            for p, text in zip(self.prompts, self.texts[c]):
                lines.append(f"  {p!r} -> {text!r}")
        lines += self.notes
        return "\n".join(lines)


def edits_for_length(model, d, mode: str, coef: float, layers, positions):
    """A function prompt_length -> the steering edits for one coefficient (none at coefficient 0, except clamp,
    which sets the projection even at 0). Generation needs the prompt length to tell prompt from generated tokens."""
    def make(length):
        if coef == 0 and mode != "clamp":
            return []
        return steering_edits(model, d, mode=mode, coef=coef, layers=layers, positions=positions, prompt_length=length)
    return make


@torch.no_grad()
def steer(model, prompts: Sequence[str], direction: Direction, config: "SteerConfig | None" = None, *,
          scorer=None, score_name: str = "", **overrides) -> SteeringResult:
    """Generations of each prompt at each coefficient (0 = no edit), greedy. scorer(text) -> float scores each
    continuation. ablate ignores the coefficients: it runs coef 0 (clean) and 1 (ablated). The default scale
    'resid' makes coef 1 a vector as long as the mean residual stream at the site (see `scaled`). Options: a
    SteerConfig, or its fields as keyword overrides (steer(model, prompts, d, coefs=[0, 0.25], chat=True))."""
    config = with_overrides(SteerConfig, config, overrides)
    prompts = check_prompts(prompts, "prompts")
    if not isinstance(direction, Direction):
        raise InputError("steer takes a lmscope Direction (from contrast(...).direction() or load_vector)")
    as_vector(model, direction)          # wrong size etc. -> error before any generation
    check_count("max_new_tokens", config.max_new_tokens)
    mode, layers, positions = config.mode, config.layers, config.positions
    coefs = [0.0, 1.0] if mode == "ablate" else [float(c) for c in config.coefs]
    if not coefs:
        raise InputError("give at least one coefficient")
    d = scaled(direction, config.scale)
    steering_edits(model, d, mode=mode, coef=1.0, layers=layers, positions=positions, prompt_length=1)  # checks
    rows = prompt_rows(model, prompts, config.chat)
    texts = []
    for coef in coefs:
        make = edits_for_length(model, d, mode, coef, layers, positions)
        texts.append(generate_steered(model, rows, make, max_new_tokens=config.max_new_tokens))
    scores = [[float(scorer(t)) for t in row] for row in texts] if scorer else None
    kind, own = _site_of(d)
    used = check_layers(model, layers) if layers is not None else ([own] if own is not None else [])
    site = "resid_pre.0 + every attn_out, mlp_out" if mode == "ablate" else ", ".join(f"{kind}.{x}" for x in used)
    return SteeringResult(model.spec, prompts, mode, site, used, str(positions), config.scale, coefs, float(d.norm),
                       texts, scores, score_name, config=config)
