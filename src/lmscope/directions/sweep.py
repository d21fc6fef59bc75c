"""Selection sweep over candidate directions, after Arditi et al. 2024 ("Refusal in language models is mediated by
a single direction", section 2.3 / appendix C, and their reference code).

Protocol "arditi" (the default, the paper's): the prompts are split (seeded, `sweep_split`) into BUILD prompts, from
which the contrast's difference of means r is taken, and SELECTION prompts (n_eval per side), on which every
candidate is scored; the two are disjoint (checked). For each candidate (layer, position):
    induce_score  add r at its layer, at every position, on the negative (harmless) selection prompts: the mean
                  behaviour metric itself (the refusal log-odds); the filter asks it to be > 0, as published
    induce        the same run, as a shift from the clean negative prompts toward the positive ones (for display)
    bypass        ablate r/|r| everywhere (steering.ablation_edits) on the positive selection prompts: how far the
                  metric moves toward the negative prompts' value (> 0 = ablation removes the behaviour)
    kl            the same ablation on the negative (harmless) selection prompts: mean KL(clean || ablated) of the
                  next-token distribution at the last token (lmscope.core.metrics.kl_reference_edited)
Protocol "same_prompts" (this module's behaviour before; a named variant, not the paper's): the candidates are
scored on the contrast's own (build) prompts, the induce filter is the relative shift (induce > 0), and kl is
KL(ablated || clean) on separate neutral prompts (lmscope.core.metrics.kl_edited_reference).

Shifts are signed so that "toward the other set" is positive. The behaviour metric is read at each prompt's last
token: the log-odds that the next token is one of `positive_tokens` (or log P(positive_tokens) - log
P(negative_tokens) when negative tokens are given), e.g. refusal-opening tokens for harmful requests.

Candidates are filtered (kl <= max_kl, layer < max_layer_fraction * n_layers, and the induce filter above) and
ranked by bypass (equivalently, by the lowest metric under ablation: the baseline is the same for all), as Arditi
et al. do; all scores are kept, the filter only decides the ranking. Known differences from the paper: the refusal
tokens are the caller's (`positive_tokens`), not the per-model refusal token set; r is read at the site kind and
positions of the contrast (the paper: resid_pre at the post-instruction tokens); n_eval selection prompts per side
(the paper: 32).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm import tqdm

from lmscope.core.checks import check_count, check_layers, check_prompts
from lmscope.core.config import option, with_overrides
from lmscope.core.edits import add
from lmscope.core.errors import InputError
from lmscope.core.metrics import (KL_EDITED_REFERENCE, KL_REFERENCE_EDITED, kl_edited_reference,
                                  kl_reference_edited)
from lmscope.core.runs import last_logits, prompt_rows
from lmscope.directions.contrast import Contrast, contrast as build_contrast
from lmscope.directions.steering import ablation_edits
from lmscope.directions.vector_files import Direction
from lmscope.results.base import Result
from lmscope.results.html import PALETTE, table


def token_ids(model, tokens: Sequence[str]) -> list[int]:
    """Each entry must be exactly one token (model.token_id's clear error otherwise); duplicates dropped."""
    if isinstance(tokens, str) or not tokens:
        raise InputError("tokens must be a non-empty list of strings, each exactly one token")
    return list(dict.fromkeys(model.token_id(t) for t in tokens))


def metric(logits: torch.Tensor, positive_ids: list[int], negative_ids: "list[int] | None" = None) -> torch.Tensor:
    """[n] behaviour metric from [n, vocab] logits (see the module docstring)."""
    logp = torch.log_softmax(logits.double(), -1)
    lp = torch.logsumexp(logp[:, positive_ids], -1)
    if negative_ids:
        return lp - torch.logsumexp(logp[:, negative_ids], -1)
    return lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-12))


PROTOCOLS = ("arditi", "same_prompts")


@dataclass
class SweepConfig:
    """The options of `selection_sweep` (and of `lmscope direction sweep`)."""
    layers: "list[int] | None" = option(None, "candidate layers (None: every layer of the contrast)")
    positions: "list[int] | None" = option(None, "candidate positions (None: every position of the contrast)")
    n_eval: int = option(16, "selection prompts of each set (positive, negative; same_prompts: also neutral) scored "
                             "per candidate; arditi: held out of the build prompts")
    max_kl: float = option(0.1, "filter: mean KL at most this (arditi: KL(clean || ablated) on the harmless "
                                "selection prompts; same_prompts: KL(ablated || clean) on neutral prompts)")
    max_layer_fraction: float = option(0.8, "filter: layer < this fraction of the model's layers")
    batch_size: int = option(16, "prompts per forward pass")
    protocol: str = option("arditi", "arditi: disjoint build / selection prompts, induce filter on the absolute "
                                     "metric, KL(clean || ablated) on harmless selection prompts (the paper's); "
                                     "same_prompts: the old variant", choices=PROTOCOLS)
    split_seed: int = option(0, "arditi: seed of the build / selection split")


@dataclass
class SweepResult(Result, kind="direction_sweep"):
    model: str
    site_kind: str
    layers: list[int]
    positions: list[int]
    position_tokens: list[str]
    positive_tokens: list[str]
    negative_tokens: list[str]
    clean_positive: float          # mean metric on the positive prompts, clean
    clean_negative: float
    induce: list[list[float]]      # [P][L]
    bypass: list[list[float]]
    kl: list[list[float]]
    max_kl: float
    max_layer: int                 # candidates must have layer < max_layer
    n_eval: tuple[int, int, int]   # prompts used: positive, negative, neutral
    ranking: list[dict] = field(default_factory=list)   # candidates passing the filter, best first
    notes: list[str] = field(default_factory=list)
    kl_direction: str = KL_REFERENCE_EDITED             # arditi: KL(clean || ablated); same_prompts: reverse
    config: "SweepConfig | None" = None
    protocol: str = "arditi"
    induce_score: list[list[float]] = field(default_factory=list)   # [P][L] mean metric under addition
    n_build: tuple[int, int] = (0, 0)                    # prompts the directions were built from
    kl_prompts: str = "harmless selection prompts"

    def best(self) -> "dict | None":
        return self.ranking[0] if self.ranking else None

    def figure(self):
        """induce, (arditi: the metric under addition, which the filter needs > 0), bypass and KL per layer; dotted
        lines mark the filter's thresholds."""
        scored = bool(self.induce_score) and self.protocol == "arditi"
        titles = ["induce: add r on negative prompts (toward positive > 0)"]
        titles += ["metric under addition on negative prompts (filter: > 0)"] if scored else []
        titles += ["bypass: ablate r on positive prompts (toward negative > 0)",
                   f"{self.kl_direction} (edited = ablated) on {self.kl_prompts}, last token (filter: <= "
                   f"{self.max_kl})"]
        rows = len(titles)
        fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.05, subplot_titles=titles)
        for p, (pos, tok) in enumerate(zip(self.positions, self.position_tokens)):
            name = f"pos {pos} {tok!r}"
            panels = [self.induce[p]] + ([self.induce_score[p]] if scored else []) + [self.bypass[p], self.kl[p]]
            colour = PALETTE[p % len(PALETTE)]                 # one colour per position in every panel
            for row, values in enumerate(panels, start=1):
                fig.add_trace(go.Scatter(x=self.layers, y=values, name=name, legendgroup=name,
                                         showlegend=row == 1, mode="lines+markers", line={"color": colour}), row, 1)
        if scored:
            fig.add_hline(y=0, line_dash="dot", row=2, col=1)
        fig.add_hline(y=self.max_kl, line_dash="dot", row=rows, col=1)
        fig.add_vrect(x0=self.max_layer - 0.5, x1=max(self.layers, default=self.max_layer) + 0.5,
                      fillcolor="grey", opacity=0.12, line_width=0)      # layers the filter leaves out
        fig.update_xaxes(title_text=f"layer ({self.site_kind}); shaded: layer >= {self.max_layer}, left out",
                         row=rows, col=1)
        fig.update_layout(height=300 * rows, width=950, title=f"Direction selection sweep - {self.model}")
        return fig

    def title(self) -> str:
        return f"Direction selection sweep - {self.model}"

    def page_intro(self) -> str:
        return self._intro()

    def page_body(self) -> str:
        if not self.ranking:
            return ("<p><b>No candidate passes the filter</b>, so no direction is selected (the panels below show "
                    "how far each layer is from it).</p>")
        return table(["rank", "layer", "position", "induce", "bypass", "kl"],
                     [[i + 1, c["layer"], c["position"], f"{c['induce']:+.3f}", f"{c['bypass']:+.3f}",
                       f"{c['kl']:.4f}"] for i, c in enumerate(self.ranking[:20])])

    def _intro(self) -> str:
        neg = f" vs {self.negative_tokens}" if self.negative_tokens else " (log-odds)"
        held = (f"directions built from {self.n_build[0]} + {self.n_build[1]} prompts, scored on disjoint selection "
                f"prompts" if self.protocol == "arditi" else "scored on the prompts the directions were built from "
                                                              "(variant same_prompts)")
        induce = "induce_score > 0 (metric under addition)" if self.protocol == "arditi" else "induce > 0 (shift)"
        return (f"Protocol {self.protocol}: {held}. Metric: next token in {self.positive_tokens}{neg}; clean mean "
                f"{self.clean_positive:+.3f} on {self.n_eval[0]} positive prompts, {self.clean_negative:+.3f} on "
                f"{self.n_eval[1]} negative; KL on {self.n_eval[2]} {self.kl_prompts} ({self.kl_direction}, edited = "
                f"ablated). Filter: kl <= {self.max_kl}, layer < {self.max_layer}, {induce}. " + " ".join(self.notes))

    def summary(self) -> str:
        lines = [f"selection sweep | {self.model} | {self.site_kind}", self._intro(),
                 f"{'layer':>5} " + " ".join(f"{'pos ' + str(p):>35}" for p in self.positions),
                 f"{'':>5} " + " ".join(f"{'induce':>8} {'added':>8} {'bypass':>8} {'kl':>8}" for _ in self.positions)]
        for i, layer in enumerate(self.layers):
            lines.append(f"{layer:>5} " + " ".join(
                f"{self.induce[p][i]:>+8.3f} {self.induce_score[p][i] if self.induce_score else float('nan'):>+8.3f} "
                f"{self.bypass[p][i]:>+8.3f} {self.kl[p][i]:>8.4f}" for p in range(len(self.positions))))
        lines.append("induce: shift toward the positive prompts under addition; added: the metric itself under "
                     "addition (arditi's filter: > 0); bypass: shift toward the negative prompts under ablation")
        if self.ranking:
            b = self.ranking[0]
            lines.append(f"best: layer {b['layer']} position {b['position']} (induce {b['induce']:+.3f}, metric under "
                         f"addition {b.get('induce_score', float('nan')):+.3f}, bypass "
                         f"{b['bypass']:+.3f}, kl {b['kl']:.4f}); {len(self.ranking)} candidates pass the filter")
        else:
            lines.append("no candidate passes the filter")
        return "\n".join(lines)


def sweep_split(positive: Sequence[str], negative: Sequence[str], n_select: int, seed: int = 0
                ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(build_positive, build_negative, select_positive, select_negative): a seeded shuffle of each set, its last
    n_select prompts for selection and the rest for building; equal-length sets are treated as pairs (the same rows
    go to the same side). At least 2 build prompts per side are left."""
    positive, negative = check_prompts(positive, "positive prompts"), check_prompts(negative, "negative prompts")
    check_count("n_select", n_select)
    if min(len(positive), len(negative)) < n_select + 2:
        raise InputError(f"a build / selection split needs more than n_eval + 1 = {n_select + 1} prompts per side, "
                         f"got {len(positive)} positive and {len(negative)} negative")
    gen = torch.Generator().manual_seed(seed)
    order_p = torch.randperm(len(positive), generator=gen).tolist()
    order_n = order_p if len(negative) == len(positive) else torch.randperm(len(negative), generator=gen).tolist()

    def cut(prompts, order):
        return [prompts[i] for i in order[:-n_select]], [prompts[i] for i in order[-n_select:]]
    (build_p, sel_p), (build_n, sel_n) = cut(positive, order_p), cut(negative, order_n)
    return build_p, build_n, sel_p, sel_n


def _check_sweep(model, contrast, config: SweepConfig) -> tuple[list[int], list[int]]:
    if not isinstance(contrast, Contrast):
        raise InputError("selection_sweep takes the Contrast returned by lmscope.directions.contrast")
    if contrast.model != model.spec:
        raise InputError(f"the contrast was computed on {contrast.model!r}, not {model.spec!r}")
    if config.protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {config.protocol!r}")
    layers = list(contrast.layers) if config.layers is None else check_layers(model, config.layers)
    positions = list(contrast.positions) if config.positions is None else list(config.positions)
    for layer in layers:
        for q in positions:
            contrast.index_of(layer, q)                 # one clear error for a candidate that was not extracted
    check_count("n_eval", config.n_eval)
    check_count("batch_size", config.batch_size)
    if not 0 < config.max_layer_fraction <= 1:
        raise InputError(f"max_layer_fraction must be in (0, 1], got {config.max_layer_fraction}")
    return layers, positions


def _selection_prompts(contrast, neutral, selection, config) -> tuple[list[str], list[str], list[str], str]:
    """(positive, negative, kl prompts, what the kl prompts are) the candidates are scored on."""
    n = config.n_eval
    if config.protocol == "same_prompts":
        if selection is not None:
            raise InputError("protocol same_prompts scores on the contrast's own prompts: give no selection prompts")
        neutral = check_prompts(neutral, "neutral prompts")
        return contrast.positive[:n], contrast.negative[:n], neutral[:n], "neutral prompts"
    if selection is None or len(selection) != 2:
        raise InputError("protocol arditi needs selection=(positive, negative) prompts held out of the contrast's "
                         "build prompts (lmscope.directions.sweep.sweep_split), or protocol='same_prompts'")
    pos = check_prompts(selection[0], "positive selection prompts")[:n]
    neg = check_prompts(selection[1], "negative selection prompts")[:n]
    shared = (set(pos) | set(neg)) & (set(contrast.positive) | set(contrast.negative))
    if shared:
        raise InputError(f"{len(shared)} selection prompt(s) are also build prompts of the contrast, e.g. "
                         f"{sorted(shared)[0][:60]!r}: selection must be held out")
    return pos, neg, neg, "harmless selection prompts"


@torch.no_grad()
def selection_sweep(model, contrast: Contrast, neutral: "Sequence[str] | None", positive_tokens: Sequence[str],
                    negative_tokens: "Sequence[str] | None" = None, config: "SweepConfig | None" = None, *,
                    selection: "tuple[Sequence[str], Sequence[str]] | None" = None, progress: bool = False,
                    **overrides) -> SweepResult:
    """Score every candidate direction of `contrast` (or the configured layers / positions of it); see the module
    docstring. arditi (default): `selection` = (positive, negative) prompts disjoint from the contrast's, the first
    n_eval of each used, `neutral` unused; same_prompts: the first n_eval of the contrast's prompts and of `neutral`.
    Options: a SweepConfig, or its fields as keyword overrides."""
    config = with_overrides(SweepConfig, config, overrides)
    layers, positions = _check_sweep(model, contrast, config)
    pos_prompts, neg_prompts, kl_prompts, kl_what = _selection_prompts(contrast, neutral, selection, config)
    pos_ids = token_ids(model, positive_tokens)
    neg_ids = token_ids(model, negative_tokens) if negative_tokens else None
    arditi, batch_size = config.protocol == "arditi", config.batch_size
    kl_fn, kl_direction = ((kl_reference_edited, KL_REFERENCE_EDITED) if arditi
                           else (kl_edited_reference, KL_EDITED_REFERENCE))
    rows_pos = prompt_rows(model, pos_prompts, contrast.chat)
    rows_neg = prompt_rows(model, neg_prompts, contrast.chat)
    rows_kl = prompt_rows(model, kl_prompts, contrast.chat)
    clean_pos = metric(last_logits(model, rows_pos, batch_size=batch_size), pos_ids, neg_ids)
    clean_neg = metric(last_logits(model, rows_neg, batch_size=batch_size), pos_ids, neg_ids)
    clean_kl = last_logits(model, rows_kl, batch_size=batch_size)
    toward = 1.0 if float(clean_pos.mean()) >= float(clean_neg.mean()) else -1.0
    notes = [] if toward > 0 else ["the positive prompts score LOWER than the negative ones on this metric; shifts "
                                   "are signed toward the other set all the same"]
    shape = lambda: [[0.0] * len(layers) for _ in positions]   # noqa: E731
    induce, induce_score, bypass, kl = shape(), shape(), shape(), shape()
    bar = tqdm(total=len(layers) * len(positions), unit="candidate", desc="sweep", file=sys.stderr,
               disable=not progress)
    with bar:
        for p, q in enumerate(positions):
            for i, layer in enumerate(layers):
                r = contrast.direction(layer, q).vector.to(model.device, model.dtype)
                added = metric(last_logits(model, rows_neg, [add(f"{contrast.site_kind}.{layer}", r)],
                                           batch_size=batch_size), pos_ids, neg_ids)
                ablate = ablation_edits(model, r)
                ablated = metric(last_logits(model, rows_pos, ablate, batch_size=batch_size), pos_ids, neg_ids)
                edited_kl = last_logits(model, rows_kl, ablate, batch_size=batch_size)
                induce_score[p][i] = float(added.mean())
                induce[p][i] = toward * float(added.mean() - clean_neg.mean())
                bypass[p][i] = -toward * float(ablated.mean() - clean_pos.mean())
                kl[p][i] = float(kl_fn(clean_kl, edited_kl).mean())
                bar.update()
    max_layer = int(config.max_layer_fraction * model.n_layers + 0.999999)
    induced = induce_score if arditi else induce
    ranking = [dict(layer=layer, position=q, induce=induce[p][i], induce_score=induce_score[p][i],
                    bypass=bypass[p][i], kl=kl[p][i])
               for p, q in enumerate(positions) for i, layer in enumerate(layers)
               if kl[p][i] <= config.max_kl and layer < max_layer and induced[p][i] > 0]
    ranking.sort(key=lambda c: -c["bypass"])
    return SweepResult(model.spec, contrast.site_kind, layers, positions,
                       [contrast.position_tokens[contrast.positions.index(q)] for q in positions],
                       list(positive_tokens), list(negative_tokens or []), float(clean_pos.mean()),
                       float(clean_neg.mean()), induce, bypass, kl, config.max_kl, max_layer,
                       (len(rows_pos), len(rows_neg), len(rows_kl)), ranking, notes, kl_direction=kl_direction,
                       config=config, protocol=config.protocol, induce_score=induce_score,
                       n_build=(len(contrast.positive), len(contrast.negative)), kl_prompts=kl_what)


def direction_sweep(model, positive: Sequence[str], negative: Sequence[str], neutral: "Sequence[str] | None",
                    positive_tokens: Sequence[str], negative_tokens: "Sequence[str] | None" = None,
                    config: "SweepConfig | None" = None, *, contrast_options: "dict | None" = None,
                    progress: bool = False, **overrides) -> tuple[Contrast, SweepResult]:
    """The whole selection under config.protocol: arditi splits the prompts (sweep_split), builds the contrast
    (lmscope.directions.contrast with `contrast_options`, e.g. {"chat": True}; no probe) from the build prompts only and scores it on
    the selection prompts; same_prompts builds it from every prompt and scores it on them. Returns (contrast,
    sweep): best_direction(contrast, sweep) is then a direction of the build prompts."""
    config = with_overrides(SweepConfig, config, overrides)
    selection = None
    if config.protocol == "arditi":
        positive, negative, *selection = sweep_split(positive, negative, config.n_eval, config.split_seed)
    c = build_contrast(model, positive, negative, layers=config.layers, positions=config.positions, probe=False,
                       batch_size=config.batch_size, **(contrast_options or {}))
    return c, selection_sweep(model, c, neutral, positive_tokens, negative_tokens, config, selection=selection,
                              progress=progress)


def best_direction(contrast: Contrast, sweep: SweepResult) -> Direction:
    """The top-ranked candidate's difference of means (a clear error when none passed the filter)."""
    best = sweep.best()
    if best is None:
        raise InputError("no candidate passed the sweep's filter; loosen max_kl / max_layer_fraction or pick one")
    return contrast.direction(best["layer"], best["position"])
