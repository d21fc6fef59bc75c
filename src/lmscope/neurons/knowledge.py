"""Knowledge-neuron attribution (Dai et al. 2022), re-examined on number agreement as in Niu et al. 2024.

Integrated gradients of P(target | prompt) with respect to one layer's neuron activations at the last token:
    attr_i = a_i * mean_k dP/da_i (alpha_k * a),   alpha_k = (k - 0.5) / m, k = 1..m   (baseline 0, midpoint rule)
Coarse neurons: attribution above `threshold` x the prompt's max. Refined: coarse for at least `share` of prompts.
The number-agreement experiment finds the neurons on `attribution_prompts` plural prompts and evaluates every edit
on the other prompts only (the plural prompts not used, and the singular control without their minimal-pair twins).
Each IG step runs the last token alone from resid_pre.L on a cached prefix (see integrated_gradients).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmscope.core import edits
from lmscope.core.checks import check_count, check_layers
from lmscope.core.errors import InputError
from lmscope.core.runs import on_cache, prefix_cache, supports_kv_cache
from lmscope.data.number_agreement import load_number_agreement
from lmscope.results import Result

# rows of one resumed IG pass (steps x layers of a group): fewer passes read the weights fewer times, larger ones
# recompute more layers below their own; on the default model on CPU the time was flat between ~80 and ~160 rows
# (2 prompts x 30 layers: 10 steps 3.9-4.2 s at 8-15 layers a pass, 8.4 s at 1; 20 steps 6.9 s at 5-8, 10.8 s at 1)
MAX_ROWS = 100


def integrated_gradients(model, prompt: str, target: str, *, layers=None, steps: int = 20,
                         resume: bool = True, layers_per_pass: int = 0) -> torch.Tensor:
    """Attribution of every neuron of `layers` (default: all) to P(target) at the prompt's last token.
    Returns [len(layers), d_mlp] (float32).

    The edit is at the last token and at layer L, so nothing before it changes: the tokens before the last are run
    once into a key/value cache, resid_pre of the last token is read once, and the IG steps run the last token
    alone on that cache (`model.run`'s resume). Several layers share one pass: copy g of the steps is edited at
    its own layer only (a [rows, seq] position mask) and the pass resumes at the lowest layer of the group, so the
    weights are read once per group instead of once per layer (the last token alone is one row per step: a pass
    costs reading the weights more than computing). layers_per_pass: layers per pass (0: MAX_ROWS // steps).
    resume=False runs one pass per layer over the whole prompt from the embedding (the plain path, kept for checks
    and benchmarks). The numbers are the same to float round-off (the layers below a row's own one run in its
    pass again, from the same resid_pre, in a larger batch)."""
    layers = check_layers(model, layers)
    check_count("steps", steps)
    check_count("layers_per_pass", layers_per_pass, 0)
    target_id = model.token_id(target)
    ids, _ = model.encode(prompt)
    last = ids.shape[1] - 1
    resume = resume and supports_kv_cache(model)   # the resumed path runs the last token on a cached prefix
    reads = [f"neurons.{layer}" for layer in layers] + ([f"resid_pre.{layer}" for layer in layers] if resume else [])
    clean = model.run(ids, read=reads, stop_early=True).acts
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(model.device, model.dtype)
    acts = {layer: clean[f"neurons.{layer}"][0, last] for layer in layers}            # [d_mlp] each
    if not resume:
        out = []
        for layer in layers:
            scaled = (alphas[:, None] * acts[layer][None]).detach().requires_grad_(True)   # [steps, d_mlp]
            edit = edits.replace(f"neurons.{layer}", scaled[:, None], positions=[last])
            logits = model.run(ids.expand(steps, -1), edits=[edit], grad=True,
                               forward_kwargs={"logits_to_keep": 1}).logits
            out.append((acts[layer] * _target_prob_grad(logits, target_id, scaled).mean(0)).float().detach())
        return torch.stack(out)
    with torch.no_grad():
        cache = prefix_cache(model, ids[:, :last]) if last > 0 else None
    per_pass = layers_per_pass or max(1, MAX_ROWS // steps)
    ordered, out = sorted(layers), {}
    for at in range(0, len(ordered), per_pass):
        group = ordered[at:at + per_pass]
        rows = steps * len(group)
        # copy g of the steps (rows g * steps ..) holds alpha * a of layer group[g], edited at that layer only
        scaled = torch.cat([alphas[:, None] * acts[layer][None] for layer in group]).detach().requires_grad_(True)
        grouped = []
        for g, layer in enumerate(group):
            mask = torch.zeros(len(group), steps, last + 1, dtype=torch.bool, device=ids.device)
            mask[g, :, last] = True
            grouped.append(edits.replace(f"neurons.{layer}", scaled[:, None], positions=mask.view(rows, -1)))
        start = clean[f"resid_pre.{group[0]}"].expand(rows, -1, -1)     # indexed from the cache offset on
        with torch.enable_grad(), model.trace(edits=grouped, grad=True, resume=(group[0], start)):
            logits = model.hf(input_ids=ids[:, last:].expand(rows, -1), logits_to_keep=1,
                              **on_cache(model, cache, rows)).logits
        grad = _target_prob_grad(logits, target_id, scaled)
        for g, layer in enumerate(group):
            out[layer] = (acts[layer] * grad[g * steps:(g + 1) * steps].mean(0)).float().detach()
    return torch.stack([out[layer] for layer in layers])


def _target_prob_grad(logits, target_id, scaled) -> torch.Tensor:
    """dP(target)/d(scaled) at the last position of every row (each IG step is a row)."""
    prob = torch.softmax(logits[:, -1].float(), -1)[:, target_id]
    (grad,) = torch.autograd.grad(prob.sum(), scaled)
    return grad


@dataclass
class KnowledgeNeurons(Result, kind="knowledge_neurons"):
    layers: list[int]
    prompts: list[str]
    targets: list[str]
    threshold: float
    share: float
    neurons: list[tuple[int, int]]                  # refined: (layer, index)
    mean_attribution: list[float]                   # per refined neuron, over prompts
    ranking: list[tuple[int, int]] = field(default_factory=list)   # all neurons by mean attribution, top 500

    def summary(self) -> str:
        return (f"{len(self.neurons)} refined knowledge neurons (coarse > {self.threshold} x max on >= "
                f"{self.share:.0%} of {len(self.prompts)} prompts) in layers {self.layers}: {self.neurons[:10]}")


def find_knowledge_neurons(model, prompts, targets, *, layers=None, steps: int = 20, threshold: float = 0.2,
                           share: float = 0.5) -> KnowledgeNeurons:
    """Coarse-to-refined knowledge neurons for prompts that share a fact (or a property, e.g. plural)."""
    prompts, targets = list(prompts), list(targets)
    if not prompts or len(prompts) != len(targets):
        raise InputError("give one target per prompt, and at least one prompt")
    layers = check_layers(model, layers)
    attrs = torch.stack([integrated_gradients(model, p, t, layers=layers, steps=steps)
                         for p, t in zip(prompts, targets)])                     # [n, L, d]
    coarse = attrs > threshold * attrs.flatten(1).max(1).values[:, None, None]
    votes = coarse.float().mean(0)                                              # [L, d]
    mean = attrs.mean(0)
    refined = torch.nonzero(votes >= share).tolist()
    refined.sort(key=lambda li: -float(mean[li[0], li[1]]))
    order = mean.flatten().argsort(descending=True)[:500]
    d = mean.shape[1]
    ranking = [(layers[int(i) // d], int(i) % d) for i in order]
    return KnowledgeNeurons(layers, prompts, targets, threshold, share,
                            [(layers[li], n) for li, n in refined],
                            [float(mean[li, n]) for li, n in refined], ranking)


def suppress(neurons) -> list[edits.Edit]:
    """Zero the given (layer, index) neurons (Dai et al.'s 'suppress' edit)."""
    return _per_layer(neurons, lambda site, idx: edits.zero(site, neurons=idx))


def amplify(neurons, factor: float = 2.0) -> list[edits.Edit]:
    """Scale the given (layer, index) neurons by `factor` (Dai et al.'s 'amplify' doubles them)."""
    return _per_layer(neurons, lambda site, idx: edits.scale(site, factor, neurons=idx))


def _per_layer(neurons, make):
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(index)
    return [make(f"neurons.{layer}", idx) for layer, idx in sorted(by_layer.items())]


@torch.no_grad()
def agreement_margins(model, items, edit_list=(), batch_size: int = 32) -> torch.Tensor:
    """log P(correct) - log P(wrong) at the next token, per item (objects with prompt / correct / wrong)."""
    items = list(items)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        run = model.run([it.prompt for it in chunk], edits=list(edit_list))
        logp = torch.log_softmax(run.at_last(run.logits).float(), -1)
        good = torch.tensor([model.token_id(it.correct) for it in chunk])
        bad = torch.tensor([model.token_id(it.wrong) for it in chunk])
        out.append(logp[torch.arange(len(chunk)), good] - logp[torch.arange(len(chunk)), bad])
    return torch.cat(out)


@dataclass
class AgreementExperiment(Result, kind="knowledge_neurons_agreement"):
    """Niu et al.'s test of the knowledge-neuron thesis on number agreement."""
    model: str
    attribution_prompts: int
    neurons: list[tuple[int, int]]        # refined "plural" neurons, suppressed
    n_prompts: int                        # plural prompts evaluated (none of them used for attribution)
    margin_before: float
    margin_after: float
    flip_fraction: float                  # prompts whose preferred form flips (margin changes sign)
    accuracy_before: float
    accuracy_after: float
    amplified_margin: float               # mean margin with the neurons doubled
    singular_margin_before: float         # control: singular prompts
    singular_margin_after: float
    sweep: list[dict]   # top-k neurons by attribution suppressed: k, margin, flip fraction, and the same for k random
    attribution_pairs: list[int] = field(default_factory=list)   # pair ids of the attribution prompts
    evaluated_pairs: list[int] = field(default_factory=list)     # pair ids of the evaluated prompts (disjoint)

    def title(self) -> str:
        return "Knowledge neurons: number agreement"

    def page_intro(self) -> str:
        return self.summary()

    def summary(self) -> str:
        lines = [f"number agreement | {self.model} | {len(self.neurons)} refined plural neurons from "
                 f"{self.attribution_prompts} prompts: {self.neurons[:10]}{' ...' if len(self.neurons) > 10 else ''}",
                 f"held-out plural prompts (not used for attribution): {self.n_prompts}; margin log P(correct) - log P(wrong): {self.margin_before:.3f} "
                 f"-> {self.margin_after:.3f} suppressed ({self.amplified_margin:.3f} amplified)",
                 f"accuracy {self.accuracy_before:.1%} -> {self.accuracy_after:.1%}; preferred form flips on "
                 f"{self.flip_fraction:.1%}",
                 f"control, held-out singular prompts: margin {self.singular_margin_before:.3f} -> "
                 f"{self.singular_margin_after:.3f}",
                 "suppressing the top-k neurons by attribution:"]
        lines += [f"  k={s['k']:>4}: margin {s['margin']:.3f}, flips {s['flip_fraction']:.1%}   (k random neurons: "
                  f"margin {s['random_margin']:.3f}, flips {s['random_flip_fraction']:.1%})" for s in self.sweep]
        return "\n".join(lines)

    def figure(self):
        ks = [s["k"] for s in self.sweep]
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=ks, y=[s["flip_fraction"] for s in self.sweep], name="flip fraction",
                                 mode="lines+markers"))
        fig.add_trace(go.Scatter(x=ks, y=[s["random_flip_fraction"] for s in self.sweep],
                                 name="flip fraction, random neurons", mode="lines+markers", line_dash="dot"))
        fig.add_trace(go.Scatter(x=ks, y=[s["margin"] for s in self.sweep], name="mean margin",
                                 mode="lines+markers"), secondary_y=True)
        fig.update_xaxes(type="log", title_text="top-k 'plural' neurons zeroed")
        fig.update_yaxes(range=[0, 1], title_text="share of plural prompts flipped", secondary_y=False)
        fig.update_yaxes(title_text="log P(correct) - log P(wrong)", secondary_y=True)
        fig.update_layout(title=f"How many neurons does it take? ({self.model})", height=460, width=820,
                          legend={"orientation": "h", "y": -0.28, "x": 0})        # clear of the right axis
        return fig


SWEEP = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def number_agreement_experiment(model, *, attribution_prompts: int = 16, steps: int = 10, layers=None,
                                threshold: float = 0.2, share: float = 0.5,
                                sweep=SWEEP) -> AgreementExperiment:
    check_count("attribution_prompts", attribution_prompts)
    sweep = [check_count("sweep k", k) for k in sweep]
    items = load_number_agreement()
    plural = [it for it in items if it.number == "plural"]
    if attribution_prompts >= len(plural):
        raise InputError(f"attribution_prompts {attribution_prompts} leaves no plural prompt to evaluate "
                         f"(there are {len(plural)}); use fewer")
    # attribution on an evenly spaced subset of plural prompts (deterministic); evaluation on the other plural
    # prompts, and the singular control on the pairs whose plural item was not used for attribution
    stride = max(1, len(plural) // attribution_prompts)
    chosen = plural[::stride][:attribution_prompts]
    used = {it.pair for it in chosen}
    plural = [it for it in plural if it.pair not in used]
    singular = [it for it in items if it.number == "singular" and it.pair not in used]
    kn = find_knowledge_neurons(model, [it.prompt for it in chosen], [it.correct for it in chosen], layers=layers,
                                steps=steps, threshold=threshold, share=share)
    before = agreement_margins(model, plural)
    after = agreement_margins(model, plural, suppress(kn.neurons)) if kn.neurons else before
    amplified = agreement_margins(model, plural, amplify(kn.neurons)) if kn.neurons else before
    s_before = agreement_margins(model, singular)
    s_after = agreement_margins(model, singular, suppress(kn.neurons)) if kn.neurons else s_before
    rows = []
    flips = lambda m: float(((m > 0) != (before > 0)).float().mean())  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    for k in sweep:
        m = agreement_margins(model, plural, suppress(kn.ranking[:k]))
        # control: as many random neurons from the same layers, so "k neurons flip X%" has a baseline
        pick = torch.randperm(len(kn.layers) * model.d_mlp, generator=generator)[:k].tolist()
        r = agreement_margins(model, plural, suppress([(kn.layers[i // model.d_mlp], i % model.d_mlp)
                                                       for i in pick]))
        rows.append({"k": k, "margin": float(m.mean()), "flip_fraction": flips(m),
                     "random_margin": float(r.mean()), "random_flip_fraction": flips(r)})
    return AgreementExperiment(model.spec, len(chosen), kn.neurons, len(plural), float(before.mean()),
                               float(after.mean()), float(((after > 0) != (before > 0)).float().mean()),
                               float((before > 0).float().mean()), float((after > 0).float().mean()),
                               float(amplified.mean()), float(s_before.mean()), float(s_after.mean()), rows,
                               sorted(used), sorted({it.pair for it in plural + singular}))
