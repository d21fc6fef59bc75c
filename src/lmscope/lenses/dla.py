"""Residual decomposition / direct logit attribution (DLA).

The last layer's residual stream at one position is a sum of parts: the embedding (`resid_pre.0`; GPT-2: token +
position embedding), what every attention layer adds (`attn_out.L`) and what every MLP adds (`mlp_out.L`). The final
norm is linear once its normalisation factor is FROZEN at the value of the clean run, so each part's direct effect
on the target logit is

    contribution(c) = (c [- mean(c) for LayerNorm]) * scale * gain . W_U[target]

with scale = 1 / sqrt(mean(x^2) + eps) (RMSNorm) or 1 / sqrt(var(x) + eps) (LayerNorm) of the clean x =
resid_post of the last layer at that position, and gain the norm's elementwise weight as the model applies it (read
from the model's own norm module with a +-1 probe, so Gemma's (1 + weight) needs no special case). Everything that
is not linear in the parts is the REMAINDER, reported term by term:

    norm_bias    the final norm's bias . W_U[target]          (LayerNorm; 0 for RMSNorm)
    lm_head_bias the unembedding's bias for the target         (0 when it has none)
    softcap      model logit - (logit before final soft-capping)   (Gemma 2/3; 0 otherwise)

so sum(contributions) + remainder = the model's own target logit (checked on every call).

Per head: attention's output projection is linear in z, so head h contributes z.L[..., h, :] @ W_O[h-slice]^T; the
heads of a layer sum to its attention contribution minus the projection's bias term (reported separately). Gemma
normalises attention's output after the projection (post-attention norm): the heads are not additive there and
per-head attribution is refused for that family.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from torch import nn

from lmscope.core.checks import tolerance
from lmscope.core.errors import InputError
from lmscope.core.models.adapters import final_logit_softcap, scale_logits
from lmscope.core.models.sites import resolve_position
from lmscope.core.trace import resident
from lmscope.lenses.text import show_token
from lmscope.results import Result


@dataclass
class Component:
    name: str                 # 'embed', 'attn.5', 'mlp.5', 'head.5.3', 'attn_bias.5'
    kind: str                 # embed | attn | mlp | head | attn_bias
    layer: int | None
    head: int | None
    contribution: float       # to the target logit, frozen final-norm scale
    top_tokens: list[str] = field(default_factory=list)   # the component's own top tokens, unembedded the same way


@dataclass
class DLAResult(Result, kind="direct_logit_attribution"):
    model: str
    prompt: str
    tokens: list[str]
    position: int
    target: str
    target_id: int
    logit: float                       # the model's own target logit at the position
    components: list[Component]        # embed, then attn.L, mlp.L per layer (these sum with the remainder)
    heads: list[list[float]] | None    # [layer][head]; null where refused (gemma) or not asked
    head_bias: list[float] | None      # per layer: the output projection's bias term (0 without one); null as heads
    remainder: dict[str, float]        # norm_bias, lm_head_bias, softcap, total
    norm_scale: float                  # the frozen normalisation factor
    heads_note: str = ""

    @property
    def total(self) -> float:
        return sum(c.contribution for c in self.components) + self.remainder["total"]

    def json_extras(self) -> dict:
        return {"sum_of_parts": self.total}

    def largest(self, n: int = 10) -> list[Component]:
        parts = list(self.components)
        if self.heads is not None:
            parts += [Component(f"head.{layer}.{h}", "head", layer, h, v)
                      for layer, row in enumerate(self.heads) for h, v in enumerate(row)]
        return sorted(parts, key=lambda c: -abs(c.contribution))[:n]

    def figure(self, n: int = 20):
        parts = sorted(self.largest(n), key=lambda c: c.contribution)
        fig = go.Figure(go.Bar(x=[c.contribution for c in parts], y=[c.name for c in parts], orientation="h",
                               marker_color=["#c0392b" if c.contribution < 0 else "#2471a3" for c in parts],
                               hovertext=[", ".join(map(repr, c.top_tokens)) for c in parts]))
        fig.update_layout(title=f"Direct logit attribution to {self.target!r} at position {self.position} "
                                f"({self.tokens[self.position]!r}): logit {self.logit:.3f}",
                          xaxis_title="contribution to the target logit (frozen final-norm scale)",
                          height=max(400, 24 * len(parts) + 150), width=900)
        return fig

    def heads_figure(self):
        z = self.heads
        lim = max(1e-9, max(abs(v) for row in z for v in row))
        fig = go.Figure(go.Heatmap(z=z, x=[f"head {h}" for h in range(len(z[0]))],
                                   y=[f"layer {i}" for i in range(len(z))], colorscale="RdBu", zmid=0,
                                   zmin=-lim, zmax=lim, colorbar={"title": "logit"}))
        fig.update_layout(title=f"Per-head direct contribution to {self.target!r}", height=max(400, 18 * len(z) + 150),
                          width=700)
        return fig

    def figures(self) -> list:
        return [self.figure()] + ([self.heads_figure()] if self.heads is not None else [])

    def title(self) -> str:
        return f"Direct logit attribution - {self.model}"

    def page_intro(self) -> str:
        r = self.remainder
        return (f"Prompt: {self.prompt!r}. Target {self.target!r} at position {self.position}; model logit "
                f"{self.logit:.4f} = sum of the parts {self.total - r['total']:.4f} + remainder {r['total']:.4f} "
                f"(norm bias {r['norm_bias']:.4f}, lm_head bias {r['lm_head_bias']:.4f}, soft-capping "
                f"{r['softcap']:.4f}). The final norm's scale is frozen at the clean run's value "
                f"({self.norm_scale:.4f}). {self.heads_note}")

    def summary(self, n: int = 12) -> str:
        r = self.remainder
        lines = [f"direct logit attribution | {self.model} | target {self.target!r} at position {self.position} "
                 f"({self.tokens[self.position]!r})",
                 f"model logit {self.logit:.4f} = parts {self.total - r['total']:.4f} + remainder {r['total']:.4f} "
                 f"(norm bias {r['norm_bias']:.4f}, lm_head bias {r['lm_head_bias']:.4f}, softcap {r['softcap']:.4f})"
                 f"; frozen norm scale {self.norm_scale:.4f}",
                 f"largest {n} contributions:"]
        for c in self.largest(n):
            tops = " ".join(show_token(t, 10) for t in c.top_tokens[:5])
            lines.append(f"  {c.name:<12} {c.contribution:+9.4f}   {tops}")
        if self.heads is None and self.heads_note:
            lines.append(self.heads_note)
        return "\n".join(lines)


def norm_affine(norm: nn.Module, d: int, device=None) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """(gain, bias, centred, eps) of a (Layer|RMS)Norm module (e.g. the model's final norm), read by probing the
    module itself with +-v: gain as the model applies it (Gemma's 1 + weight included), float64. `centred` (a
    LayerNorm, which subtracts the mean: also one of its own class, as Cohere's) is probed too: a centred norm
    gives the same output for v and v + 1, an RMSNorm does not (v + 1 = 2, 0, 2, 0, ... has another mean square)."""
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        raise InputError(f"direct logit attribution: cannot read the epsilon of the final norm "
                         f"({type(norm).__name__})")
    if d % 2:
        raise InputError("direct logit attribution needs an even d_model (the norm is probed with +-1)")
    p = next(norm.parameters())
    # device: where the norm runs (an offloaded norm's own parameters are meta tensors)
    v = torch.ones(d, dtype=p.dtype, device=device if device is not None else p.device)
    v[1::2] = -1                                          # mean 0, mean square 1, variance 1
    with torch.no_grad():
        plus, minus = norm(v[None]).double()[0], norm(-v[None]).double()[0]
        shifted = norm((v + 1)[None]).double()[0]
    # RMSNorm's output moves by about |gain| per channel under the shift; rounding is far below a tenth of it
    centred = bool((shifted - plus).abs().max() <= 0.1 * (plus - minus).abs().max() / 2)
    gain = (plus - minus) / 2 * (1 + float(eps)) ** 0.5 / v.double()
    bias = (plus + minus) / 2
    return gain, bias, centred, float(eps)


@torch.no_grad()
def direct_logit_attribution(model, prompt, target, *, position: int = -1, heads: bool | None = None,
                             top_k: int = 5) -> DLAResult:
    """Decompose the target logit at `position` into embedding, attention layers, heads and MLP layers.

    heads: None = per head where the model allows it (not Gemma, OLMo 2 or the weight-sparse model, whose heads'
    writes are not additive: Adapter.nonadditive_heads); True = required (those: error); False = off.
    """
    if not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be a non-negative integer, got {top_k!r}")
    nonadditive = model.adapter.nonadditive_heads
    if heads and nonadditive:
        raise InputError(f"per-head attribution is not linear here ({nonadditive}); use heads=False for "
                         f"layer-level DLA")
    do_heads = (not nonadditive) if heads is None else bool(heads)
    target_id = target if isinstance(target, int) and not isinstance(target, bool) else model.token_id(target)
    if not 0 <= target_id < model.vocab_size:
        raise InputError(f"target id {target_id} is outside the vocabulary 0..{model.vocab_size - 1}")
    n = model.n_layers
    read = ["resid_pre.0", "attn_out.*", "mlp_out.*", f"resid_post.{n - 1}", "final_norm"] + (
        ["z.*"] if do_heads else [])
    run = model.run(prompt, read=read)
    if run.input_ids.shape[0] != 1:
        raise InputError("direct_logit_attribution takes one prompt")
    pos = resolve_position(position, run.input_ids.shape[1])
    a = run.acts

    def at(name):
        return a[name][0, pos].double()

    parts = [("embed", "embed", None, at("resid_pre.0"))]
    for layer in range(n):
        parts.append((f"attn.{layer}", "attn", layer, at(f"attn_out.{layer}")))
        parts.append((f"mlp.{layer}", "mlp", layer, at(f"mlp_out.{layer}")))
    x = at(f"resid_post.{n - 1}")
    summed = torch.stack([p[3] for p in parts]).sum(0)
    # the model adds its 2n sublayer outputs in its own dtype, rounding each time; float32 keeps the old bound
    tol = max(tolerance(model.dtype, float(x.abs().max()), 2 * n + 1), 2e-4 * float(x.abs().max()))
    gap = float((summed - x).abs().max())
    if gap > tol:
        raise InputError(f"the residual stream of {model.spec} differs from the sum of embedding, attn_out and "
                         f"mlp_out by {gap:.3g}, more than {model.dtype}'s rounding allows ({tol:.3g}): DLA's "
                         f"decomposition does not hold here")

    norm = model.module(model.adapter.final_norm)
    gain, bias, centred, eps = norm_affine(norm, model.d_model, model.device)
    xc = x - x.mean() if centred else x
    scale = 1.0 / float((xc.pow(2).mean() + eps).sqrt())
    normed = xc * scale * gain + bias
    seen = at("final_norm")
    tol = max(tolerance(model.dtype, float(seen.abs().max())), 2e-3 * float(seen.abs().max()))   # one rounding
    gap = float((normed - seen).abs().max())
    if gap > tol:
        raise InputError(f"the final norm of {model.spec} ({type(norm).__name__}) differs from a (Layer|RMS)Norm "
                         f"with an elementwise gain by {gap:.3g}, more than {model.dtype}'s rounding allows "
                         f"({tol:.3g}): DLA's frozen-scale decomposition does not hold here")
    head = model.module(model.adapter.lm_head)
    w_u = resident(head, "weight").double()                  # [vocab, d_model] (offloaded: a copy)
    factor = float(scale_logits(model.adapter, model.hf.config, torch.ones(1, dtype=torch.float64)))
    u = w_u[target_id] * factor                              # the family's own logit multiplier (Granite, Cohere)
    read_dir = scale * gain * u                              # contribution(c) = centre(c) . read_dir

    def centre(v):
        return v - v.mean(-1, keepdim=True) if centred else v

    vecs = torch.stack([p[3] for p in parts])
    contribs = centre(vecs) @ read_dir
    tops: list[list[str]] = [[] for _ in parts]
    if top_k:
        logits = (centre(vecs) * (scale * gain)) @ w_u.T       # each part's own frozen-scale logits
        ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices
        tops = [model.to_str_tokens(row) for row in ids]
    components = [Component(name, kind, layer, None, float(c), t)
                  for (name, kind, layer, _), c, t in zip(parts, contribs.tolist(), tops)]

    unembed_bias = resident(head, "bias")
    lm_bias = float(unembed_bias[target_id]) * factor if unembed_bias is not None else 0.0
    norm_bias = float(bias @ u)
    raw = float(normed @ u) + lm_bias                       # the logit before soft-capping
    model_logit = float(run.logits[0, pos, target_id])
    cap = final_logit_softcap(model.hf.config)
    softcap = (model_logit - raw) if cap else 0.0
    remainder = {"norm_bias": norm_bias, "lm_head_bias": lm_bias, "softcap": softcap,
                 "total": norm_bias + lm_bias + softcap}
    total = float(contribs.sum()) + remainder["total"]
    tol = max(tolerance(model.dtype, abs(model_logit) + float(contribs.abs().sum()), 2 * n + 4), 1e-4)
    if abs(total - model_logit) > tol:     # never a silently wrong decomposition
        raise InputError(f"the parts sum to {total:.6g}, but {model.spec} gives the target logit {model_logit:.6g} "
                         f"(more than {model.dtype}'s rounding allows, {tol:.3g}): DLA does not account for how this "
                         f"model forms its logits")

    head_rows, head_bias, note = None, None, ""
    if do_heads:
        head_rows, head_bias = [], []
        for layer in range(n):
            w_h, b = model.head_write_weights(layer, "per-head attribution")     # residual scale included
            z = a[f"z.{layer}"][0, pos].double()                # [heads, d_head]
            per_head = torch.einsum("hk,dhk->hd", z, w_h.double())   # each head's write into the residual
            head_rows.append((centre(per_head) @ read_dir).tolist())
            head_bias.append(float(centre(b.double()) @ read_dir) if b is not None else 0.0)
    elif nonadditive:
        note = f"per-head attribution refused: {nonadditive}, so the heads' writes are not additive"
    return DLAResult(model.spec, prompt if isinstance(prompt, str) else str(prompt),
                     model.to_str_tokens(run.input_ids[0]), pos, model.tokenizer.decode([target_id]), target_id,
                     model_logit, components, head_rows, head_bias, remainder, scale, note)


