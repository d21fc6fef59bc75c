"""Selection sweep over candidate directions, generalised from Arditi et al. 2024 (section 2.3 / appendix C).

For each candidate (layer, position) of a `Contrast` (its difference of means r):
    induce   add r at its layer, at every position, on NEGATIVE prompts: how far the behaviour metric moves
             toward the positive prompts' value (> 0 = it induces the behaviour)
    bypass   ablate r/|r| everywhere (steering.ablation_edits) on POSITIVE prompts: how far the metric moves toward
             the negative prompts' value (> 0 = ablation removes the behaviour)
    kl       the same ablation on NEUTRAL prompts: mean KL(ablated || clean) of the next-token distribution at
             their last token (what the ablation costs where the behaviour is not in play; KL(edited || reference),
             lmscope.core.metrics.kl_edited_reference)
Both shifts are signed so that "toward the other set" is positive. The behaviour metric is read at each prompt's
last token: the log-odds that the next token is one of `positive_tokens` (or log P(positive_tokens) -
log P(negative_tokens) when negative tokens are given), e.g. refusal-opening tokens for harmful requests.

Candidates are filtered (kl <= max_kl, layer < max_layer_fraction * n_layers, induce > 0) and ranked by bypass,
as Arditi et al. do; all scores are kept, the filter only decides the ranking.
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
from lmscope.core.metrics import KL_EDITED_REFERENCE, kl_edited_reference
from lmscope.core.runs import last_logits, prompt_rows
from lmscope.directions.contrast import Contrast
from lmscope.directions.steering import ablation_edits
from lmscope.directions.vector_files import Direction
from lmscope.results.base import Result
from lmscope.results.html import table


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


@dataclass
class SweepConfig:
    """The options of `selection_sweep` (and of `lmscope direction sweep`)."""
    layers: "list[int] | None" = option(None, "candidate layers (None: every layer of the contrast)")
    positions: "list[int] | None" = option(None, "candidate positions (None: every position of the contrast)")
    n_eval: int = option(16, "prompts of each set (positive, negative, neutral) scored per candidate")
    max_kl: float = option(0.1, "filter: mean KL(ablated || clean) on neutral prompts at most this")
    max_layer_fraction: float = option(0.8, "filter: layer < this fraction of the model's layers")
    batch_size: int = option(16, "prompts per forward pass")


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
    kl_direction: str = KL_EDITED_REFERENCE             # kl is KL(ablated || clean)
    config: "SweepConfig | None" = None

    def best(self) -> "dict | None":
        return self.ranking[0] if self.ranking else None

    def figure(self):
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=(
            "induce: add r on negative prompts (toward positive > 0)",
            "bypass: ablate r on positive prompts (toward negative > 0)",
            f"{self.kl_direction} (ablated || clean) on neutral prompts, last token"))
        for p, (pos, tok) in enumerate(zip(self.positions, self.position_tokens)):
            name = f"pos {pos} {tok!r}"
            for row, values in enumerate((self.induce[p], self.bypass[p], self.kl[p]), start=1):
                fig.add_trace(go.Scatter(x=self.layers, y=values, name=name, legendgroup=name,
                                         showlegend=row == 1, mode="lines+markers"), row, 1)
        fig.add_hline(y=self.max_kl, line_dash="dot", row=3, col=1)
        fig.update_xaxes(title_text=f"layer ({self.site_kind})", row=3, col=1)
        fig.update_layout(height=900, width=950, title=f"Direction selection sweep - {self.model}")
        return fig

    def title(self) -> str:
        return f"Direction selection sweep - {self.model}"

    def page_intro(self) -> str:
        return self._intro()

    def page_body(self) -> str:
        return table(["rank", "layer", "position", "induce", "bypass", "kl"],
                     [[i + 1, c["layer"], c["position"], f"{c['induce']:+.3f}", f"{c['bypass']:+.3f}",
                       f"{c['kl']:.4f}"] for i, c in enumerate(self.ranking[:20])])

    def _intro(self) -> str:
        neg = f" vs {self.negative_tokens}" if self.negative_tokens else " (log-odds)"
        return (f"Metric: next token in {self.positive_tokens}{neg}; clean mean {self.clean_positive:+.3f} on "
                f"{self.n_eval[0]} positive prompts, {self.clean_negative:+.3f} on {self.n_eval[1]} negative; KL on "
                f"{self.n_eval[2]} neutral prompts ({self.kl_direction}, edited = ablated). Filter: kl <= "
                f"{self.max_kl}, layer < {self.max_layer}, induce > 0. " + " ".join(self.notes))

    def summary(self) -> str:
        lines = [f"selection sweep | {self.model} | {self.site_kind}", self._intro(),
                 f"{'layer':>5} " + " ".join(f"{'pos ' + str(p):>26}" for p in self.positions),
                 f"{'':>5} " + " ".join(f"{'induce':>8} {'bypass':>8} {'kl':>8}" for _ in self.positions)]
        for i, layer in enumerate(self.layers):
            lines.append(f"{layer:>5} " + " ".join(f"{self.induce[p][i]:>+8.3f} {self.bypass[p][i]:>+8.3f} "
                                                   f"{self.kl[p][i]:>8.4f}" for p in range(len(self.positions))))
        if self.ranking:
            b = self.ranking[0]
            lines.append(f"best: layer {b['layer']} position {b['position']} (induce {b['induce']:+.3f}, bypass "
                         f"{b['bypass']:+.3f}, kl {b['kl']:.4f}); {len(self.ranking)} candidates pass the filter")
        else:
            lines.append("no candidate passes the filter")
        return "\n".join(lines)


@torch.no_grad()
def selection_sweep(model, contrast: Contrast, neutral: Sequence[str], positive_tokens: Sequence[str],
                    negative_tokens: "Sequence[str] | None" = None, config: "SweepConfig | None" = None, *,
                    progress: bool = False, **overrides) -> SweepResult:
    """Score every candidate direction of `contrast` (or the configured layers / positions of it); see the
    docstring. The first `n_eval` prompts of each set are used (the neutral ones with the contrast's chat
    setting). Options: a SweepConfig, or its fields as keyword overrides."""
    config = with_overrides(SweepConfig, config, overrides)
    if not isinstance(contrast, Contrast):
        raise InputError("selection_sweep takes the Contrast returned by lmscope.directions.contrast")
    if contrast.model != model.spec:
        raise InputError(f"the contrast was computed on {contrast.model!r}, not {model.spec!r}")
    neutral = check_prompts(neutral, "neutral prompts")
    pos_ids = token_ids(model, positive_tokens)
    neg_ids = token_ids(model, negative_tokens) if negative_tokens else None
    layers = list(contrast.layers) if config.layers is None else check_layers(model, config.layers)
    positions = list(contrast.positions) if config.positions is None else list(config.positions)
    for layer in layers:
        for q in positions:
            contrast.index_of(layer, q)                 # one clear error for a candidate that was not extracted
    n_eval, max_kl, batch_size = config.n_eval, config.max_kl, config.batch_size
    check_count("n_eval", n_eval)
    check_count("batch_size", batch_size)
    max_layer_fraction = config.max_layer_fraction
    if not 0 < max_layer_fraction <= 1:
        raise InputError(f"max_layer_fraction must be in (0, 1], got {max_layer_fraction}")
    rows_pos = prompt_rows(model, contrast.positive[:n_eval], contrast.chat)
    rows_neg = prompt_rows(model, contrast.negative[:n_eval], contrast.chat)
    rows_neu = prompt_rows(model, neutral[:n_eval], contrast.chat)
    clean_pos = metric(last_logits(model, rows_pos, batch_size=batch_size), pos_ids, neg_ids)
    clean_neg = metric(last_logits(model, rows_neg, batch_size=batch_size), pos_ids, neg_ids)
    clean_neu = last_logits(model, rows_neu, batch_size=batch_size)
    toward = 1.0 if float(clean_pos.mean()) >= float(clean_neg.mean()) else -1.0
    notes = [] if toward > 0 else ["the positive prompts score LOWER than the negative ones on this metric; shifts "
                                   "are signed toward the other set all the same"]
    induce = [[0.0] * len(layers) for _ in positions]
    bypass = [[0.0] * len(layers) for _ in positions]
    kl = [[0.0] * len(layers) for _ in positions]
    bar = None
    if progress:
        bar = tqdm(total=len(layers) * len(positions), unit="candidate", desc="sweep", file=sys.stderr)
    try:
        for p, q in enumerate(positions):
            for i, layer in enumerate(layers):
                r = contrast.direction(layer, q).vector.to(model.device, model.dtype)
                added = metric(last_logits(model, rows_neg, [add(f"{contrast.site_kind}.{layer}", r)],
                                           batch_size=batch_size), pos_ids, neg_ids)
                ablate = ablation_edits(model, r)
                ablated = metric(last_logits(model, rows_pos, ablate, batch_size=batch_size), pos_ids, neg_ids)
                neu = last_logits(model, rows_neu, ablate, batch_size=batch_size)
                induce[p][i] = toward * float(added.mean() - clean_neg.mean())
                bypass[p][i] = -toward * float(ablated.mean() - clean_pos.mean())
                kl[p][i] = float(kl_edited_reference(clean_neu, neu).mean())
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
    max_layer = int(max_layer_fraction * model.n_layers + 0.999999)
    ranking = [dict(layer=layer, position=q, induce=induce[p][i], bypass=bypass[p][i], kl=kl[p][i])
               for p, q in enumerate(positions) for i, layer in enumerate(layers)
               if kl[p][i] <= max_kl and layer < max_layer and induce[p][i] > 0]
    ranking.sort(key=lambda c: -c["bypass"])
    return SweepResult(model.spec, contrast.site_kind, layers, positions,
                       [contrast.position_tokens[contrast.positions.index(q)] for q in positions],
                       list(positive_tokens), list(negative_tokens or []), float(clean_pos.mean()),
                       float(clean_neg.mean()), induce, bypass, kl, max_kl, max_layer,
                       (len(rows_pos), len(rows_neg), len(rows_neu)), ranking, notes, config=config)


def best_direction(contrast: Contrast, sweep: SweepResult) -> Direction:
    """The top-ranked candidate's difference of means (a clear error when none passed the filter)."""
    best = sweep.best()
    if best is None:
        raise InputError("no candidate passed the sweep's filter; loosen max_kl / max_layer_fraction or pick one")
    return contrast.direction(best["layer"], best["position"])
