"""Read and edit activations at sites, with hooks on the unmodified Hugging Face modules.

    with model.trace(read=["resid_post.*"], edits=[lmscope.zero("neurons.3", neurons=[7])]) as tr:
        model.hf(input_ids)            # or model.hf.generate(...): positions count over the whole sequence
    tr["resid_post.5"]                 # [batch, seq, d_model]

Hooks are removed when the block ends, also when its body raises. With `stop_early=True` the forward pass is
cut right after the last site read (the block's body is left at that point, as in baukit's `Trace(stop=True)`).

Resuming from a layer: `resume=(L, resid)` runs the forward from a cached residual stream `resid` = resid_pre.L
([batch, seq, d_model], or broadcastable to it): blocks 0..L-1 are skipped (each passes its input through
untouched) and resid_pre.L is replaced by `resid`, so the model's own code still builds the positions, rotary
embeddings and masks, and blocks L.. compute exactly what they compute in a full run. Sites below resid_pre.L can
be neither read nor edited then. A method that recomputes the same prefix again and again (integrated gradients,
patching sweeps, LRE Jacobians) runs it once and resumes from it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lmscope.core.edits import OPS, Edit
from lmscope.core.errors import EditError, ModelSpecError, SiteError
from lmscope.core.models.adapters import residual_scale
from lmscope.core.models.sites import Site, expand_sites, parse_site


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass after the last site needed; swallowed by `Trace`."""


@dataclass
class _BoundEdit:
    """An `Edit` checked against a model: parsed site, value on the right device, index masks built."""
    site: Site
    op: str
    value: "torch.Tensor | float | None"
    positions: object
    feature_mask: "torch.Tensor | None"   # broadcastable over the site's feature dims
    value_has_seq: bool
    feature_ndim: int
    longest_sequence: int = 0             # for the check that explicit positions existed
    weight: "torch.Tensor | float | None" = None   # interpolate: broadcastable over the site's feature dims
    rows: "torch.Tensor | None" = None    # bool [batch]: the rows this edit applies to (None = all)


def bind_edit(model, edit: Edit) -> _BoundEdit:
    if not isinstance(edit, Edit):
        raise EditError(f"an edit is made with lmscope.add / replace / scale / zero / mean_ablate / project_out, "
                        f"got {type(edit).__name__}")
    site = parse_site(edit.site, model.n_layers)
    check_supported(model, site)
    if edit.op not in OPS:
        raise EditError(f"unknown edit op '{edit.op}'; one of {', '.join(OPS)}")
    if site.kind == "pattern":
        raise SiteError("site 'pattern' is read-only: edit z (per-head outputs) or attn_out instead")
    if site.kind == "resid_mid" and model.parallel:
        raise SiteError(f"resid_mid is not a tensor of {model.adapter.family} with parallel attention (attention and "
                        f"MLP both read resid_pre); edit resid_pre, attn_out or mlp_out instead")
    shape = model.site_shape(site)
    feature_mask, value_shapes = None, [shape]
    if edit.heads is not None:
        if site.kind != "z":
            raise EditError(f"heads= applies to z sites (per-head outputs), not '{site}'")
        heads = _indices(edit.heads, model.n_heads, "head", site)
        feature_mask = torch.zeros(model.n_heads, 1, dtype=torch.bool)
        feature_mask[heads] = True
        value_shapes.append(shape[1:])
    if edit.neurons is not None:
        if site.kind != "neurons":
            raise EditError(f"neurons= applies to neurons sites, not '{site}'")
        neurons = _indices(edit.neurons, model.d_mlp, "neuron", site)
        feature_mask = torch.zeros(model.d_mlp, dtype=torch.bool)
        feature_mask[neurons] = True
    if site.kind == "z" and edit.heads is None:
        value_shapes.append(shape[1:])  # one d_head vector for every head
    value, has_seq = edit.value, False
    weight = None
    if edit.op in ("add", "replace", "project_out", "interpolate"):
        value, has_seq = _check_value(model, site, edit, value_shapes, len(shape))
    if edit.op == "interpolate":
        weight = _check_weight(model, site, edit.weight, shape)
    elif edit.op == "scale":
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise EditError(f"scale on '{site}' takes a number, got {type(value).__name__}")
    _check_positions(edit.positions, site)
    device = model.device
    return _BoundEdit(site, edit.op, value.to(device) if isinstance(value, torch.Tensor) else value,
                      edit.positions, None if feature_mask is None else feature_mask.to(device), has_seq, len(shape),
                      weight=weight.to(device) if isinstance(weight, torch.Tensor) else weight)


def check_supported(model, site: Site) -> None:
    """Sites a family does not have: neurons of a mixture-of-experts MLP (its experts' weights are fused)."""
    if site.kind == "neurons" and not model.adapter.has_neurons:
        raise SiteError(f"'{site}': {model.adapter.family} has a mixture-of-experts MLP whose experts' weights are "
                        f"fused, so there is no neurons site; read or edit mlp_out.{site.layer} (the experts' "
                        f"weighted sum) instead")
    if site.kind in ("q", "k", "v") and not model.adapter.qkv:
        raise SiteError(f"'{site}': the {model.adapter.family} adapter names no q/k/v projections (no q/k/v sites)")
    if site.kind == "attn_in" and not model.adapter.attn_in_norm:
        raise SiteError(f"'{site}': the {model.adapter.family} adapter names no attention input (no attn_in site)")
    if site.kind == "mlp_in" and not model.has_block_module(model.adapter.mlp_in_norm):
        raise SiteError(f"'{site}': this {model.adapter.family} model names no MLP input norm (no mlp_in site; with "
                        f"parallel attention the MLP reads resid_pre)")


def _check_weight(model, site, weight, shape):
    """interpolate's weight: a number, one entry per unit ([n_heads] on z, else the last feature dim), or one entry
    per feature (the site's full feature shape, e.g. [heads, d_head] on q: one weight per q channel)."""
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return float(weight)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dtype != model.dtype:
        raise EditError(f"interpolate on '{site}': weight must be a number or a {model.dtype} tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    units = shape[0] if site.kind == "z" else shape[-1]
    if weight.dim() == 0 or tuple(weight.shape) == tuple(shape):   # one weight per feature, e.g. q channels
        return weight
    if tuple(weight.shape) != (units,):
        raise EditError(f"interpolate on '{site}': weight of shape {tuple(weight.shape)} does not fit; give a "
                        f"number or [{units}] (one per {'head' if site.kind == 'z' else 'feature'})")
    return weight.view(units, 1) if site.kind == "z" else weight


def _indices(spec, size: int, what: str, site: Site) -> list[int]:
    idx = [spec] if isinstance(spec, int) else list(spec)
    if not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise EditError(f"{what}s for '{site}' must be a non-empty list of ints, got {spec!r}")
    bad = [i for i in idx if not -size <= i < size]
    if bad:
        raise EditError(f"{what} {bad[0]} out of range for '{site}': it has {size} {what}s (0..{size - 1})")
    return [i % size for i in idx]


def _check_value(model, site, edit, shapes, feature_ndim):
    value = edit.value
    if isinstance(value, (int, float)) and edit.op in ("replace", "interpolate") and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=model.dtype), False
    if not isinstance(value, torch.Tensor):
        raise EditError(f"{edit.op} on '{site}' needs a tensor, got {type(value).__name__}")
    if not value.is_floating_point() or value.dtype != model.dtype:
        raise EditError(f"{edit.op} on '{site}': value dtype {value.dtype} does not match the model's {model.dtype}; "
                        f"convert it with .to({model.dtype})")
    for shape in shapes:
        n = len(shape)
        if tuple(value.shape[-n:]) == tuple(shape) and value.dim() <= n + 2:
            if edit.op == "project_out" and value.dim() != n:
                break
            if edit.op == "project_out" and not torch.all(value.norm(dim=-1) > 0):
                raise EditError(f"project_out on '{site}': the direction has zero norm")
            # A sequence axis of size 1 broadcasts over positions, like any size-1 axis.
            has_seq = value.dim() > feature_ndim and value.shape[value.dim() - feature_ndim - 1] > 1
            return value, has_seq
    want = " or ".join(str(tuple(s)) for s in shapes)
    raise EditError(f"{edit.op} on '{site}': value of shape {tuple(value.shape)} does not fit; the site's "
                    f"activation ends in {want}" + ("" if edit.op == "project_out" else
                                                     ", optionally preceded by [seq] or [batch, seq]"))


def _check_positions(positions, site):
    if positions is None or isinstance(positions, slice):
        return
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.dim() not in (1, 2):
            raise EditError(f"positions for '{site}' as a tensor must be a boolean mask [seq] or [batch, seq]")
        return
    idx = [positions] if isinstance(positions, int) else positions
    try:
        ok = all(isinstance(i, int) and not isinstance(i, bool) for i in idx) and len(idx) > 0
    except TypeError:
        ok = False
    if not ok:
        raise EditError(f"positions for '{site}' must be an int, a list of ints, a slice or a boolean mask; "
                        f"got {positions!r}")


def _position_mask(bound: _BoundEdit, offset: int, seq: int, device) -> "torch.Tensor | None":
    """Boolean [batch|1, seq] mask of this call's positions that the edit touches (None = all)."""
    spec, total = bound.positions, offset + seq
    bound.longest_sequence = max(bound.longest_sequence, total)
    if spec is None:
        return None
    if isinstance(spec, torch.Tensor):
        mask = spec if spec.dim() == 2 else spec[None]
        full = torch.zeros(mask.shape[0], total, dtype=torch.bool, device=device)
        n = min(total, mask.shape[1])
        full[:, :n] = mask[:, :n].to(device)
        return full[:, offset:]
    idx = range(total)[spec] if isinstance(spec, slice) else ([spec] if isinstance(spec, int) else spec)
    full = torch.zeros(1, total, dtype=torch.bool)
    for i in idx:
        j = i + total if i < 0 else i
        if 0 <= j < total:
            full[0, j] = True
    return full[:, offset:].to(device)


def apply_edit(bound: _BoundEdit, act: torch.Tensor, offset: int,
               row_starts: "torch.Tensor | None" = None) -> torch.Tensor:
    """The activation `act` ([batch, seq, ...], positions offset.. of the sequence) after the edit. With
    `row_starts` (left padding: row r's own token p sits at p + row_starts[r]), positions and per-position values
    count each row's own tokens, and padding is never edited."""
    seq = act.shape[1]
    value = bound.value
    if isinstance(value, torch.Tensor) and value.device != act.device:  # layers spread over devices (device_map)
        value = value.to(act.device)
    if isinstance(value, torch.Tensor) and bound.value_has_seq:
        value = (_row_values(bound, value, act, offset, row_starts) if row_starts is not None
                 else _narrow_value(bound, value, offset, seq))
    if bound.op == "add":
        new = act + value
    elif bound.op == "replace":
        try:
            new = torch.broadcast_to(value, act.shape).to(act.dtype)
        except RuntimeError:
            raise EditError(f"replace on '{bound.site}': value of shape {tuple(value.shape)} does not broadcast to "
                            f"the activation {tuple(act.shape)}") from None
    elif bound.op == "scale":
        new = act * value
    elif bound.op == "zero":
        new = torch.zeros_like(act)
    elif bound.op == "interpolate":
        # this form (not value + w * (act - value)) is exact at w = 1 and w = 0
        weight = bound.weight.to(act.device) if isinstance(bound.weight, torch.Tensor) else bound.weight
        new = weight * act + (1 - weight) * value.to(act.dtype)
    else:  # project_out
        unit = value / value.norm(dim=-1, keepdim=True)
        new = act - (act * unit).sum(-1, keepdim=True) * unit
    mask = (_position_mask(bound, offset, seq, act.device) if row_starts is None
            else _row_position_mask(bound, offset, seq, row_starts.to(act.device)))
    if bound.rows is not None:
        rows = bound.rows.to(act.device)[:, None]
        mask = rows if mask is None else mask & rows
    if mask is not None:
        mask = mask.view(mask.shape + (1,) * bound.feature_ndim)
    if bound.feature_mask is not None:
        features = bound.feature_mask.to(act.device)
        mask = features if mask is None else mask & features
    if mask is None:   # a broadcast or narrowed value is a view: modules may .view() what they get (GPT-2)
        return new if new.is_contiguous() else new.contiguous()
    return torch.where(mask, new, act)


def _narrow_value(bound: _BoundEdit, value: torch.Tensor, offset: int, seq: int) -> torch.Tensor:
    seq_dim = value.dim() - bound.feature_ndim - 1
    if value.shape[seq_dim] < offset + seq:
        raise EditError(f"{bound.op} on '{bound.site}': the value covers {value.shape[seq_dim]} positions, "
                        f"the sequence has {offset + seq}")
    return value.narrow(seq_dim, offset, seq)


def _row_values(bound, value, act, offset, row_starts) -> torch.Tensor:
    """A per-position value read at each row's own positions: [batch, seq, ...] for padded positions offset.."""
    batch, seq = act.shape[:2]
    if value.dim() == bound.feature_ndim + 1:
        value = value[None]
    starts = row_starts.to(act.device)
    local = torch.arange(offset, offset + seq, device=act.device)[None] - starts[:, None]     # [batch, seq]
    longest = int(local[:, -1].max()) + 1
    if value.shape[1] < longest:
        raise EditError(f"{bound.op} on '{bound.site}': the value covers {value.shape[1]} positions, the longest "
                        f"row has {longest}")
    value = value.expand(batch, *value.shape[1:])
    return value[torch.arange(batch, device=act.device)[:, None], local.clamp_min(0)]


def _row_position_mask(bound: _BoundEdit, offset: int, seq: int, row_starts: torch.Tensor) -> torch.Tensor:
    """Boolean [batch, seq] mask for left-padded rows: the edit's positions counted in each row's own tokens
    (negative ones from each row's end), never a padding position."""
    total = offset + seq
    bound.longest_sequence = max(bound.longest_sequence, total)
    spec, batch = bound.positions, len(row_starts)
    full = torch.zeros(batch, total, dtype=torch.bool)
    for r, start in enumerate(row_starts.tolist()):
        own = total - start
        if spec is None:
            full[r, start:] = True
        elif isinstance(spec, torch.Tensor):
            mask = spec if spec.dim() == 1 else spec[r if spec.shape[0] > 1 else 0]
            n = min(own, mask.shape[0])
            full[r, start:start + n] = mask[:n].cpu()
        else:
            idx = range(own)[spec] if isinstance(spec, slice) else ([spec] if isinstance(spec, int) else spec)
            for i in idx:
                j = i + own if i < 0 else i
                if 0 <= j < own:
                    full[r, start + j] = True
    return full[:, offset:].to(row_starts.device)


def _unused_positions(bound: _BoundEdit) -> bool:
    spec, total = bound.positions, bound.longest_sequence
    if spec is None or isinstance(spec, (slice, torch.Tensor)) or total == 0:
        return False
    idx = [spec] if isinstance(spec, int) else spec
    return any(not -total <= i < total for i in idx)


# ---------------------------------------------------------------------------------------------------------------
# Where a site's tensor is, on the module graph: (module, "pre" or "post", get, set).

def _first(x):
    return x if isinstance(x, torch.Tensor) else x[0]


def _with_first(x, new):
    return new if isinstance(x, torch.Tensor) else (new, *x[1:])


@dataclass
class _Location:
    module: torch.nn.Module
    when: str                                   # "pre" (module input) or "post" (module output)
    get: Callable
    set: "Callable | None" = None               # None: read only
    fresh: bool = False                         # always hand the model a copy (it adds into the tensor in place)


def _pre_location(module, view=None, unview=None) -> _Location:
    def get(args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        return view(x) if view else x

    def put(args, kwargs, new):
        new = unview(new) if unview else new
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return _Location(module, "pre", get, put)


def _post_location(module) -> _Location:
    return _Location(module, "post", lambda out: _first(out), lambda out, new: _with_first(out, new))


def _pass_through(*args, **kwargs):
    """A skipped block's forward: its input, untouched (transformers 5 blocks take and return hidden_states)."""
    return args[0] if args else kwargs["hidden_states"]


def _pass_through_pair(*args, **kwargs):
    """The same for blocks that return (hidden_states, attention weights) (Falcon)."""
    return _pass_through(*args, **kwargs), None


def _check_resume(model, resume, sites) -> tuple[int, torch.Tensor]:
    try:
        layer, start = resume
    except (TypeError, ValueError):
        raise SiteError("resume takes (layer, resid_pre activation)") from None
    if not isinstance(layer, int) or isinstance(layer, bool) or not -model.n_layers <= layer < model.n_layers:
        raise SiteError(f"resume layer {layer!r} out of range: the model has {model.n_layers} layers")
    layer %= model.n_layers
    if not isinstance(start, torch.Tensor) or start.shape[-1] != model.d_model or start.dim() > 3:
        raise EditError(f"resume needs resid_pre.{layer} as a [batch, seq, {model.d_model}] tensor, got "
                        f"{getattr(start, 'shape', type(start).__name__)}")
    first = parse_site(f"resid_pre.{layer}", model.n_layers).order_key(model.n_layers)
    below = [s for s in sites if s.order_key(model.n_layers) < first]
    if below:
        raise SiteError(f"the run resumes at resid_pre.{layer}: site '{below[0]}' lies below it and is not computed")
    return layer, start


def _added_location(module, scale: "float | None" = None, fresh: bool = False) -> _Location:
    """What a sublayer adds to the residual stream: the module's output, times the family's residual scale where it
    has one (the same product the block computes). An edit is written back as the module output that gives it:
    output + (new - output * scale) / scale, exact when the edit changed nothing."""
    def get(out):
        return _first(out) if scale is None else _first(out) * scale

    def put(out, new):
        if scale is not None:
            new = _first(out) + (new - _first(out) * scale) / scale
        if fresh:
            new = new.clone(memory_format=torch.contiguous_format)
        return _with_first(out, new)
    return _Location(module, "post", get, put, fresh)


def set_attention(hf, implementation: str) -> None:
    """Switch the attention implementation. Families that read it from the config at run time and refuse the switch
    (Falcon) get the config value set directly."""
    can_set = getattr(hf, "_can_set_attn_implementation", lambda: True)
    if can_set():
        hf.set_attn_implementation(implementation)
    if hf.config._attn_implementation != implementation:
        hf.config._attn_implementation = implementation


def qkv_path(adapter, kind: str) -> str:
    """The path, in a block, of the module whose output holds the q, k or v site: its own projection, or the one
    fused projection (Adapter.qkv_layout)."""
    return adapter.qkv["qkv".index(kind)] if adapter.qkv_layout == "separate" else adapter.qkv[0]


def qkv_module(model, layer: int, kind: str) -> nn.Module:
    """The module (named by the adapter) whose output holds the q.L, k.L or v.L site (qkv_path)."""
    return model.block_module(layer, qkv_path(model.adapter, kind))


def _qkv_location(model, site: Site) -> _Location:
    """q.L / k.L / v.L at the output of the projection(s) named by the adapter (see Adapter.qkv_layout), viewed as
    [..., heads, d_head]; setting one rebuilds the fused output around it (no in-place write, so gradients flow)."""
    a, which = model.adapter, "qkv".index(site.kind)
    if not a.qkv:
        raise SiteError(f"'{site}': the {a.family} adapter names no q/k/v projections")
    dh, heads = model.d_head, (model.n_heads, model.n_kv_heads, model.n_kv_heads)
    module = qkv_module(model, site.layer, site.kind)
    if a.qkv_layout == "separate":
        n = heads[which]
        return _Location(module, "post", lambda out: out.reshape(*out.shape[:-1], n, dh),
                         lambda out, new: new.reshape(*new.shape[:-2], n * dh))
    if a.qkv_layout == "concat":
        widths = [h * dh for h in heads]
        start, n = sum(widths[:which]), heads[which]

        def get(out):
            return out[..., start:start + widths[which]].reshape(*out.shape[:-1], n, dh)

        def put(out, new):
            return torch.cat([out[..., :start], new.reshape(*new.shape[:-2], n * dh),
                              out[..., start + widths[which]:]], -1)
        return _Location(module, "post", get, put)
    if a.qkv_layout == "per_head":
        h = model.n_heads

        def get(out):
            return out.reshape(*out.shape[:-1], h, 3 * dh)[..., which * dh:(which + 1) * dh]

        def put(out, new):
            per_head = out.reshape(*out.shape[:-1], h, 3 * dh)
            parts = [per_head[..., i * dh:(i + 1) * dh] if i != which else new.to(out.dtype) for i in range(3)]
            return torch.cat(parts, -1).reshape(out.shape)
        return _Location(module, "post", get, put)
    raise SiteError(f"unknown qkv_layout {a.qkv_layout!r} in the {a.family} adapter")


class Trace:
    """Context manager that reads and edits sites while the block runs. See the module docstring."""

    def __init__(self, model, read=(), edits=(), *, stop_early: bool = False, detach: bool = True,
                 to_cpu: bool = False, grad: bool = False, resume: "tuple[int, torch.Tensor] | None" = None,
                 row_starts: "torch.Tensor | None" = None, edit_rows=None):
        self.model = model
        self.read = expand_sites(read, model.n_layers) if read else []
        for site in self.read:
            check_supported(model, site)
        self.edits = [bind_edit(model, e) for e in (edits or [])]
        # left-padded batches: row r's own token p is at p + row_starts[r]; edit_rows[i]: rows edit i applies to
        self.row_starts = None if row_starts is None else torch.as_tensor(row_starts).to(model.device)
        for bound, rows in zip(self.edits, edit_rows or []):
            bound.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.bool).to(model.device)
        self.resume_layer = None
        if resume is not None:
            self.resume_layer, start = _check_resume(model, resume, self.read + [b.site for b in self.edits])
            self.edits.insert(0, bind_edit(model, Edit(f"resid_pre.{self.resume_layer}", "replace", start)))
        self._skipped: list[tuple[torch.nn.Module, object]] = []   # (block, its own instance forward or None)
        self.warned_non_finite = False
        self.stop_early, self.detach, self.to_cpu, self.grad = stop_early, detach and not grad, to_cpu, grad
        self.stopped = False
        self._acts: dict[Site, list[torch.Tensor]] = {}
        self._handles: list = []
        self._offset = 0
        self._resid_pre: dict[int, torch.Tensor] = {}
        self._restore_attn: str | None = None
        n = model.n_layers
        self._last_read = max(self.read, key=lambda s: s.order_key(n)) if self.read else None

    # -- public --------------------------------------------------------------------------------------------------
    def __getitem__(self, site) -> torch.Tensor:
        site = parse_site(site, self.model.n_layers)
        if site not in self._acts:
            raise SiteError(f"site '{site}' was not read in this trace (read: {', '.join(map(str, self.read)) or 'none'})"
                            + (" - the forward pass stopped early" if self.stopped else ""))
        calls = self._acts[site]
        if len(calls) == 1:
            return calls[0]
        if site.kind == "pattern":
            raise SiteError("pattern was read in several forward calls (generation); use trace.calls('pattern.L')")
        return torch.cat(calls, dim=1)

    def calls(self, site) -> list[torch.Tensor]:
        """The site's tensor for each forward call since the sequence started (one per generated token)."""
        return list(self._acts.get(parse_site(site, self.model.n_layers), []))

    def acts(self) -> dict[str, torch.Tensor]:
        return {str(s): self[s] for s in self.read if s in self._acts}

    # -- hooks -----------------------------------------------------------------------------------------------------
    def __enter__(self):
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._remove()
        if exc_type is _StopForward:
            self.stopped = True
            return True
        if exc_type is None:
            for bound in self.edits:
                if _unused_positions(bound):
                    raise EditError(f"{bound.op} on '{bound.site}': position {bound.positions} is outside the "
                                    f"sequence of {bound.longest_sequence} tokens")
        return False

    def _remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block, own in self._skipped:
            if own is None:
                del block.forward      # the class's own forward again
            else:
                block.forward = own    # e.g. accelerate's wrapper of an offloaded block
        self._skipped.clear()
        if self._restore_attn is not None:
            set_attention(self.model.hf, self._restore_attn)
            self._restore_attn = None

    def _install(self):
        model = self.model
        if any(s.kind == "pattern" for s in self.read) and model.hf.config._attn_implementation != "eager":
            # Only eager attention materialises the pattern; switch for this trace alone.
            self._restore_attn = model.hf.config._attn_implementation
            set_attention(model.hf, "eager")
        self._handles.append(model.hf.register_forward_pre_hook(self._track_offset, with_kwargs=True))
        for layer in range(self.resume_layer or 0):
            block = model.block_module(layer)
            self._skipped.append((block, vars(block).get("forward")))
            block.forward = _pass_through_pair if model.adapter.block_returns_pair else _pass_through
        edits_by_site: dict[Site, list[_BoundEdit]] = {}
        for bound in self.edits:
            edits_by_site.setdefault(bound.site, []).append(bound)
        n = model.n_layers
        sites = sorted(set(self.read) | set(edits_by_site), key=lambda s: s.order_key(n))
        stash_layers = {s.layer for s in sites if s.kind == "resid_mid"}
        for site in sites:
            reads, edits = site in self.read, edits_by_site.get(site, [])
            if site.kind == "resid_mid":
                if edits:
                    self._hook(self._resid_mid_location(site.layer, settable=True), site, edits, False)
                if reads:
                    loc = (self._resid_mid_location(site.layer, settable=False) if model.parallel
                           else _pre_location(model.block_module(site.layer, model.adapter.mlp_in_norm)))
                    self._hook(loc, site, [], True)
                continue
            self._hook(self._location(site), site, edits, reads)
            if site.kind == "resid_pre" and site.layer in stash_layers:
                self._stash_resid_pre(site.layer)
                stash_layers.discard(site.layer)
        for layer in stash_layers:  # resid_mid needs resid_pre, which is not itself a site here
            self._stash_resid_pre(layer)
        if self.edits:  # registered last: it sees the logits after any edit of them
            self._handles.append(model.hf.register_forward_hook(self._warn_non_finite))

    def _warn_non_finite(self, module, args, output):
        """Warn (once per trace) when the edited forward's logits hold NaN or infinity, e.g. a float16 overflow."""
        logits = getattr(output, "logits", None)
        if self.warned_non_finite or not isinstance(logits, torch.Tensor):
            return
        bad = int((~torch.isfinite(logits)).sum())
        if bad:
            self.warned_non_finite = True
            dtype = logits.dtype
            hint = (f"; {dtype} overflows past {torch.finfo(dtype).max:g}: use smaller edit values or float32/bfloat16"
                    if dtype == torch.float16 else "")
            warnings.warn(f"lmscope: the logits hold {bad} non-finite values (NaN or infinity) of {logits.numel()} "
                          f"under the edits {', '.join(f'{b.op} {b.site}' for b in self.edits)}{hint}",
                          RuntimeWarning, stacklevel=2)

    def _track_offset(self, module, args, kwargs):
        # transformers 5 names the KV cache `cache`; older releases `past_key_values`
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and hasattr(cache, "get_seq_length"):
            self._offset = int(cache.get_seq_length())
        elif kwargs.get("cache_position") is not None:
            self._offset = int(kwargs["cache_position"].reshape(-1)[0])
        else:
            self._offset = 0

    def _stash_resid_pre(self, layer: int):
        loc = _pre_location(self.model.block_module(layer))

        def stash(module, args, kwargs):
            self._resid_pre[layer] = loc.get(args, kwargs)
        # registered after any resid_pre edit on the same module, so it stashes the edited stream
        self._handles.append(loc.module.register_forward_pre_hook(stash, with_kwargs=True))

    def _resid_mid_location(self, layer: int, settable: bool) -> _Location:
        """resid_mid as resid_pre + attn_out, seen at the module whose output attention adds. Setting it rewrites
        what attention adds, since the block keeps its own reference to resid_pre for the skip connection."""
        model = self.model
        added = self._location(Site("attn_out", layer))
        get = lambda out: self._resid_pre[layer] + added.get(out)  # noqa: E731
        # written back as a change of what attention adds: exact when the edit changed nothing
        put = (lambda out, new: added.set(out, added.get(out) + (new - get(out)))) if settable else None
        return _Location(added.module, "post", get, put)

    def _location(self, site: Site) -> _Location:
        model, kind, layer = self.model, site.kind, site.layer
        a = model.adapter
        if kind == "embed":
            return _post_location(model.module(a.embed))
        if kind == "final_norm":
            return _post_location(model.module(a.final_norm))
        if kind == "logits":
            def set_logits(out, new):
                out.logits = new
                return out
            return _Location(model.hf, "post", lambda out: out.logits, set_logits)
        if kind == "resid_pre":
            return _pre_location(model.block_module(layer))
        if kind == "resid_post":
            return _post_location(model.block_module(layer))
        if kind == "attn_out":
            return _added_location(model.block_module(layer, a.attn_out), residual_scale(a, model.hf.config))
        if kind == "mlp_out":
            return _added_location(model.block_module(layer, a.mlp_out), residual_scale(a, model.hf.config),
                                   fresh=a.mlp_out_reused)
        if kind == "neurons":
            return _pre_location(model.block_module(layer, a.down_proj))
        if kind == "attn_in":
            if not a.attn_in_norm:
                raise SiteError(f"'{site}': the {a.family} adapter names no attention input norm")
            return _pre_location(model.block_module(layer, a.attn_in_norm))
        if kind == "mlp_in":
            return _pre_location(model.block_module(layer, a.mlp_in_norm))
        if kind in ("q", "k", "v"):
            return _qkv_location(model, site)
        if kind == "z":
            heads, d_head = model.n_heads, model.d_head
            return _pre_location(model.block_module(layer, a.o_proj),
                                 view=lambda x: x.reshape(*x.shape[:-1], heads, d_head),
                                 unview=lambda x: x.reshape(*x.shape[:-2], heads * d_head))
        if kind == "pattern":
            def get_pattern(out):
                if isinstance(out, torch.Tensor) or len(out) < 2 or out[1] is None:
                    raise SiteError(f"'{site}': this attention module returned no pattern")
                return out[1]
            return _Location(model.block_module(layer, a.attn), "post", get_pattern, None)
        raise SiteError(f"no location for site '{site}'")  # unreachable: parse_site checks kinds

    def _hook(self, loc: _Location, site: Site, edits: list[_BoundEdit], reads: bool):
        stop_here = self.stop_early and site == self._last_read
        # with grad=True a read is handed back to the model, so that the tensor recorded is the one the model goes on
        # with and has a gradient: where `get` computes a new tensor (a residual scale, a q/k/v view), it would not
        # (an exact no-op: put(get(x)) == x)
        hand_back = bool(edits) or loc.fresh or (self.grad and reads and loc.set is not None)

        def process(act):
            for bound in edits:
                act = apply_edit(bound, act, self._offset, self.row_starts)
            if reads:
                self._record(site, act)
            if stop_here:
                raise _StopForward
            return act

        if loc.when == "pre":
            def pre_hook(module, args, kwargs):
                act = process(loc.get(args, kwargs))
                return loc.set(args, kwargs, act) if hand_back else None
            self._handles.append(loc.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            def post_hook(module, args, output):
                act = process(loc.get(output))
                return loc.set(output, act) if hand_back else None
            self._handles.append(loc.module.register_forward_hook(post_hook))

    def _record(self, site: Site, act: torch.Tensor):
        if self.detach:
            act = act.detach()
        elif self.grad and act.requires_grad:
            act.retain_grad()
        if self.to_cpu:
            act = act.to("cpu")
        calls = self._acts.setdefault(site, [])
        if self._offset == 0:  # a new sequence starts
            calls.clear()
        calls.append(act)


def resident(module: nn.Module, name: str) -> "torch.Tensor | None":
    """The module's parameter `name`, detached; where accelerate offloaded it (device_map with CPU or disk offload:
    a meta tensor in place), a copy loaded for the moment onto the module's execution device."""
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor) or not t.is_meta:
        return t.detach() if isinstance(t, torch.Tensor) else t
    from accelerate.utils import align_module_device      # only a model accelerate dispatched has meta weights
    with align_module_device(module):
        return getattr(module, name).detach().clone()


def forward_with(module: nn.Module, args: tuple, **params: torch.Tensor):
    """The module's own forward on `args` with the parameters named in `params` replaced and the others resident
    (offloaded by accelerate: copies loaded for the moment). It runs its class's forward, past an accelerate
    wrapper, which would load the stored weights over the replaced ones; the module's parameters are put back."""
    saved = dict(module._parameters)
    try:
        for name, value in saved.items():
            if value is not None:
                module._parameters[name] = params[name] if name in params else resident(module, name)
        return type(module).forward(module, *args)
    finally:
        module._parameters.update(saved)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """[out, in] of an nn.Linear or GPT-2 Conv1D (whose weight is stored [in, out]), detached (offloaded: a copy)."""
    w = resident(module, "weight")
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ModelSpecError(f"{type(module).__name__} has no 2-D weight")
    return w.T if hasattr(module, "nf") else w


def qkv_view(model, site, output: torch.Tensor) -> torch.Tensor:
    """The q.L / k.L / v.L part of a tensor laid out like the q/k/v projection's output (last dim), as
    [..., heads, d_head]: e.g. the projection's weight transposed, [d_in, out] -> [d_in, heads, d_head]."""
    return _qkv_location(model, parse_site(site, model.n_layers)).get(output)
