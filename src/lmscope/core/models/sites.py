"""One naming scheme for the insides of every architecture.

A site is a place on the forward pass whose activation can be read or edited:

    embed                 token embedding (output of the embedding module)
    resid_pre.L           residual stream entering layer L
    attn_in.L             what attention reads: the input of its norm (= resid_pre.L); an edit here changes only
                          attention's read, not the residual stream (a "read channel")
    q.L, k.L, v.L         the query / key / value projections' outputs, [..., heads, d_head], before rotary embedding
                          and any q/k norm; k and v have the KV-head count (grouped-query attention: fewer heads)
    z.L                   per-head attention outputs before the output projection, [..., heads, d_head]
    pattern.L             attention probabilities, [batch, heads, query, key] (read only)
    attn_out.L            exactly what attention adds to the residual stream
    resid_mid.L           resid_pre.L + attn_out.L (the residual stream between attention and MLP)
    mlp_in.L              what the MLP reads: the input of its norm (= resid_mid.L, or resid_pre.L with parallel
                          attention); an edit here changes only the MLP's read
    neurons.L             MLP hidden activation after the nonlinearity / gating = input of the down projection
    mlp_out.L             exactly what the MLP adds to the residual stream
    resid_post.L          residual stream leaving layer L
    final_norm            output of the final norm
    logits                the model's output logits (after soft-capping where the model has it)

Layer indices may be negative. TransformerLens hook names are accepted as aliases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from lmscope.core.errors import InputError, SiteError

LAYER_KINDS = ("resid_pre", "attn_in", "q", "k", "v", "z", "pattern", "attn_out", "resid_mid", "mlp_in", "neurons",
               "mlp_out", "resid_post")
GLOBAL_KINDS = ("embed", "final_norm", "logits")
# Execution order inside a layer; used to stop the forward pass right after the last site needed.
_STAGE = {"resid_pre": 0, "attn_in": 1, "q": 2, "k": 2, "v": 2, "z": 3, "pattern": 3, "attn_out": 4, "resid_mid": 5,
          "mlp_in": 6, "neurons": 7, "mlp_out": 8, "resid_post": 9}

_TL_LAYER = {
    "hook_resid_pre": "resid_pre",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
    "mlp.hook_post": "neurons",
    "attn.hook_z": "z",
    "attn.hook_pattern": "pattern",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
}
_TL_GLOBAL = {"hook_embed": "embed", "ln_final.hook_normalized": "final_norm"}


@dataclass(frozen=True, order=True)
class Site:
    kind: str
    layer: int | None = None

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    def order_key(self, n_layers: int) -> tuple[int, int]:
        if self.kind == "embed":
            return (-1, 0)
        if self.kind == "final_norm":
            return (n_layers, 0)
        if self.kind == "logits":
            return (n_layers, 1)
        return (self.layer, _STAGE[self.kind])


def parse_site(name: "str | Site", n_layers: int) -> Site:
    """Parse a site name (ours or a TransformerLens alias) and normalise negative layers."""
    if isinstance(name, Site):
        kind, layer = name.kind, name.layer
    elif isinstance(name, str):
        kind, layer = _split(name.strip())
    else:
        raise SiteError(f"a site is a string like 'resid_post.5', got {type(name).__name__}")
    if kind in GLOBAL_KINDS:
        if layer is not None:
            raise SiteError(f"site '{kind}' takes no layer index")
        return Site(kind)
    if kind not in LAYER_KINDS:
        raise SiteError(f"unknown site '{name}'; sites are {', '.join(GLOBAL_KINDS + LAYER_KINDS)} "
                        f"(layer sites as 'resid_post.5'), or TransformerLens names like 'blocks.5.hook_resid_post'")
    if layer is None:
        raise SiteError(f"site '{kind}' needs a layer, e.g. '{kind}.0' or '{kind}.-1'")
    if not -n_layers <= layer < n_layers:
        raise SiteError(f"layer {layer} out of range for '{name}': the model has {n_layers} layers "
                        f"(0..{n_layers - 1}, or -{n_layers}..-1)")
    return Site(kind, layer % n_layers)


def resolve_position(position, length: int, what: str = "the prompt") -> int:
    """A token position (negative counts from the end) in a sequence of `length` tokens, as 0..length-1."""
    if not isinstance(position, int) or isinstance(position, bool) or not -length <= position < length:
        raise InputError(f"position {position!r} is out of range for {what} ({length} tokens: 0..{length - 1} "
                         f"or -{length}..-1)")
    return position % length


def expand_sites(names, n_layers: int) -> list[Site]:
    """Parse a list of names; 'kind.*' expands to that kind at every layer. Duplicates are dropped, order kept."""
    if isinstance(names, (str, Site)):
        names = [names]
    out: list[Site] = []
    for name in names:
        if isinstance(name, str) and name.endswith(".*"):
            kind = name[:-2]
            if kind not in LAYER_KINDS:
                raise SiteError(f"'{name}': only layer sites expand with '.*' ({', '.join(LAYER_KINDS)})")
            parsed = [Site(kind, i) for i in range(n_layers)]
        else:
            parsed = [parse_site(name, n_layers)]
        out.extend(s for s in parsed if s not in out)
    return out


def _split(name: str) -> tuple[str, int | None]:
    if name in _TL_GLOBAL:
        return _TL_GLOBAL[name], None
    m = re.fullmatch(r"blocks\.(-?\d+)\.(.+)", name)
    if m:
        hook = m.group(2)
        if hook not in _TL_LAYER:
            raise SiteError(f"unknown TransformerLens hook '{name}'; known: "
                            f"{', '.join('blocks.L.' + h for h in _TL_LAYER)}, {', '.join(_TL_GLOBAL)}")
        return _TL_LAYER[hook], int(m.group(1))
    m = re.fullmatch(r"([a-z_]+)\.(-?\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    return name, None
