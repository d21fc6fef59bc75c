"""Intervene and quantify: remove neurons (zero, mean, resample ablation) or turn them up and down (scaling), and
measure what changes in the next-token distribution. Works in one forward pass and during generation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch

from lmscope.core import edits
from lmscope.core.errors import InputError
from lmscope.core.metrics import KL_REFERENCE_EDITED, kl_reference_edited
from lmscope.core.runs import last_logits, length_groups
from lmscope.core.trace import bind_edit
from lmscope.results import Result

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
class EffectReport(Result, kind="neuron_effects"):
    """What an intervention changes in the next-token distribution at the last token of each prompt."""
    intervention: str
    layer: int
    neurons: list[int]
    n_prompts: int
    kl: list[float]                 # KL(clean || edited) per prompt, nats (see kl_direction)
    argmax_flips: list[bool]
    chosen: dict[str, dict] = field(default_factory=dict)   # token -> {"before": [...], "after": [...]}
    top_up: list[TokenShift] = field(default_factory=list)
    top_down: list[TokenShift] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)   # {"prompt", "before", "after"}
    kl_direction: str = KL_REFERENCE_EDITED                   # reference = the clean model

    @property
    def mean_kl(self) -> float:
        return sum(self.kl) / len(self.kl)

    @property
    def argmax_flip_fraction(self) -> float:
        return sum(self.argmax_flips) / len(self.argmax_flips)

    def json_extras(self) -> dict:
        return {"mean_kl": self.mean_kl, "argmax_flip_fraction": self.argmax_flip_fraction}

    def figure(self):
        shifts = self.top_up[::-1] + self.top_down
        fig = go.Figure(go.Bar(x=[t.delta_prob for t in shifts], y=[repr(t.token) for t in shifts],
                               orientation="h"))
        fig.update_layout(title=f"{self.intervention} of neurons {self.neurons}, layer {self.layer}: mean change of "
                                f"next-token probability", xaxis_title="p_edited - p_clean", height=480, width=760)
        return fig

    def summary(self) -> str:
        lines = [f"{self.intervention} of neurons {self.neurons} at layer {self.layer} on {self.n_prompts} prompts: "
                 f"mean {self.kl_direction} {self.mean_kl:.4g} nats, argmax flips {self.argmax_flip_fraction:.1%}"]
        lines.append("  rises most: " + ", ".join(f"{t.token!r} {t.delta_prob:+.4f}" for t in self.top_up[:5]))
        lines.append("  falls most: " + ", ".join(f"{t.token!r} {t.delta_prob:+.4f}" for t in self.top_down[:5]))
        for tok, v in self.chosen.items():
            before, after = sum(v["before"]) / len(v["before"]), sum(v["after"]) / len(v["after"])
            lines.append(f"  p({tok!r}): {before:.4f} -> {after:.4f}")
        return "\n".join(lines)


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
    clean_logits = last_logits(model, prompts)
    if how == "resample":   # one sampled row per prompt: the batch must be all prompts, in order (padded run)
        run = model.run(prompts, edits=[edit])
        edited_logits = run.at_last(run.logits).float().cpu()
    else:                   # the same edit for every prompt: unpadded runs grouped by length
        edited_logits = last_logits(model, prompts, [edit])
    clean, edited = torch.log_softmax(clean_logits, -1), torch.log_softmax(edited_logits, -1)
    kl = kl_reference_edited(clean_logits, edited_logits).float().clamp_min(0)
    flips = clean.argmax(-1) != edited.argmax(-1)
    delta = (edited.exp() - clean.exp()).mean(0)
    up, down = delta.topk(top), (-delta).topk(top)
    shift = lambda v, i: TokenShift(model.tokenizer.decode([i]), i, float(v))  # noqa: E731
    chosen = {}
    for tok in tokens:
        tid = model.token_id(tok)
        chosen[tok] = {"before": clean[:, tid].exp().tolist(), "after": edited[:, tid].exp().tolist()}
    gens = []
    if generate:   # the first 3 prompts in one left-padded batch, before and after (positions count per row)
        shown = [p if isinstance(p, str) else model.tokenizer.decode(p) for p in prompts[:3]]
        one = neuron_edit(model, layer, neurons, how, factor=factor, mean=mean, samples=samples, seed=seed)
        before = model.generate_batch(shown, max_new_tokens=generate)
        after = model.generate_batch(shown, [one], max_new_tokens=generate)
        gens = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(shown, before, after)]
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    return EffectReport(how if how != "scale" else f"scale x{factor:g}", layer % model.n_layers, neurons,
                        len(prompts), kl.tolist(), flips.tolist(), chosen,
                        [shift(v, i) for v, i in zip(up.values.tolist(), up.indices.tolist())],
                        [shift(-v, i) for v, i in zip(down.values.tolist(), down.indices.tolist())], gens)


@dataclass
class NeuronDoseResponse(Result, kind="neuron_dose_response"):
    """Chosen tokens' mean probability (over prompts) as the neurons are scaled by each factor."""
    layer: int
    neurons: list[int]
    factors: list[float]
    probs: dict[str, list[float]]        # token -> mean probability per factor
    kl: list[float]                      # mean KL(clean || scaled) per factor (see kl_direction)
    kl_direction: str = KL_REFERENCE_EDITED

    def title(self) -> str:
        return f"Dose-response, layer {self.layer}"

    def summary(self) -> str:
        lines = [f"neurons {self.neurons} of layer {self.layer} scaled; mean probability per factor"]
        lines += [f"  {tok!r}: " + "  ".join(f"x{f:g}: {p:.4f}" for f, p in zip(self.factors, ps))
                  for tok, ps in self.probs.items()]
        lines.append(f"  mean {self.kl_direction}: " + "  ".join(f"x{f:g}: {k:.4g}" for f, k in
                                                               zip(self.factors, self.kl)))
        return "\n".join(lines)

    def figure(self):
        fig = go.Figure()
        for tok, ps in self.probs.items():
            fig.add_trace(go.Scatter(x=self.factors, y=ps, mode="lines+markers", name=repr(tok)))
        fig.add_vline(x=1.0, line_dash="dot", annotation_text="clean")
        fig.update_layout(title=f"Dose-response: neurons {self.neurons} of layer {self.layer} scaled",
                          xaxis_title="scale factor (1 = clean, 0 = zero-ablated)", yaxis_title="mean probability",
                          height=420, width=760)
        return fig


NEXT = "next token (per prompt)"


@torch.no_grad()
def neuron_dose_response(model, layer: int, neurons, prompts, tokens=(), factors=(-2, -1, 0, 0.5, 1, 2, 4, 8), *,
                  next_tokens=None, resume: bool = True) -> NeuronDoseResponse:
    """Sweep the scale factor; report chosen tokens' mean probabilities at each prompt's last token.
    `tokens`: strings (one token each) or ids, followed on every prompt. `next_tokens`: one token id per prompt
    (e.g. what actually followed in the corpus), reported as one curve named NEXT. resume: the layers below `layer`
    run once and every factor resumes from their resid_pre (the same numbers bit for bit as resume=False, which
    runs every factor from the embedding)."""
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
    clean_logits = last_logits(model, prompts)
    probs = {n: [] for n in names + ([NEXT] if next_tokens is not None else [])}
    kls = []
    rows = torch.arange(len(prompts))
    scaled = None
    for f in factors:
        edit = neuron_edit(model, layer, neurons, "scale", factor=f)   # checks the layer before anything runs
        if resume and scaled is None:
            scaled = _resumed_last_logits(model, prompts, layer)
        logits = scaled([edit]) if resume else last_logits(model, prompts, [edit])
        logp = torch.log_softmax(logits, -1)
        kls.append(float(kl_reference_edited(clean_logits, logits).clamp_min(0).mean()))
        for n, i in zip(names, ids):
            probs[n].append(float(logp[:, i].exp().mean()))
        if next_tokens is not None:
            probs[NEXT].append(float(logp[rows, torch.tensor(next_tokens)].exp().mean()))
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    return NeuronDoseResponse(layer % model.n_layers, neurons, factors, probs, kls)


def _resumed_last_logits(model, prompts, layer: int):
    """A function edits -> [n, vocab] last-token logits (core.runs.last_logits' batches and arithmetic) whose
    forwards resume at resid_pre.layer, computed once per batch here."""
    site = f"resid_pre.{layer % model.n_layers}"
    groups = [(idx, rows, model.run(rows, read=[site], stop_early=True).acts[site])
              for idx, rows in length_groups(model, prompts)]

    def logits(edits) -> torch.Tensor:
        out = torch.empty(len(prompts), model.vocab_size)
        for idx, rows, start in groups:
            run = model.run(rows, edits=edits, resume=(layer % model.n_layers, start),
                            forward_kwargs={"logits_to_keep": 1})
            out[idx] = run.logits[:, -1].float().cpu()
        return out
    return logits
