"""Circuit nodes and how a node is ablated.

A head is (layer, head), ablated at site z.L (its output before the output projection); an MLP is a layer, ablated
at mlp_out.L. A set of nodes is held as gate weights: heads [n_layers, n_heads] and mlps [n_layers], 1 = kept,
0 = replaced by its mean (or zero), anything between = lmscope.edits.interpolate's mix (learned masks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lmscope.core.edits import interpolate
from lmscope.core.errors import InputError


@dataclass(frozen=True, order=True)
class Node:
    kind: str          # "head" or "mlp"
    layer: int
    head: int = -1     # -1 for an MLP

    @property
    def name(self) -> str:
        return f"head.{self.layer}.{self.head}" if self.kind == "head" else f"mlp.{self.layer}"

    def __str__(self) -> str:
        return self.name


def parse_node(model, spec) -> Node:
    """'head.5.3', '5.3', (5, 3) or [5, 3] -> a head; 'mlp.5' -> an MLP. Anything else: one clear InputError."""
    if isinstance(spec, Node):
        node = spec
    elif isinstance(spec, (list, tuple)) and len(spec) == 2 and all(_is_int(x) for x in spec):
        node = Node("head", int(spec[0]), int(spec[1]))
    elif isinstance(spec, str) and (m := re.fullmatch(r"\s*(?:head\.|h)?(-?\d+)\.(-?\d+)\s*", spec)):
        node = Node("head", int(m[1]), int(m[2]))
    elif isinstance(spec, str) and (m := re.fullmatch(r"\s*mlp\.?(-?\d+)\s*", spec)):
        node = Node("mlp", int(m[1]))
    else:
        raise InputError(f"unknown node {spec!r}: a head is 'head.L.H' (or [L, H]), an MLP is 'mlp.L'")
    if not 0 <= node.layer < model.n_layers:
        raise InputError(f"unknown node {node.name}: {model.spec} has layers 0..{model.n_layers - 1}")
    if node.kind == "head" and not 0 <= node.head < model.n_heads:
        raise InputError(f"unknown node {node.name}: {model.spec} has heads 0..{model.n_heads - 1} per layer")
    return node


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def all_nodes(model, mlps: bool = True) -> list[Node]:
    heads = [Node("head", layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    return heads + ([Node("mlp", layer) for layer in range(model.n_layers)] if mlps else [])


def gates(model, nodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept nodes -> (heads [n_layers, n_heads], mlps [n_layers]) of exact 0/1 in the model's dtype."""
    heads = torch.zeros(model.n_layers, model.n_heads, dtype=model.dtype)
    mlps = torch.zeros(model.n_layers, dtype=model.dtype)
    for spec in nodes:
        node = parse_node(model, spec)
        if node.kind == "head":
            heads[node.layer, node.head] = 1
        else:
            mlps[node.layer] = 1
    return heads, mlps


def rank_heads(scores: torch.Tensor) -> list[tuple[int, int]]:
    """(layer, head) by score [n_layers, n_heads], largest first; ties put the later layer, then head, first."""
    n_layers, n_heads = scores.shape
    order = sorted(((float(scores[l, h]), l, h) for l in range(n_layers) for h in range(n_heads)), reverse=True)
    return [(l, h) for _, l, h in order]


def head_gates(like: torch.Tensor, heads) -> torch.Tensor:
    """A 0/1 head gate shaped and typed like `like`, with exactly the (layer, head) pairs `heads` on."""
    gate = torch.zeros_like(like)
    for layer, head in heads:
        gate[layer, head] = 1
    return gate


def kept_nodes(heads: torch.Tensor, mlps: torch.Tensor) -> list[Node]:
    """Gates -> the nodes whose gate is 1 (exactly)."""
    out = [Node("head", int(l), int(h)) for l, h in (heads == 1).nonzero().tolist()]
    return out + [Node("mlp", int(l)) for l in (mlps == 1).nonzero().flatten().tolist()]


def gate_edits(model, means, heads: torch.Tensor, mlps: torch.Tensor, groups: list[int], seq: int) -> list:
    """Edits that apply the gates to a batch of `seq` tokens whose rows belong to mean `groups`. A layer whose gates
    are all exactly 1 and need no gradient gets no edit (it would change nothing)."""
    edits = []
    for layer in range(model.n_layers):
        h, m = heads[layer], mlps[layer]
        need_h = h.requires_grad or not bool((h == 1).all())
        need_m = m.requires_grad or float(m) != 1
        if not (need_h or need_m):
            continue
        z_mean, mlp_mean = means.values(groups, seq, layer)
        if need_h:
            edits.append(interpolate(f"z.{layer}", z_mean, h.to(model.device, model.dtype)))
        if need_m:
            edits.append(interpolate(f"mlp_out.{layer}", mlp_mean, m.to(model.device, model.dtype)))
    return edits
