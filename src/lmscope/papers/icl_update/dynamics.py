"""In-context learning as an implicit rank-1 update of the MLP's first matrices (Dherin et al. 2025, "Learning
without training", arXiv 2507.16003), measured on real models.

For a block T_W(C, x) = M_W(A(C, x)) (a contextual layer A, then an MLP whose first matrix is W), the context C
changes the query's MLP input from A(x) to A(C, x) = A(x) + dA. Because W is applied linearly to A,

    W A(C, x) = (W + dW) A(x),    dW = (W dA) A(x)^T / |A(x)|^2        (rank 1)

so the MLP with context equals the MLP with weights W + dW and no context. Here:

- "with context" is the whole prompt (context tokens then query tokens), "without context" the query tokens alone;
  both are read at the same offset from the end (default: the last token).
- A is the MLP's input, i.e. the output of the block's MLP input norm (post-norm), computed by applying the
  model's own norm module to the residual stream it reads: resid_mid for sequential blocks, resid_pre for parallel
  ones (GPT-NeoX). Every first matrix gets its own dW: c_fc (GPT-2, whose Conv1D weight is [in, out], so its dW is
  stored transposed), dense_h_to_4h (GPT-NeoX), gate_proj and up_proj (Llama, Gemma ...), the fused gate_up_proj
  (Phi-3). Biases and everything after W are untouched, so the identity holds for the whole MLP output, Gemma's
  post-feedforward norm included (it is applied after the MLP, to both sides). In a parallel block the MLP reads
  resid_pre, so at layer 0 A is the token embedding: the context cannot change it and dW = 0 (rank 0) there.

The residual path. A real block adds the MLP's output to its input: block_out(C, x) = R(C, x) + MLP_W(A(C, x)),
with R = resid_mid (sequential blocks; for parallel blocks read as resid_pre + attn_out, which is also what the
MLP's output is added to). The MLP term is the updated MLP on the no-context input; the residual term is not
absorbed by any weight update of W, so

    block_out(C, x) = resid_mid(x) + MLP_{W+dW}(A(x)) + [resid_mid(C, x) - resid_mid(x)]

exactly in exact arithmetic; the bracket is the residual term reported per layer. Because the MLP input norm is
applied before W and A is taken after it, the norm needs no special treatment: it is part of the contextual
layer. This is the generalisation to residual blocks with normalisation of Innocenti & Achour 2025, "A simple
generalisation of the implicit dynamics of in-context learning" (arXiv 2512.11255): the context acts on the
MLP through a rank-1 update, and additively on the skip path.

Example by example (examples = the context's lines), in context order as the paper reads it: dW_i uses the FIRST i
examples + the query, W_i = W + dW(c_1..c_i) (dW_0 = 0), so dW_1 sees c_1 only and each step appends the example next
to the query. The other reading, named "suffix" (dW_i from the LAST i examples, each step prepending an example far
from the query; this module's default before), is kept as a variant. A(x) is the same for every i, so dW_{i+1} - dW_i = W (A(C_{i+1}, x) - A(C_i, x)) A(x)^T / |A(x)|^2 and its Frobenius norm is
|W (A_{i+1} - A_i)| / |A(x)|; the norms reported are over all layers and first matrices together.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from torch import nn

from lmscope.core.checks import check_count
from lmscope.core.errors import InputError
from lmscope.core.trace import forward_with, resident, weight_matrix
from lmscope.results import Result

# The MLP's first matrices (the ones that read A), per adapter family, relative to the block's MLP module.
FIRST_MATRICES = {"gpt2": ("c_fc",), "gpt_neox": ("dense_h_to_4h",), "llama": ("gate_proj", "up_proj"),
                  "gemma": ("gate_proj", "up_proj"), "phi3": ("gate_up_proj",)}
MLP_MODULE = "mlp"
READINGS = ("in_order", "suffix")   # the per-example trajectory: first i examples (the paper's), or last i
_READING_TEXT = {"in_order": "first i examples", "suffix": "suffix variant, last i examples"}


@dataclass
class LayerUpdate:
    layer: int
    a_norm: float                   # |A(x)|
    delta_a_norm: float             # |A(C, x) - A(x)|
    update_norms: dict[str, float]  # Frobenius norm of dW per first matrix
    ranks: dict[str, int]           # numerical rank of dW per first matrix
    mlp_error: float                # max |MLP_W(A(C, x)) - MLP_{W+dW}(A(x))|
    block_error: float              # max |block_out(C, x) - [resid_mid(x) + MLP_{W+dW}(A(x)) + residual term]|
    residual_term_norm: float       # |resid_mid(C, x) - resid_mid(x)|
    mlp_out_norm: float             # |MLP_W(A(C, x))|, for scale


@dataclass
class UpdateTrajectory:
    order: list[int]                # the examples' indices in the prompt, in the order consumed
    update_norms: list[float]       # ||dW_i||, i = 0 .. n (all layers and first matrices together)
    increment_norms: list[float]    # ||dW_{i+1} - dW_i||, i = 0 .. n-1
    reading: str = "in_order"       # in_order: dW_i from the first i examples (the paper's); suffix: the last i


@dataclass
class IclUpdateResult(Result, kind="icl_update"):
    """The identities per layer, the per-example and per-token update trajectories. Its JSON adds
    max_abs_error_mlp, max_abs_error_block, rank and increment_norms (of the given order)."""
    model: str
    prompt: str
    context: str
    query: str
    dtype: str
    position: int                   # offset from the end of the query (and of the prompt)
    layers: list[LayerUpdate]
    examples: list[str] = field(default_factory=list)
    trajectories: list[UpdateTrajectory] = field(default_factory=list)
    # ||dW_n(order 0) - dW_n(order 1)|| / ||dW_n(order 0)||; None (null) when only one order was run
    order_gap: float | None = None
    token_increment_norms: list[float] = field(default_factory=list)  # ||dW_{t+1} - dW_t||, context read t tokens

    @property
    def max_abs_error_mlp(self) -> float:
        return max(layer.mlp_error for layer in self.layers)

    @property
    def max_abs_error_block(self) -> float:
        return max(layer.block_error for layer in self.layers)

    @property
    def rank(self) -> int:
        return max(r for layer in self.layers for r in layer.ranks.values())

    @property
    def increment_norms(self) -> list[float]:
        return self.trajectories[0].increment_norms if self.trajectories else []

    def json_extras(self) -> dict:
        return {"max_abs_error_mlp": self.max_abs_error_mlp, "max_abs_error_block": self.max_abs_error_block,
                "rank": self.rank, "increment_norms": self.increment_norms}

    def figure(self):
        """Increment norms ||dW_{i+1} - dW_i|| against the number of examples consumed, one line per order (and
        reading)."""
        fig = go.Figure()
        for t in self.trajectories:
            fig.add_trace(go.Scatter(x=list(range(1, len(t.increment_norms) + 1)), y=t.increment_norms,
                                     mode="lines+markers", name="order " + " ".join(map(str, t.order))
                                     + f" ({_READING_TEXT[t.reading]})"))
        fig.update_layout(title=f"Implicit update increments | {self.model} | query {self.query!r}",
                          xaxis_title="examples consumed (i + 1)", yaxis_title="||dW_{i+1} - dW_i|| (Frobenius)",
                          height=420, width=800)
        return fig

    def token_figure(self):
        """Increments as the context is read one token at a time (in order), the paper's online view."""
        fig = go.Figure(go.Scatter(x=list(range(1, len(self.token_increment_norms) + 1)),
                                   y=self.token_increment_norms, mode="lines+markers"))
        fig.update_layout(title="Increments, context read token by token", xaxis_title="context tokens read (t + 1)",
                          yaxis_title="||dW_{t+1} - dW_t|| (Frobenius)", yaxis_type="log", height=420, width=800)
        return fig

    def layer_figure(self):
        """Per layer: |dW| of each first matrix and the residual term's norm."""
        x = [layer.layer for layer in self.layers]
        fig = go.Figure()
        for name in self.layers[0].update_norms:
            fig.add_trace(go.Scatter(x=x, y=[layer.update_norms[name] for layer in self.layers], name=f"|dW| {name}"))
        fig.add_trace(go.Scatter(x=x, y=[layer.residual_term_norm for layer in self.layers],
                                 name="|resid_mid(C,x) - resid_mid(x)|"))
        fig.update_layout(title="Implicit update per layer", xaxis_title="layer", yaxis_type="log",
                          height=420, width=800)
        return fig

    def figures(self) -> list:
        return [self.figure(), self.token_figure(), self.layer_figure()]

    def title(self) -> str:
        return f"Implicit ICL update - {self.model}"

    def page_intro(self) -> str:
        return (f"Context {self.context!r}, query {self.query!r}. The MLP with context equals the MLP with W + dW "
                f"(rank 1) without context: max error {self.max_abs_error_mlp:.2e} ({self.dtype}); the block adds "
                f"the residual term resid_mid(C,x) - resid_mid(x).")

    def summary(self) -> str:
        lines = [f"implicit ICL update | {self.model} | {self.dtype} | context {len(self.examples)} examples, "
                 f"query {self.query!r}",
                 f"MLP identity  MLP_W(A(C,x)) = MLP_(W+dW)(A(x)): max abs error {self.max_abs_error_mlp:.3e}",
                 f"block identity (with residual term):           max abs error {self.max_abs_error_block:.3e}",
                 f"rank of dW (max over layers and matrices): {self.rank}",
                 "layer  |A(x)|   |dA|    " + "".join(f"|dW {n}|".ljust(16) for n in self.layers[0].update_norms)
                 + "|residual term|  |mlp_out|"]
        for layer in self.layers:
            lines.append(f"{layer.layer:>5}  {layer.a_norm:7.2f} {layer.delta_a_norm:7.2f}  "
                         + "".join(f"{v:<16.4g}" for v in layer.update_norms.values())
                         + f"{layer.residual_term_norm:<16.4g} {layer.mlp_out_norm:.4g}")
        for t in self.trajectories:
            lines.append(f"order {t.order} ({_READING_TEXT[t.reading]}): increments ||dW_(i+1) - dW_i|| "
                         + " ".join(f"{v:.4g}" for v in t.increment_norms))
        if self.order_gap is not None:
            lines.append(f"final update, order 0 vs order 1: relative difference {self.order_gap:.3f}")
        if self.token_increment_norms:
            lines.append("context read token by token: increments "
                         + " ".join(f"{v:.3g}" for v in self.token_increment_norms))
        return "\n".join(lines)


# -- the pieces -------------------------------------------------------------------------------------------------------
def split_prompt(prompt: str) -> tuple[list[str], str]:
    """Few-shot prompt -> (examples, query): the query is the last line, each earlier line one example."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("empty prompt: give a few-shot prompt, e.g. 'hot -> cold\\nbig -> small\\nfast ->'")
    lines = prompt.splitlines(keepends=True)
    query, examples = lines[-1], [line for line in lines[:-1] if line.strip()]
    if not query.strip() or query.endswith("\n"):
        raise InputError("empty query: the prompt's last line is the query and must not be empty")
    if not examples:
        raise InputError("empty context: the prompt needs at least one example line before the query line")
    return examples, query


def context_query_ids(model, context: str, query: str) -> tuple[list[int], list[int]]:
    """(context + query, query alone), tokenized separately so the query tokens are the same in both."""
    tok = model.tokenizer
    query_ids = tok(query, add_special_tokens=False)["input_ids"]
    if not query_ids:
        raise InputError("empty query: it has no tokens")
    with_special = tok(query, add_special_tokens=True)["input_ids"]
    # special tokens the tokenizer puts in front (a BOS), kept in front of both inputs
    prefix = with_special[: len(with_special) - len(query_ids)] if with_special[-len(query_ids):] == query_ids else []
    context_ids = tok(context, add_special_tokens=False)["input_ids"] if context else []
    return prefix + context_ids + query_ids, prefix + query_ids


def read_block(model, ids: list[int], position: int) -> dict[str, torch.Tensor]:
    """Per layer, at `position` (from the end): A (the MLP input), resid_mid, mlp_out, resid_post; [n_layers, d]."""
    sites = ["resid_mid.*", "mlp_out.*", "resid_post.*"] + (["resid_pre.*"] if model.parallel else [])
    run = model.run(torch.tensor(ids), read=sites)
    out = {kind: torch.stack([run.acts[f"{kind}.{layer}"][0, position] for layer in range(model.n_layers)])
           for kind in ("resid_mid", "mlp_out", "resid_post")}
    # The MLP reads the output of its input norm; the norm's input is resid_pre in parallel blocks.
    norm_input = "resid_pre" if model.parallel else "resid_mid"
    with torch.no_grad():
        out["A"] = torch.stack([model.block_module(layer, model.adapter.mlp_in_norm)(
            run.acts[f"{norm_input}.{layer}"][0, position][None, None])[0, 0] for layer in range(model.n_layers)])
    return out


def first_matrices(model, layer: int) -> dict[str, nn.Module]:
    family = model.adapter.family
    if family not in FIRST_MATRICES:
        raise InputError(f"the implicit update is not defined for family '{family}' (no first MLP matrix named)")
    mlp = model.block_module(layer, MLP_MODULE)
    return {name: mlp.get_submodule(name) for name in FIRST_MATRICES[family]}


def rank1_update(module: nn.Module, a: torch.Tensor, delta_a: torch.Tensor) -> torch.Tensor:
    """dW = (W dA) A^T / |A|^2 in the module's own weight layout."""
    dw = torch.outer(weight_matrix(module) @ delta_a, a) / a.dot(a)
    return dw if isinstance(module, nn.Linear) else dw.T


def _with_updates(mlp: nn.Module, matrices: dict[str, nn.Module], updates: dict[str, torch.Tensor], a):
    """MLP_(W+dW)(a): the MLP's own forward, each first matrix computing with its weight + dW (a forward hook runs
    the matrix's own forward with that weight, so an offloaded model computes it too)."""
    def with_weight(weight):
        return lambda module, args, output: forward_with(module, args, weight=weight)
    handles = [m.register_forward_hook(with_weight(resident(m, "weight") + updates[name]))
               for name, m in matrices.items()]
    try:
        return mlp(a)
    finally:
        for h in handles:
            h.remove()


def _numerical_rank(matrix: torch.Tensor, dtype: torch.dtype) -> int:
    # the tolerance is that of the model's dtype: a float32 outer product is rank 1 only up to float32 round-off
    rtol = torch.finfo(dtype).eps * max(matrix.shape)
    return int(torch.linalg.matrix_rank(matrix.double(), rtol=rtol))


def _position_from_end(position: int, n_query: int) -> int:
    if not isinstance(position, int) or not -n_query <= position < n_query:
        raise InputError(f"position {position!r} is out of range: the query has {n_query} tokens "
                         f"(use {-n_query} .. {n_query - 1})")
    return position - n_query if position >= 0 else position


@torch.no_grad()
def implicit_update(model, context: str, query: str, *, position: int = -1) -> list[LayerUpdate]:
    """At every layer: dW from the context, and the MLP and block identities checked against the real run."""
    if not isinstance(context, str) or not context.strip():
        raise InputError("empty context: give at least one context token before the query")
    full_ids, query_ids = context_query_ids(model, context, query)
    n_query = len(query_ids)
    position = _position_from_end(position, n_query)
    with_ctx, alone = read_block(model, full_ids, position), read_block(model, query_ids, position)
    post_mlp = model.adapter.mlp_out != MLP_MODULE  # Gemma's post-feedforward norm (or a no-op dropout)
    layers = []
    for layer in range(model.n_layers):
        a, delta_a = alone["A"][layer], with_ctx["A"][layer] - alone["A"][layer]
        matrices = first_matrices(model, layer)
        updates = {name: rank1_update(m, a, delta_a) for name, m in matrices.items()}
        mlp = model.block_module(layer, MLP_MODULE)
        mlp_updated = _with_updates(mlp, matrices, updates, a[None, None])
        if post_mlp:
            mlp_updated = model.block_module(layer, model.adapter.mlp_out)(mlp_updated)
        mlp_updated = mlp_updated[0, 0]
        residual_term = with_ctx["resid_mid"][layer] - alone["resid_mid"][layer]
        block = alone["resid_mid"][layer] + mlp_updated + residual_term
        layers.append(LayerUpdate(
            layer=layer, a_norm=float(a.norm()), delta_a_norm=float(delta_a.norm()),
            update_norms={name: float(dw.norm()) for name, dw in updates.items()},
            ranks={name: _numerical_rank(dw, model.dtype) for name, dw in updates.items()},
            mlp_error=float((with_ctx["mlp_out"][layer] - mlp_updated).abs().max()),
            block_error=float((with_ctx["resid_post"][layer] - block).abs().max()),
            residual_term_norm=float(residual_term.norm()), mlp_out_norm=float(with_ctx["mlp_out"][layer].norm())))
    return layers


@torch.no_grad()
def _mlp_inputs(model, context: str, query: str, position: int) -> torch.Tensor:
    full_ids, _ = context_query_ids(model, context, query)
    return read_block(model, full_ids, position)["A"]


def _update_distance(model, a_query: torch.Tensor, a_1: torch.Tensor, a_2: torch.Tensor) -> float:
    """||dW(A_1) - dW(A_2)||_F over all layers and first matrices = sqrt(sum |W (A_1 - A_2)|^2) / |A(x)|."""
    total = 0.0
    for layer in range(model.n_layers):
        diff = a_1[layer] - a_2[layer]
        for m in first_matrices(model, layer).values():
            total += float((weight_matrix(m) @ diff).square().sum()) / float(a_query[layer].dot(a_query[layer]))
    return math.sqrt(total)


@torch.no_grad()
def update_trajectory(model, examples: list[str], query: str, order: list[int], *, position: int = -1,
                      reading: str = "in_order") -> UpdateTrajectory:
    """dW_i for i = 0 .. n examples (in `order`) + the query; their norms and increments. reading "in_order": the
    first i examples, W_i = W + dW(c_1..c_i) (Dherin et al.); "suffix": the last i examples (a named variant)."""
    if reading not in READINGS:
        raise InputError(f"reading must be one of {', '.join(READINGS)}, got {reading!r}")
    _, query_ids = context_query_ids(model, "", query)
    position = _position_from_end(position, len(query_ids))
    a_query = read_block(model, query_ids, position)["A"]
    ordered = [examples[i] for i in order]
    contexts = [ordered[:i] if reading == "in_order" else ordered[-i:] for i in range(1, len(ordered) + 1)]
    inputs = [a_query] + [_mlp_inputs(model, "".join(c), query, position) for c in contexts]
    norms = [_update_distance(model, a_query, a, a_query) for a in inputs]
    increments = [_update_distance(model, a_query, inputs[i + 1], inputs[i]) for i in range(len(ordered))]
    return UpdateTrajectory(order=list(order), update_norms=norms, increment_norms=increments, reading=reading)


@torch.no_grad()
def token_increments(model, context: str, query: str, *, position: int = -1) -> list[float]:
    """||dW_{t+1} - dW_t|| where dW_t is the update from the context's first t tokens (read in order) + the query."""
    full_ids, query_ids = context_query_ids(model, context, query)
    position = _position_from_end(position, len(query_ids))
    prefix_len = len(full_ids) - len(query_ids) - len(model.tokenizer(context, add_special_tokens=False)["input_ids"])
    prefix, context_ids = full_ids[:prefix_len], full_ids[prefix_len: len(full_ids) - len(query_ids)]
    a_query = read_block(model, prefix + query_ids, position)["A"]
    inputs = [a_query] + [read_block(model, prefix + context_ids[:t] + query_ids, position)["A"]
                          for t in range(1, len(context_ids) + 1)]
    return [_update_distance(model, a_query, inputs[t + 1], inputs[t]) for t in range(len(context_ids))]


@torch.no_grad()
def icl_update(model, prompt: str, *, position: int = -1, n_orders: int = 2, seed: int = 0,
               suffix: bool = False) -> IclUpdateResult:
    """The implicit update of a few-shot prompt (query = last line, examples = the lines before), its identities
    at every layer, the token-by-token trajectory, and the in-order per-example trajectory for `n_orders` orders of
    the examples: the given order, then the reversed one, then seeded shuffles. suffix=True adds the named variant
    of the given order that reads the last i examples (after the in-order ones)."""
    check_count("n_orders", n_orders)
    examples, query = split_prompt(prompt)
    context = "".join(examples)
    layers = implicit_update(model, context, query, position=position)
    orders = [list(range(len(examples))), list(reversed(range(len(examples))))]
    rng = random.Random(seed)
    while len(orders) < n_orders and len(examples) > 2:
        orders.append(rng.sample(range(len(examples)), len(examples)))
    orders = orders[:n_orders]
    trajectories = [update_trajectory(model, examples, query, order, position=position) for order in orders]
    if suffix:
        trajectories.append(update_trajectory(model, examples, query, orders[0], position=position, reading="suffix"))
    order_gap = None
    if len(orders) > 1:
        _, query_ids = context_query_ids(model, "", query)
        pos = _position_from_end(position, len(query_ids))
        a_query = read_block(model, query_ids, pos)["A"]
        finals = [_mlp_inputs(model, "".join(examples[i] for i in order), query, pos) for order in orders[:2]]
        order_gap = (_update_distance(model, a_query, finals[0], finals[1])
                     / max(_update_distance(model, a_query, finals[0], a_query), 1e-300))
    return IclUpdateResult(model=model.spec, prompt=prompt, context=context, query=query,
                           dtype=str(model.dtype).removeprefix("torch."), position=position, layers=layers,
                           examples=examples, trajectories=trajectories, order_gap=order_gap,
                           token_increment_norms=token_increments(model, context, query, position=position))
