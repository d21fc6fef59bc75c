"""Edges of a node circuit: the nonzero weights between kept nodes (Gao et al. 2025 count a circuit's size in
nodes and edges). Weights are read from the model's own modules, named by its adapter.

Weight edges, per layer L (a dense model has every one of these weights nonzero, so its count is all pairs):
    attn_in.L[i] -> q/k/v.L[h, c]     the q/k/v projection's weight (a fused projection is split like the sites)
    v.L[g, c]    -> attn_out.L[d]      the output projection's weights of the query heads reading KV head g
    mlp_in.L[i]  -> neurons.L[n]       the MLP's input projection(s) (gate and up for a gated MLP)
    neurons.L[n] -> mlp_out.L[d]       the down projection
Listed apart, not in `edges`: q.L[h, c] . k.L[g(h), c] pairs (a product of two nodes, no weight between them) and
residual links (a written channel d and a later read of the same channel d: the identity, no weight).
The norms' elementwise gains between a read site and its projection are not included (a zero gain is rare).
"""
from __future__ import annotations

import torch

from lmscope.core.errors import ModelSpecError
from lmscope.core.trace import qkv_path, qkv_view, weight_matrix

# the weight-sparse GPT's q/k/v sites are the AbsTopK after each projection; its weight is the projection's
_PROJECTION_OF = {"q_act": "q_proj", "k_act": "k_proj", "v_act": "v_proj"}


def _qkv_weight(model, layer: int, kind: str) -> torch.Tensor:
    """[d_in, heads, d_head]: the weight into q/k/v.L from what attention reads."""
    rel = qkv_path(model.adapter, kind)
    module = model.block_module(layer, rel)
    if getattr(module, "weight", None) is None:
        parent, _, name = rel.rpartition(".")
        module = model.block_module(layer, f"{parent}.{_PROJECTION_OF.get(name, name)}".lstrip("."))
    return qkv_view(model, f"{kind}.{layer}", weight_matrix(module).T)


def _mlp_in_weight(model, layer: int) -> torch.Tensor:
    """[d_mlp, d_model]: nonzero where any input projection of the MLP (gate, up, fused gate_up) is nonzero."""
    down = model.adapter.down_proj
    parent = down.rpartition(".")[0]
    found = []
    for name, module in model.block_module(layer, parent).named_modules():
        if name == down.rpartition(".")[2] or getattr(module, "weight", None) is None:
            continue
        try:
            w = weight_matrix(module)
        except ModelSpecError:
            continue
        if w.shape[1] == model.d_model and w.shape[0] % model.d_mlp == 0:
            found.append(w.reshape(-1, model.d_mlp, model.d_model).abs().sum(0))
    if not found:
        raise ModelSpecError(f"no MLP input projection found in layer {layer} of {model.spec}")
    return sum(found)


def _v_out_weight(model, layer: int) -> torch.Tensor:
    """[d_model, kv_heads, d_head]: |W_o| summed over the query heads that read each KV head."""
    w = weight_matrix(model.block_module(layer, model.adapter.o_proj)).abs()
    w = w.view(model.d_model, model.n_heads, model.d_head)
    group = model.n_heads // model.n_kv_heads
    return w.view(model.d_model, model.n_kv_heads, group, model.d_head).sum(2)


def layer_matrices(model, layer: int) -> list[tuple[str, str, torch.Tensor]]:
    """(source kind, target kind, weight [target features..., source features...]) for one layer."""
    out = []
    if model.adapter.qkv:                                          # families without q/k/v sites have no such nodes
        for kind in "qkv":
            w = _qkv_weight(model, layer, kind)                   # [d_in, heads, dh]
            out.append(("attn_in", kind, w.permute(1, 2, 0)))      # [heads, dh, d_in]
        out.append(("v", "attn_out", _v_out_weight(model, layer)))  # [d_model, kv, dh]
    if model.adapter.has_neurons:                                  # a mixture of experts has no neuron nodes
        out.append(("mlp_in", "neurons", _mlp_in_weight(model, layer)))
        out.append(("neurons", "mlp_out", weight_matrix(model.block_module(layer, model.adapter.down_proj))))
    return out


def count_edges(model, masks, *, list_limit: int = 0) -> dict:
    """Nonzero weights between kept nodes of `masks` (lmscope.papers.weight_sparse.circuit.NodeMasks); with
    list_limit > 0 also up to that many edges as (source, target, weight), largest |weight| first."""
    total, by_kind, listed = 0, {}, []
    m = masks.masks
    for layer in range(model.n_layers):
        for src, dst, w in layer_matrices(model, layer):
            s_site, d_site = f"{src}.{layer}", f"{dst}.{layer}"
            if s_site not in m or d_site not in m:
                continue
            s_keep, d_keep = m[s_site] == 1, m[d_site] == 1
            shape = tuple(d_keep.shape) + tuple(s_keep.shape)
            live = (w.reshape(shape) != 0) & d_keep.reshape(*d_keep.shape, *([1] * s_keep.dim())) & s_keep
            n = int(live.sum())
            total += n
            by_kind[f"{src}->{dst}"] = by_kind.get(f"{src}->{dst}", 0) + n
            if list_limit and n:
                for idx in live.nonzero().tolist()[: list_limit]:
                    d_idx, s_idx = idx[:d_keep.dim()], idx[d_keep.dim():]
                    listed.append((_name(s_site, s_idx), _name(d_site, d_idx), float(w.reshape(shape)[tuple(idx)])))
    listed.sort(key=lambda e: -abs(e[2]))
    return {"edges": total, "by_kind": by_kind, "qk_pairs": _qk_pairs(model, m), "residual_links": _residual(model, m),
            "listed": listed[:list_limit] if list_limit else []}


def _name(site: str, idx) -> str:
    return f"{site}[{','.join(str(i) for i in idx)}]"


def _qk_pairs(model, m) -> int:
    n = 0
    group = model.n_heads // model.n_kv_heads
    for layer in range(model.n_layers):
        q, k = m.get(f"q.{layer}"), m.get(f"k.{layer}")
        if q is None or k is None:
            continue
        k_per_q = (k == 1).repeat_interleave(group, 0)
        n += int(((q == 1) & k_per_q).sum())
    return n


def _residual(model, m) -> int:
    """Kept written channels linked to a kept read of the same channel later in the forward pass."""
    order = []
    for layer in range(model.n_layers):
        order += [("read", f"attn_in.{layer}"), ("write", f"attn_out.{layer}"), ("read", f"mlp_in.{layer}"),
                  ("write", f"mlp_out.{layer}")]
    n = 0
    for i, (what, site) in enumerate(order):
        if what != "write" or site not in m:
            continue
        for what2, site2 in order[i + 1:]:
            if what2 == "read" and site2 in m and not (model.parallel and site2.startswith("mlp_in")
                                                         and site.startswith("attn_out")
                                                         and site.split(".")[1] == site2.split(".")[1]):
                n += int(((m[site] == 1) & (m[site2] == 1)).sum())
    return n
