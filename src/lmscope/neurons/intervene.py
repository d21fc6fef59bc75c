"""Intervene and quantify: remove neurons (zero, mean, resample ablation) or turn them up and down (scaling), and
measure what changes in the next-token distribution. Works in one forward pass and during generation."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lmscope.core import edits
from lmscope.core.errors import InputError
from lmscope.results import save_result, write_atomic, write_page
from lmscope.core.trace import bind_edit

HOW = ("zero", "mean", "resample", "scale")


def neuron_edit(model, layer: int, neurons, how: str = "zero", *, factor: float | None = None,
                mean: torch.Tensor | None = None, samples: torch.Tensor | None = None, batch: int = 1,
                seed: int = 0) -> edits.Edit:
    """The edit for one intervention on `neurons` of `layer` (ints; all positions).

    zero: set to 0. scale: multiply by `factor` (negative flips the sign). mean: set to `mean` (the layer's mean
    activation over a reference text set, e.g. NeuronRecords.mean(layer)). resample: set to the activation of a
    random token of a reference set (rows of `samples`, e.g. NeuronRecords.samples(layer)), one row per prompt.
    """
    edit = _make_edit(model, f"neurons.{layer}", list([neurons] if isinstance(neurons, int) else neurons), how,
                      factor, mean, samples, batch, seed)
    bind_edit(model, edit)  # check layer, neuron indices, value shape and dtype now: one clear error, early
    return edit


def _make_edit(model, site, neurons, how, factor, mean, samples, batch, seed) -> edits.Edit:
    if how not in HOW:
        raise InputError(f"unknown intervention '{how}'; one of {', '.join(HOW)}")
    if how == "zero":
        return edits.zero(site, neurons=neurons)
    if how == "scale":
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor):
            raise InputError(f"scale needs a finite number as factor, got {factor!r}")
        return edits.scale(site, float(factor), neurons=neurons)
    if how == "mean":
        if mean is None:
            raise InputError("mean ablation needs the layer's mean activation (NeuronRecords.mean(layer))")
        return edits.mean_ablate(site, mean.to(model.dtype), neurons=neurons)
    if samples is None or len(samples) == 0:
        raise InputError("resample ablation needs sampled activations (NeuronRecords.samples(layer))")
    rows = torch.randint(len(samples), (batch,), generator=torch.Generator().manual_seed(seed))
    return edits.replace(site, samples[rows][:, None].to(model.dtype), neurons=neurons)  # [batch, 1, d_mlp]


@dataclass
class TokenShift:
    token: str
    id: int
    delta_prob: float   # mean over prompts of p_edited - p_clean


@dataclass
class EffectReport:
    """What an intervention changes in the next-token distribution at the last token of each prompt."""
    intervention: str
    layer: int
    neurons: list[int]
    n_prompts: int
    kl: list[float]                 # KL(clean || edited) per prompt, nats
    argmax_flips: list[bool]
    chosen: dict[str, dict] = field(default_factory=dict)   # token -> {"before": [...], "after": [...]}
    top_up: list[TokenShift] = field(default_factory=list)
    top_down: list[TokenShift] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)   # {"prompt", "before", "after"}

    @property
    def mean_kl(self) -> float:
        return sum(self.kl) / len(self.kl)

    @property
    def argmax_flip_fraction(self) -> float:
        return sum(self.argmax_flips) / len(self.argmax_flips)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(mean_kl=self.mean_kl, argmax_flip_fraction=self.argmax_flip_fraction)
        return out

    def save(self, path, *, overwrite: bool = False) -> Path:
        return write_atomic(path, json.dumps(self.to_json(), indent=1))

    def summary(self) -> str:
        lines = [f"{self.intervention} of neurons {self.neurons} at layer {self.layer} on {self.n_prompts} prompts: "
                 f"mean KL {self.mean_kl:.4g} nats, argmax flips {self.argmax_flip_fraction:.1%}"]
        lines.append("  rises most: " + ", ".join(f"{t.token!r} {t.delta_prob:+.4f}" for t in self.top_up[:5]))
        lines.append("  falls most: " + ", ".join(f"{t.token!r} {t.delta_prob:+.4f}" for t in self.top_down[:5]))
        for tok, v in self.chosen.items():
            before, after = sum(v["before"]) / len(v["before"]), sum(v["after"]) / len(v["after"])
            lines.append(f"  p({tok!r}): {before:.4f} -> {after:.4f}")
        return "\n".join(lines)


def _last_logits(model, prompts, edit_list) -> torch.Tensor:
    run = model.run(prompts, edits=edit_list)
    return run.at_last(run.logits).float()


@torch.no_grad()
def neuron_effects(model, layer: int, neurons, prompts, how: str = "zero", *, factor: float | None = None,
                   mean: torch.Tensor | None = None, samples: torch.Tensor | None = None, tokens=(),
                   generate: int = 0, top: int = 10, seed: int = 0) -> EffectReport:
    """Intervene on neurons and report the change of the next-token distribution at each prompt's last token.
    `prompts`: texts or lists of token ids. `tokens`: strings (one token each) whose probabilities to follow.
    `generate`: greedy tokens to generate before and after, for the first 3 prompts."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("empty prompt set: give at least one prompt")
    edit = neuron_edit(model, layer, neurons, how, factor=factor, mean=mean, samples=samples, batch=len(prompts),
                       seed=seed)
    clean = torch.log_softmax(_last_logits(model, prompts, []), -1)
    edited = torch.log_softmax(_last_logits(model, prompts, [edit]), -1)
    kl = (clean.exp() * (clean - edited)).sum(-1).clamp_min(0)
    flips = clean.argmax(-1) != edited.argmax(-1)
    delta = (edited.exp() - clean.exp()).mean(0)
    up, down = delta.topk(top), (-delta).topk(top)
    shift = lambda v, i: TokenShift(model.tokenizer.decode([i]), i, float(v))  # noqa: E731
    chosen = {}
    for tok in tokens:
        tid = model.token_id(tok)
        chosen[tok] = {"before": clean[:, tid].exp().tolist(), "after": edited[:, tid].exp().tolist()}
    gens = []
    for prompt in prompts[:3] if generate else []:
        if not isinstance(prompt, str):
            prompt = model.tokenizer.decode(prompt)
        one = neuron_edit(model, layer, neurons, how, factor=factor, mean=mean, samples=samples, seed=seed)
        gens.append({"prompt": prompt, "before": model.generate(prompt, max_new_tokens=generate).text,
                     "after": model.generate(prompt, [one], max_new_tokens=generate).text})
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    return EffectReport(how if how != "scale" else f"scale x{factor:g}", layer % model.n_layers, neurons,
                        len(prompts), kl.tolist(), flips.tolist(), chosen,
                        [shift(v, i) for v, i in zip(up.values.tolist(), up.indices.tolist())],
                        [shift(-v, i) for v, i in zip(down.values.tolist(), down.indices.tolist())], gens)


@dataclass
class DoseResponse:
    """Chosen tokens' mean probability (over prompts) as the neurons are scaled by each factor."""
    layer: int
    neurons: list[int]
    factors: list[float]
    probs: dict[str, list[float]]        # token -> mean probability per factor
    kl: list[float]                      # mean KL(clean || scaled) per factor

    def to_json(self) -> dict:
        return asdict(self)

    def figure(self):
        import plotly.graph_objects as go
        fig = go.Figure()
        for tok, ps in self.probs.items():
            fig.add_trace(go.Scatter(x=self.factors, y=ps, mode="lines+markers", name=repr(tok)))
        fig.add_vline(x=1.0, line_dash="dot", annotation_text="clean")
        fig.update_layout(title=f"Dose-response: neurons {self.neurons} of layer {self.layer} scaled",
                          xaxis_title="scale factor (1 = clean, 0 = zero-ablated)", yaxis_title="mean probability",
                          height=420, width=760)
        return fig

    def save(self, path, *, overwrite: bool = False) -> Path:
        return save_result(path, overwrite, self.to_json, self._write_html)

    def _write_html(self, path: Path) -> Path:
        return write_page(path, self.figure(), f"Dose-response, layer {self.layer}")


NEXT = "next token (per prompt)"


@torch.no_grad()
def dose_response(model, layer: int, neurons, prompts, tokens=(), factors=(-2, -1, 0, 0.5, 1, 2, 4, 8), *,
                  next_tokens=None) -> DoseResponse:
    """Sweep the scale factor; report chosen tokens' mean probabilities at each prompt's last token.
    `tokens`: strings (one token each) or ids, followed on every prompt. `next_tokens`: one token id per prompt
    (e.g. what actually followed in the corpus), reported as one curve named NEXT."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("empty prompt set: give at least one prompt")
    try:
        factors = [float(f) for f in factors]
    except (TypeError, ValueError):
        raise InputError(f"factors must be numbers, got {factors!r}") from None
    if not factors or not all(math.isfinite(f) for f in factors):
        raise InputError(f"factors must be finite numbers, got {factors!r}")
    if next_tokens is not None and len(next_tokens) != len(prompts):
        raise InputError("give one next token per prompt")
    ids = [t if isinstance(t, int) else model.token_id(t) for t in tokens]
    names = [model.tokenizer.decode([i]) if isinstance(t, int) else t for t, i in zip(tokens, ids)]
    clean = torch.log_softmax(_last_logits(model, prompts, []), -1)
    probs = {n: [] for n in names + ([NEXT] if next_tokens is not None else [])}
    kls = []
    rows = torch.arange(len(prompts))
    for f in factors:
        logp = torch.log_softmax(_last_logits(model, prompts, [neuron_edit(model, layer, neurons, "scale",
                                                                           factor=f)]), -1)
        kls.append(float((clean.exp() * (clean - logp)).sum(-1).clamp_min(0).mean()))
        for n, i in zip(names, ids):
            probs[n].append(float(logp[:, i].exp().mean()))
        if next_tokens is not None:
            probs[NEXT].append(float(logp[rows, torch.tensor(next_tokens)].exp().mean()))
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    return DoseResponse(layer % model.n_layers, neurons, factors, probs, kls)
