"""Contrastive directions: the difference of mean activations at a site between two prompt sets.

    d = mean(act(positive prompts)) - mean(act(negative prompts))        at one token per prompt

The token is the last real token of each prompt (padding is ignored), or a chosen `position`: an int counted over
each prompt's own tokens (negative counts back from its last real token, -1 = the last). Sums accumulate in float64
one batch at a time (memory does not grow with the number of prompts); the returned vector has the model's dtype,
ready for `lmscope.add` / `project_out`.

`contrast` does it for every layer and several token positions at once (one forward pass per batch reads every
layer), and adds two other estimates of the same direction, with held-out accuracies:
    - PCA of the paired differences pos_i - neg_i (uncentred, so the shared offset counts, as in Zou et al. 2023);
    - a logistic probe (`lmscope.probes.fit_probe`) fitted on a seeded training split, tested on the rest;
    - the difference of means of the training split, thresholded half-way between the two class means.
With `chat=True` each prompt is wrapped in the tokenizer's chat template (with the assistant turn opened), so
positions -k..-1 are the template tokens after the user's message (the "post-instruction" tokens of Arditi et
al. 2024).

`concept_vector` is the concept vector of Lindsey 2025 ("Emergent introspective awareness"): the activation at the
last token of "Tell me about {word}" minus the mean over baseline words.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmscope.core.checks import check_count, check_layers, check_prompts
from lmscope.core.config import option, with_overrides
from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256
from lmscope.core.runs import mean_activations, prompt_rows, token_index
from lmscope.directions.probes import fit_probe
from lmscope.directions.vector_files import Direction
from lmscope.results.base import Result
from lmscope.results.html import PALETTE


def difference_of_means(model, positive: Sequence[str], negative: Sequence[str], site, *,
                        position: "int | None" = None, batch_size: int = 32) -> Direction:
    """mean(positive) - mean(negative) at `site` (one site, e.g. 'resid_post.12')."""
    positive = check_prompts(positive, "positive prompts")
    negative = check_prompts(negative, "negative prompts")
    name = str(model.site(site))
    pos = mean_activations(model, positive, [name], position=position, batch_size=batch_size)[name]
    neg = mean_activations(model, negative, [name], position=position, batch_size=batch_size)[name]
    diff = pos - neg
    return Direction(diff.to(model.dtype), name, position, len(positive), len(negative), float(diff.norm()),
                     "dom", model.spec, prompt_hash(positive, negative), config_sha256=config_sha256(model))


def concept_vector(model, word: str, baselines: Sequence[str], layer: int, template: str = "Tell me about {}",
                   *, site_kind: str = "resid_post") -> Direction:
    """Lindsey 2025: act(template.format(word)) - mean over b in baselines of act(template.format(b)), at the last
    token, at `site_kind.layer` (the residual stream after block `layer` by default)."""
    if not isinstance(word, str) or not word.strip():
        raise InputError("concept word is empty")
    baselines = check_prompts(baselines, "baseline words")
    if "{}" not in template:
        raise InputError(f"template must contain '{{}}' where the word goes, got {template!r}")
    return difference_of_means(model, [template.format(word)], [template.format(b) for b in baselines],
                               f"{site_kind}.{layer}")


# ---------------------------------------------------------------------------------------------------------------
# Every layer, several positions, three estimates, held-out accuracy.

SITE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def prompt_hash(positive: Sequence[str], negative: Sequence[str], chat: bool = False) -> str:
    """sha256 of the two prompt sets (and whether the chat template wrapped them): names the data a vector came from."""
    payload = json.dumps({"positive": list(positive), "negative": list(negative), "chat": bool(chat)},
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class ContrastConfig:
    """The options of `contrast` (and of `lmscope direction extract`)."""
    layers: "list[int] | None" = option(None, "layers (None: every layer)")
    site_kind: str = option("resid_post", "the d_model-wide site read at every layer", choices=list(SITE_KINDS))
    positions: "list[int] | None" = option(None, "token positions, e.g. -3,-2,-1 (None: the last token)")
    last_k: "int | None" = option(None, "each of the last K tokens instead (chat: the template tokens)")
    chat: bool = option(False, "wrap prompts in the tokenizer's chat template")
    probe: bool = option(True, "fit the held-out probe and the held-out difference of means")
    test_fraction: float = option(0.25, "share of the prompts held out for the accuracies")
    seed: int = option(0, "the train/test split")
    l2: float = option(1e-2, "the probe's L2 penalty")
    batch_size: int = option(32, "prompts per forward pass")


@dataclass
class Contrast(Result, kind="contrast"):
    """Directions between two prompt sets at every layer and chosen positions. Tensors are [position, layer, d]
    (float64). Its JSON holds every field (the tensors too, so a saved contrast gives its directions back) and,
    for readers, per-layer norms, accuracies and cosines (null where a method was not run: pca on unpaired sets,
    the probes with probe=False)."""
    model: str
    site_kind: str
    layers: list[int]
    positions: list[int]              # counted over each prompt's tokens; negative = back from its last token
    position_tokens: list[str]        # the token at each position in the first positive prompt (for display)
    chat: bool
    positive: list[str]
    negative: list[str]
    prompt_sha256: str
    dom: torch.Tensor                 # float64 difference of means over all prompts
    resid_norm: torch.Tensor          # [P, L] float64 mean |activation| over all prompts
    pca: "torch.Tensor | None"        # float64 unit first principal axis of pos_i - neg_i, sign of dom; None unpaired
    probe_direction: "torch.Tensor | None"   # float64, raw activation space, fitted on the training split
    probe_accuracy: "torch.Tensor | None"    # [P, L] held-out accuracy of the probe
    probe_train_accuracy: "torch.Tensor | None"
    dom_accuracy: "torch.Tensor | None"      # [P, L] held-out accuracy of the training-split difference of means
    n_train: int = 0
    n_test: int = 0
    seed: int = 0
    config_sha256: "str | None" = None   # the model's config hash: vector files made from it are checked with it
    config: "ContrastConfig | None" = None

    @classmethod
    def from_json(cls, data: dict) -> "Contrast":
        """The base reader, with the tensors read back in float64 (as computed), not the default float32."""
        out = super().from_json(data)
        for name in ("dom", "resid_norm", "pca", "probe_direction", "probe_accuracy", "probe_train_accuracy",
                     "dom_accuracy"):
            if data.get(name) is not None:
                setattr(out, name, torch.tensor(data[name], dtype=torch.float64))
        return out

    # -- directions ----------------------------------------------------------------------------------------------
    def index_of(self, layer: int, position: int) -> tuple[int, int]:
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not extracted (layers: {_ranges(self.layers)})")
        if position not in self.positions:
            raise InputError(f"position {position} was not extracted (positions: {self.positions})")
        return self.positions.index(position), self.layers.index(layer)

    def direction(self, layer: int, position: int = -1, method: str = "dom", *, dtype=None) -> Direction:
        """One direction as a `Direction`. dom: the difference of means itself. pca / probe: their unit direction
        times the class separation along it (dom . unit), so all three have comparable sizes."""
        p, i = self.index_of(layer, position)
        dom = self.dom[p, i]
        if method == "dom":
            vec = dom
        elif method in ("pca", "probe"):
            source = self.pca if method == "pca" else self.probe_direction
            if source is None:
                raise InputError(f"no {method} direction here: " + ("the prompt sets are not paired (equal length)"
                                 if method == "pca" else "the probe was not fitted (probe=False)"))
            unit = source[p, i] / source[p, i].norm()
            vec = unit * (dom @ unit)
        else:
            raise InputError(f"method must be dom, pca or probe, got {method!r}")
        return Direction(vec.to(dtype or torch.float32), f"{self.site_kind}.{layer}", position, len(self.positive),
                         len(self.negative), float(vec.norm()), method, self.model, self.prompt_sha256,
                         float(self.resid_norm[p, i]), self.config_sha256)

    def cosines(self, method: str) -> "torch.Tensor | None":
        """[P, L] cosine between the difference of means and the pca or probe direction."""
        other = self.pca if method == "pca" else self.probe_direction
        if other is None:
            return None
        return torch.nn.functional.cosine_similarity(self.dom, other, dim=-1)

    # -- report ----------------------------------------------------------------------------------------------------
    def json_extras(self) -> dict:
        return {"n_positive": len(self.positive), "n_negative": len(self.negative),
                "dom_norm": self.dom.norm(dim=-1), "cos_dom_pca": self.cosines("pca"),
                "cos_dom_probe": self.cosines("probe")}

    def figure(self):
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                            subplot_titles=("held-out accuracy (probe: solid, difference of means: dotted)",
                                            "|difference of means| / mean |activation|",
                                            "cosine with the difference of means (pca: solid, probe: dotted)"))
        rel = self.dom.norm(dim=-1) / self.resid_norm
        for p, (pos, tok) in enumerate(zip(self.positions, self.position_tokens)):
            name, colour = f"pos {pos} {tok!r}", PALETTE[p % len(PALETTE)]    # one colour per position, all panels
            if self.probe_accuracy is not None:
                fig.add_trace(go.Scatter(x=self.layers, y=self.probe_accuracy[p].tolist(), name=name,
                                         legendgroup=name, line={"color": colour}), 1, 1)
                fig.add_trace(go.Scatter(x=self.layers, y=self.dom_accuracy[p].tolist(), name=name, legendgroup=name,
                                         line={"dash": "dot", "color": colour}, showlegend=False), 1, 1)
            fig.add_trace(go.Scatter(x=self.layers, y=rel[p].tolist(), name=name, legendgroup=name,
                                     line={"color": colour}, showlegend=self.probe_accuracy is None), 2, 1)
            for method, dash in (("pca", None), ("probe", "dot")):
                cos = self.cosines(method)
                if cos is not None:
                    fig.add_trace(go.Scatter(x=self.layers, y=cos[p].tolist(), name=name, legendgroup=name,
                                             line={"dash": dash, "color": colour}, showlegend=False), 3, 1)
        fig.update_xaxes(title_text=f"layer ({self.site_kind})", row=3, col=1)
        if len(self.layers) <= 40:
            fig.update_xaxes(tickvals=list(self.layers))                  # whole layers only
        fig.update_layout(height=900, width=950, title=f"Contrastive directions - {self.model}: "
                          f"{len(self.positive)} vs {len(self.negative)} prompts"
                          + (" (chat template)" if self.chat else ""))
        return fig

    def title(self) -> str:
        return f"Contrastive directions - {self.model}"

    def page_intro(self) -> str:
        return (f"Positive: {self.positive[0]!r} ... ({len(self.positive)}); negative: "
                f"{self.negative[0]!r} ... ({len(self.negative)}). Held-out split: {self.n_train} train / "
                f"{self.n_test} test prompts (seed {self.seed}). Prompt sets sha256 {self.prompt_sha256[:16]}.")

    def summary(self, position: "int | None" = None) -> str:
        position = self.positions[-1] if position is None else position
        p = self.positions.index(position)
        lines = [f"contrastive directions | {self.model} | {len(self.positive)} positive vs {len(self.negative)} "
                 f"negative prompts{' (chat template)' if self.chat else ''} | {self.site_kind}",
                 f"position {position} ({self.position_tokens[p]!r} in the first prompt); held-out accuracy on "
                 f"{self.n_test} test prompts, trained on {self.n_train}",
                 f"{'layer':>5} {'|dom|':>9} {'/|act|':>7} {'probe':>6} {'dom':>6} {'cos pca':>8} {'cos probe':>9}"]
        norm, rel = self.dom[p].norm(dim=-1), self.dom[p].norm(dim=-1) / self.resid_norm[p]
        cos_pca, cos_probe = self.cosines("pca"), self.cosines("probe")

        def fmt(t, i, width, spec=".3f"):
            return f"{'-':>{width}}" if t is None else f"{float(t[p, i]):>{width}{spec}}"
        for i, layer in enumerate(self.layers):
            lines.append(f"{layer:>5} {float(norm[i]):>9.3f} {float(rel[i]):>7.3f} {fmt(self.probe_accuracy, i, 6)} "
                         f"{fmt(self.dom_accuracy, i, 6)} {fmt(cos_pca, i, 8)} {fmt(cos_probe, i, 9)}")
        if self.probe_accuracy is not None and len(self.positions) > 1:
            lines.append(f"held-out probe accuracy by layer ({_ranges(self.layers)}) at every position:")
            for q, (pos, tok) in enumerate(zip(self.positions, self.position_tokens)):
                accs = " ".join(f"{float(a):.2f}" for a in self.probe_accuracy[q])
                lines.append(f"  {pos:>3} {tok!r:>14}: {accs}")
        return "\n".join(lines)


@torch.no_grad()
def contrast(model, positive: Sequence[str], negative: Sequence[str], config: "ContrastConfig | None" = None,
             **overrides) -> Contrast:
    """Directions between `positive` and `negative` prompts at every layer (or `layers`) and at each of `positions`
    (default: the last token; `last_k=k` = each of the last k tokens), all from one forward pass per batch.
    The sets are paired (pos_i with neg_i) when they have equal length: then PCA of the differences is computed
    and the train/test split keeps pairs together. Options: a ContrastConfig, or its fields as keyword overrides
    (contrast(model, pos, neg, chat=True, last_k=6))."""
    config = with_overrides(ContrastConfig, config, overrides)
    layers, site_kind, positions, last_k = config.layers, config.site_kind, config.positions, config.last_k
    chat, probe, test_fraction, seed = config.chat, config.probe, config.test_fraction, config.seed
    l2, batch_size = config.l2, config.batch_size
    positive = check_prompts(positive, "positive prompts")
    negative = check_prompts(negative, "negative prompts")
    if site_kind not in SITE_KINDS:
        raise InputError(f"site_kind must be one of {', '.join(SITE_KINDS)} (a d_model-wide site), got {site_kind!r}")
    layers = check_layers(model, layers)
    if positions is not None and last_k is not None:
        raise InputError("give positions or last_k, not both")
    if last_k is not None:
        check_count("last_k", last_k)
        positions = list(range(-last_k, 0))
    positions = [-1] if positions is None else list(positions)
    if not positions or any(not isinstance(q, int) or isinstance(q, bool) for q in positions):
        raise InputError(f"positions must be a non-empty list of ints, got {positions!r}")
    if len(set(positions)) != len(positions):
        raise InputError(f"positions repeat: {positions}")
    check_count("batch_size", batch_size)
    paired = len(positive) == len(negative)
    split = None
    if probe:
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        if min(len(positive), len(negative)) < 2:
            raise InputError("a held-out probe needs at least 2 prompts in each set (one to train, one to test); "
                             "pass probe=False for a difference of means alone")
        split = _split(len(positive), len(negative), paired, test_fraction, seed)
    pos_rows, neg_rows = prompt_rows(model, positive, chat), prompt_rows(model, negative, chat)
    sites = [f"{site_kind}.{layer}" for layer in layers]
    acts_pos = _acts(model, pos_rows, positive, sites, positions, batch_size)   # [N, P, L, d] float32
    acts_neg = _acts(model, neg_rows, negative, sites, positions, batch_size)
    mean_pos, mean_neg = _mean64(acts_pos), _mean64(acts_neg)
    dom = mean_pos - mean_neg
    resid_norm = torch.cat([acts_pos, acts_neg]).double().norm(dim=-1).mean(0)
    pca = _paired_pca(acts_pos, acts_neg, dom) if paired else None
    probe_dir = probe_acc = probe_train = dom_acc = None
    n_train = n_test = 0
    if split is not None:
        probe_dir, probe_acc, probe_train, dom_acc = _held_out(acts_pos, acts_neg, split, l2)
        n_train = len(split[0][0]) + len(split[1][0])
        n_test = len(split[0][1]) + len(split[1][1])
    tokens = [model.to_str_tokens([pos_rows[0][q]])[0] if -len(pos_rows[0]) <= q < len(pos_rows[0]) else "?"
              for q in positions]
    return Contrast(model.spec, site_kind, layers, positions, tokens, bool(chat), positive, negative,
                    prompt_hash(positive, negative, chat), dom, resid_norm, pca, probe_dir, probe_acc, probe_train,
                    dom_acc, n_train, n_test, seed, config_sha256(model), config)


def _acts(model, rows, prompts, sites, positions, batch_size) -> torch.Tensor:
    """[N, P, L, d] float32 activations of each prompt at each position and site (one forward per batch)."""
    out = []
    for start in range(0, len(rows), batch_size):
        run = model.run(rows[start:start + batch_size], read=sites, stop_early=True)
        lengths = run.attention_mask.sum(dim=1)
        batch = prompts[start:start + batch_size]
        rows_idx = torch.arange(len(lengths), device=lengths.device)
        stacked = torch.stack([run.acts[s] for s in sites], dim=2)        # [B, seq, L, d]
        per_pos = [stacked[rows_idx, token_index(lengths, q, batch)] for q in positions]
        out.append(torch.stack(per_pos, dim=1).float().cpu())           # [B, P, L, d]
    return torch.cat(out)


def _mean64(acts: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(acts.shape[1:], dtype=torch.float64)
    for chunk in acts.split(64):
        total += chunk.double().sum(0)
    return total / len(acts)


def _paired_pca(acts_pos, acts_neg, dom) -> torch.Tensor:
    diffs = (acts_pos.double() - acts_neg.double()).permute(1, 2, 0, 3)    # [P, L, N, d]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    axis = vh[..., 0, :]                                                   # [P, L, d], unit
    sign = torch.sign((axis * dom).sum(-1, keepdim=True))
    return axis * torch.where(sign == 0, torch.ones_like(sign), sign)


def _split(n_pos, n_neg, paired, test_fraction, seed):
    """((train, test) indices of positives, (train, test) of negatives); seeded; pairs kept together."""
    def one(n, rng):
        order = list(range(n))
        rng.shuffle(order)
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        return sorted(order[n_test:]), sorted(order[:n_test])
    if paired:
        s = one(n_pos, random.Random(seed))
        return s, s
    return one(n_pos, random.Random(seed)), one(n_neg, random.Random(seed + 1))


def _held_out(acts_pos, acts_neg, split, l2):
    (pos_tr, pos_te), (neg_tr, neg_te) = split
    P, L, d = acts_pos.shape[1:]
    direction = torch.zeros(P, L, d, dtype=torch.float64)
    probe_acc, train_acc, dom_acc = (torch.zeros(P, L, dtype=torch.float64) for _ in range(3))
    y_tr = torch.cat([torch.ones(len(pos_tr)), torch.zeros(len(neg_tr))])
    y_te = torch.cat([torch.ones(len(pos_te)), torch.zeros(len(neg_te))])
    for p in range(P):
        for i in range(L):
            x_tr = torch.cat([acts_pos[pos_tr, p, i], acts_neg[neg_tr, p, i]]).double()
            x_te = torch.cat([acts_pos[pos_te, p, i], acts_neg[neg_te, p, i]]).double()
            fitted = fit_probe(x_tr, y_tr, x_te, y_te, l2=l2)
            direction[p, i], probe_acc[p, i], train_acc[p, i] = (fitted.direction, fitted.test_accuracy,
                                                                 fitted.train_accuracy)
            mu_pos, mu_neg = x_tr[: len(pos_tr)].mean(0), x_tr[len(pos_tr):].mean(0)
            d_tr = mu_pos - mu_neg
            threshold = (mu_pos + mu_neg) / 2 @ d_tr
            dom_acc[p, i] = ((x_te @ d_tr > threshold) == (y_te > 0.5)).double().mean()
    return direction, probe_acc, train_acc, dom_acc


def _ranges(xs: list[int]) -> str:
    return ", ".join(map(str, xs)) if len(xs) <= 8 else f"{xs[0]}..{xs[-1]} ({len(xs)} layers)"
