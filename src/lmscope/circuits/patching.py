"""Activation patching between the clean and the corrupt prompts of a task.

Denoising (the default) runs the CORRUPT prompts and puts one activation from the CLEAN run back: how much of the
clean behaviour does that one site restore? Noising runs the CLEAN prompts with one activation from the CORRUPT run:
how much does losing it hurt? Either way the effect is reported raw (the mean metric of the patched runs) and
normalised as

    (m(patched) - m(corrupt)) / (m(clean) - m(corrupt))      means over prompts, float64

so denoising reads 0 = nothing restored, 1 = the clean behaviour, and noising reads 1 = no harm, 0 = the corrupt
behaviour. Sites: any residual-width kind (resid_pre, resid_mid, resid_post, attn_out, mlp_out), one layer and
one position at a time (a layer x position map; prompts must align, so the task's largest group of one template and
one length is used), or all positions at once (per_position=False: one number per layer); z, one head of one
layer at all positions (a layer x head map). Every patched run is one real forward pass with an lmscope `replace`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from tqdm import tqdm

from lmscope.core.edits import replace
from lmscope.core.errors import InputError
from lmscope.core.runs import on_cache, position_kwargs, prefix_cache as kv_prefix
from lmscope.results.base import Result
from lmscope.circuits.tasks import (TaskSet, align_changes, by_first_change, first_change, last_real,
                                    task_last_logits)

POSITION_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
DIRECTIONS = ("denoising", "noising")


@dataclass
class PatchResult(Result, kind="activation_patching"):
    model: str
    task: str
    metric_name: str
    direction: str                       # denoising: clean into corrupt; noising: corrupt into clean
    n_prompts: int
    rows: list[int]                      # the task's prompts used
    clean_metric: float                  # mean metric of the unpatched clean / corrupt runs
    corrupt_metric: float
    tokens: list[str]                    # position labels: the first used prompt's clean tokens ("" if unaligned)
    effects: dict[str, list[list[float]]]   # site kind -> [layer][x], normalised (see module docstring)
    raw: dict[str, list[list[float]]]       # site kind -> [layer][x], mean patched metric
    axes: dict[str, str]                 # site kind -> what x is: "position", "head" or "all positions"
    layers: list[int]
    n_forwards: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def top(self, kind: str, n: int = 5) -> list[tuple[int, int, float]]:
        """(layer, x, normalised effect) with the largest |effect - baseline|: 0 for denoising, 1 for noising."""
        base = 0.0 if self.direction == "denoising" else 1.0
        cells = [(self.layers[i], j, v) for i, row in enumerate(self.effects[kind]) for j, v in enumerate(row)
                 if not math.isnan(v)]
        return sorted(cells, key=lambda c: -abs(c[2] - base))[:n]

    def figures(self) -> list:
        return [self.figure(k) for k in self.effects]

    def figure(self, kind: "str | None" = None):
        """The heatmap of one site kind (default: the first)."""
        kind = kind or next(iter(self.effects))
        z = self.effects[kind]
        axis = self.axes[kind]
        if axis == "position":
            x = [f"{i}:{t}" for i, t in enumerate(self.tokens)]
        elif axis == "head":
            x = [f"head {h}" for h in range(len(z[0]))]
        else:
            x = ["all positions"]
        fig = go.Figure(go.Heatmap(z=z, x=x, y=[f"L{layer}" for layer in self.layers], colorscale="RdBu",
                                   zmid=0 if self.direction == "denoising" else 1,
                                   colorbar={"title": "normalised"},
                                   customdata=self.raw[kind],
                                   hovertemplate="%{y} %{x}<br>effect %{z:.3f}<br>metric %{customdata:.3f}"
                                                 "<extra></extra>"))
        fig.update_layout(title=f"{self.direction} {kind}: {self.task} ({self.metric_name}; clean "
                                f"{self.clean_metric:.3f}, corrupt {self.corrupt_metric:.3f}, n={self.n_prompts})",
                          xaxis_title=axis, yaxis_title="layer", height=max(420, 18 * len(self.layers) + 160),
                          width=max(600, 48 * len(x) + 250))
        return fig

    def title(self) -> str:
        return f"Activation patching - {self.task}"

    def page_intro(self) -> str:
        return (f"{self.model}. {self.direction}: "
                + ("corrupt prompts with one clean activation put back" if self.direction == "denoising"
                   else "clean prompts with one corrupt activation put in")
                + f". Effect = (m(patched) - m(corrupt)) / (m(clean) - m(corrupt)), means over "
                f"{self.n_prompts} prompts; clean {self.clean_metric:.4f}, corrupt "
                f"{self.corrupt_metric:.4f}. A cell is null in the JSON where the metric gap is 0 or the "
                f"position does not exist. {' '.join(self.notes)}")

    def summary(self, n: int = 5) -> str:
        lines = [f"activation patching | {self.model} | {self.task} | {self.direction} | {self.n_prompts} prompts | "
                 f"{self.n_forwards} forwards in {self.seconds:.1f}s",
                 f"metric {self.metric_name}: clean {self.clean_metric:.4f}, corrupt {self.corrupt_metric:.4f}"]
        lines += [f"note: {note}" for note in self.notes]
        for kind in self.effects:
            cells = ", ".join(
                f"L{layer} {self._label(kind, x)} {v:+.3f}" for layer, x, v in self.top(kind, n))
            lines.append(f"{kind:<10} ({self.axes[kind]}) largest: {cells}")
        return "\n".join(lines)

    def _label(self, kind, x) -> str:
        axis = self.axes[kind]
        if axis == "position":
            return f"pos {x} {self.tokens[x]!r}"
        return f"h{x}" if axis == "head" else "all"


MAX_BATCH_ROWS = 1024     # layer_batch: prompts x layers of one pass at most (more layers: several passes)


def _check_sites(model, sites) -> list[str]:
    if isinstance(sites, str):
        sites = [s for s in sites.replace(",", " ").split()]
    kinds = list(dict.fromkeys(sites))
    bad = [k for k in kinds if k not in POSITION_KINDS + ("z",)]
    if not kinds or bad:
        raise InputError(f"patching sites are site kinds, one or more of {', '.join(POSITION_KINDS + ('z',))}; "
                         f"got {bad or 'none'}")
    if "resid_mid" in kinds and model.parallel:
        raise InputError(f"resid_mid is not a tensor of {model.adapter.family} (parallel attention)")
    return kinds


def activation_patching(model, task: TaskSet, sites=("resid_pre", "attn_out", "mlp_out", "z"), *,
                        direction: str = "denoising", per_position: bool = True, layers=None,
                        batch_size: int = 32, skip_equal: bool = True, prefix_cache: bool = True,
                        resume: bool = True, head_batch: bool = True, layer_batch: bool = True,
                        progress: bool = False) -> PatchResult:
    """Patch every (site kind, layer, position) or (z, layer, head) between the task's clean and corrupt runs.
    skip_equal: where the source activation equals the one it would replace (bit for bit, every prompt of the
    batch, take the unpatched run's metric instead of running the identical forward pass again.
    prefix_cache: positions before the first token where clean and corrupt differ are the same in both runs;
    compute them once per batch (the model's KV cache) and run each patch on the rest only; the prompts are
    batched in the order of their first change (tasks.by_first_change), so a batch shares a long prefix, and
    without position maps each row's own first change sits at one column (tasks.align_changes: padding inside the
    rows, position ids per row), so the cache holds every row's unchanged tokens. Equal to the full pass up to
    float rounding (the attention sums are split differently, batches hold other prompts); prefix_cache=False for
    bit-exact runs.
    resume: each patched run starts at the patched layer from the target run's cached resid_pre (the blocks below
    compute exactly what the unpatched run computed), and with prefix_cache at the patched position (a patch at
    position x changes nothing before x). head_batch (with resume): the z patches of one layer run as one batch,
    every head patched in its own copy of the prompts; equal to one run per head up to float rounding (a larger
    batch: ~1e-7 relative here), head_batch=False for bit-exact numbers. layer_batch (with resume, on position
    maps): the patches of one site kind at one position run as one batch over every layer, copy j of the prompts
    patched at layer j only, resumed from the lowest of those layers (the copies below their own layer compute the
    unpatched run again: more arithmetic, far fewer calls); equal to one run per layer up to float rounding.
    With prefix_cache=False, head_batch=False and layer_batch=False the numbers are bit for bit those of
    resume=False (the same blocks compute on the same inputs)."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not isinstance(task, TaskSet):
        raise InputError(f"activation_patching takes a TaskSet (lmscope.circuits.load_circuit_task), got "
                         f"{type(task).__name__}")
    kinds = _check_sites(model, sites)
    n = model.n_layers
    layers = _layers(layers, n)
    notes, rows = [], list(range(len(task)))
    aligned = len({len(c) for c in task.clean}) == 1
    if per_position and any(k != "z" for k in kinds) and not aligned:
        rows = task.largest_group()
        notes.append(f"prompts differ in length: the layer x position maps use the largest group of one template "
                     f"and one length ({len(rows)} of {len(task)} prompts, template {task.templates[rows[0]]})")
        task = task.subset(rows)
    seq, shown = len(task.clean[0]), task.clean[0]
    if prefix_cache:     # the sums are over prompts, so the order is free: batches that share longer prefixes
        task = by_first_change(task)
    plan = []                                           # (kind, layer, x) per patched run
    for kind in kinds:
        xs = range(model.n_heads) if kind == "z" else (range(seq) if per_position else [None])
        plan += [(kind, layer, x) for layer in layers for x in xs]
    sums = torch.zeros(len(plan), dtype=torch.float64)
    skipped = prefixed = 0
    clean_sum = corrupt_sum = 0.0
    reads = list(dict.fromkeys([f"{k}.{layer}" for k in kinds for layer in layers]
                               + ([f"resid_pre.{layer}" for layer in layers] if resume else [])))
    bar = tqdm(total=len(plan) * math.ceil(len(task) / batch_size), unit="fwd", desc="patching", disable=not progress)
    start = time.perf_counter()
    # without position maps, each row's own first change can sit at one column (tasks.align_changes): the prefix
    # cache then holds every row's unchanged tokens and each patched run computes only what follows the change
    ragged = prefix_cache and not (per_position and any(k != "z" for k in kinds))
    with torch.no_grad():
        for clean, corrupt, mask, batch_rows in task.batches(model, batch_size):
            positions, first = None, 0            # first: the prefix cache's length (0: none)
            if ragged:
                clean, corrupt, mask, positions, first = align_changes(clean, corrupt, mask)
            elif prefix_cache:
                first = first_change(clean, corrupt, mask)
            clean_logits, clean_acts = task_last_logits(model, clean, mask, read=reads, positions=positions)
            corrupt_logits, corrupt_acts = task_last_logits(model, corrupt, mask, read=reads, positions=positions)
            clean_sum += float(task.metric(clean_logits, batch_rows).double().sum())
            corrupt_sum += float(task.metric(corrupt_logits, batch_rows).double().sum())
            if direction == "denoising":
                source, target, target_acts, target_logits = clean_acts, corrupt, corrupt_acts, corrupt_logits
            else:
                source, target, target_acts, target_logits = corrupt_acts, clean, clean_acts, clean_logits
            unpatched = task.metric(target_logits, batch_rows).double().sum()
            last_start = int(mask.sum(1).min()) - 1
            prefixes: dict[int, _Prefix] = {}
            pending: dict[int, list[tuple[int, int]]] = {}     # layer -> (plan index, head) of z patches to run
            by_position: dict[tuple, list[tuple[int, int]]] = {}   # (kind, x) -> (plan index, layer) to run
            for i, (kind, layer, x) in enumerate(plan):
                site = f"{kind}.{layer}"
                if skip_equal and _same(source[site], target_acts[site], kind, x):
                    # putting back equal values changes nothing: the result is the unpatched run, exactly
                    sums[i] += unpatched
                    skipped += 1
                    bar.update(1)
                    continue
                if kind == "z" and resume and head_batch:     # all heads of the layer in one batch, below
                    pending.setdefault(layer, []).append((i, x))
                    continue
                if kind != "z" and x is not None and resume and layer_batch:   # all layers in one batch, below
                    by_position.setdefault((kind, x), []).append((i, layer))
                    continue
                if kind == "z":
                    edit = replace(site, source[site], heads=[x])
                else:
                    edit = replace(site, source[site], positions=None if x is None else [x])
                begin = first
                if resume and prefix_cache and x is not None and kind != "z":
                    begin = min(max(first, x), last_start)     # the patch at x changes nothing before x
                from_layer = (layer, target_acts[f"resid_pre.{layer}"]) if resume else None
                if begin > 0 and begin not in prefixes:       # built at the first patch that needs it
                    prefixes[begin] = _Prefix(model, target, mask, begin, positions)
                    prefixed += len(prefixes) == 1
                if begin > 0:
                    logits = prefixes[begin].logits([edit], from_layer)
                elif resume:
                    logits = _resumed_logits(model, target, mask, [edit], from_layer)
                else:
                    logits = task_last_logits(model, target, mask, [edit])[0]
                sums[i] += task.metric(logits, batch_rows).double().sum()
                bar.update(1)
            for layer, cells in pending.items():
                if first > 0 and first not in prefixes:
                    prefixes[first] = _Prefix(model, target, mask, first, positions)
                    prefixed += len(prefixes) == 1
                metric = _patch_heads(model, task, batch_rows, source, target_acts, target, mask, layer,
                                      [h for _, h in cells], prefixes.get(first))
                for (i, _), value in zip(cells, metric):
                    sums[i] += value
                bar.update(len(cells))
            per_pass = max(1, MAX_BATCH_ROWS // len(batch_rows))     # layers per pass: bounded memory
            for (kind, x), all_cells in by_position.items():
                begin = min(max(first, x), last_start) if prefix_cache else 0
                if begin > 0 and begin not in prefixes:
                    prefixes[begin] = _Prefix(model, target, mask, begin, positions)
                    prefixed += len(prefixes) == 1
                for at in range(0, len(all_cells), per_pass):
                    cells = all_cells[at:at + per_pass]
                    metric = _patch_layers(model, task, batch_rows, source, target_acts, target, mask, kind, x,
                                           [layer for _, layer in cells], prefixes.get(begin))
                    for (i, _), value in zip(cells, metric):
                        sums[i] += value
                    bar.update(len(cells))
    bar.close()
    count = len(task)
    m_clean, m_corrupt = clean_sum / count, corrupt_sum / count
    gap = m_clean - m_corrupt
    if abs(gap) < 1e-6:
        notes.append("clean and corrupt metrics are equal: normalised effects are undefined (NaN)")
    means = (sums / count).tolist()
    effects: dict[str, list[list[float]]] = {}
    raw: dict[str, list[list[float]]] = {}
    for (kind, layer, x), value in zip(plan, means):
        raw.setdefault(kind, {}).setdefault(layer, []).append(value)
    for kind in kinds:
        raw[kind] = [raw[kind][layer] for layer in layers]
        effects[kind] = [[(v - m_corrupt) / gap if abs(gap) >= 1e-6 else float("nan") for v in row]
                         for row in raw[kind]]
    n_batches = math.ceil(count / batch_size)
    if skipped:
        notes.append(f"{skipped} of {len(plan) * n_batches} patched runs were skipped: the clean and corrupt "
                     f"activations there are equal (e.g. positions before the first changed token), so the patched "
                     f"run is the unpatched one")
    if prefixed:
        notes.append(f"prefix cache: in {prefixed} of {n_batches} batches the positions before the first changed "
                     f"token" + (" (before the patched position, on position maps)" if resume else "")
                     + " were computed once and each patched run computed the rest")
    axes = {k: "head" if k == "z" else ("position" if per_position else "all positions") for k in kinds}
    tokens = model.to_str_tokens(shown) if all(len(c) == seq for c in task.clean) else []
    return PatchResult(model.spec, task.name, task.metric_name, direction, count, rows, m_clean, m_corrupt,
                       tokens, effects, raw, axes, layers, (len(plan) + 2) * n_batches - skipped,
                       time.perf_counter() - start, notes)


class _Prefix:
    """The target run's first `start` positions, computed once with the model's own KV cache: patched runs then
    compute only the positions from `start` on. Valid because every position before `start` has the same tokens
    in the clean and the corrupt prompt, hence the same activations in both runs (the models are causal)."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, start: int,
                 positions: "torch.Tensor | None" = None):
        """positions: each token's position id where the rows are padded inside (tasks.align_changes)."""
        self.model, self.ids, self.mask, self.start, self.positions = model, ids, mask, start, positions
        self.cache = kv_prefix(model, ids[:, :start], mask[:, :start],
                               None if positions is None else positions[:, :start])

    def logits(self, edits, resume=None, copies: int = 1) -> torch.Tensor:
        """Last-token logits of the target with edits; with copies > 1 every row is repeated that many times in
        place (row b * copies + j), the edits' values and the resumed stream given for the repeated batch."""
        model, start = self.model, self.start
        last_block = f"resid_post.{model.n_layers - 1}"
        ids, mask = self.ids.repeat_interleave(copies, 0), self.mask.repeat_interleave(copies, 0)
        # the trace counts positions over prefix + suffix, so edits' positions and full-length values (the resumed
        # resid_pre too) apply as is; skipped blocks leave their cache layers as they are, which nothing reads
        positions = None if self.positions is None else self.positions.repeat_interleave(copies, 0)
        with model.trace([last_block], edits, stop_early=True, resume=resume) as tr:
            model.hf(input_ids=ids[:, start:], attention_mask=mask, **position_kwargs(positions, start),
                     **on_cache(model, self.cache, rows=copies))
        last = last_real(mask, start)
        return model.unembed(tr[last_block][torch.arange(len(last), device=last.device), last])


def _patch_heads(model, task, rows, source, target_acts, target, mask, layer, heads, prefix) -> list[float]:
    """The summed metric of each patch 'head h of z.layer from the source run' for h in heads, all in one batch
    resumed at the layer: copy j of every prompt gets z.layer = the target's own z with head heads[j] from the
    source (the target's z is what the resumed block computes again: the same input, the same arithmetic)."""
    site, c = f"z.{layer}", len(heads)
    value = target_acts[site].repeat_interleave(c, 0).clone()
    for j, h in enumerate(heads):
        value[j::c, :, h] = source[site][:, :, h]
    return _copies_metric(model, task, rows, target_acts, target, mask, layer, [replace(site, value)], c, prefix)


def _patch_layers(model, task, rows, source, target_acts, target, mask, kind, x, layers, prefix) -> list[float]:
    """The summed metric of each patch 'kind.layer at position x from the source run' for layer in layers, all in
    one batch resumed at the lowest layer: copy j of every prompt is patched at layers[j] only."""
    c, seq = len(layers), target.shape[1]
    n = target.shape[0]
    copy_of_row = torch.arange(n * c, device=target.device) % c
    patches = []
    for j, layer in enumerate(layers):
        where = torch.zeros(n * c, seq, dtype=torch.bool, device=target.device)
        where[copy_of_row == j, x] = True
        site = f"{kind}.{layer}"
        patches.append(replace(site, source[site].repeat_interleave(c, 0), positions=where))
    return _copies_metric(model, task, rows, target_acts, target, mask, min(layers), patches, c, prefix)


def _copies_metric(model, task, rows, target_acts, target, mask, layer, edits, c, prefix) -> list[float]:
    """Run c copies of every prompt (row b * c + j) with `edits`, resumed at `layer` from the target's resid_pre
    (on the prefix cache if given); the metric of copy j summed over the prompts, for each j."""
    resume = (layer, target_acts[f"resid_pre.{layer}"].repeat_interleave(c, 0))
    if prefix is not None:
        logits = prefix.logits(edits, resume, copies=c)
    else:
        logits = _resumed_logits(model, target.repeat_interleave(c, 0), mask.repeat_interleave(c, 0), edits, resume)
    metric = task.metric(logits, [r for r in rows for _ in range(c)]).double()
    return metric.view(len(rows), c).sum(0).tolist()


def _resumed_logits(model, ids, mask, edits, resume) -> torch.Tensor:
    """Logits at each row's last real token from a forward resumed at `resume` = (layer, resid_pre), with edits:
    the arithmetic of circuits.task_last_logits from that layer on."""
    last_block = f"resid_post.{model.n_layers - 1}"
    with model.trace([last_block], edits, stop_early=True, resume=resume) as tr:
        model.hf(input_ids=ids, attention_mask=mask, use_cache=False)
    last = last_real(mask)
    return model.unembed(tr[last_block][torch.arange(len(last), device=last.device), last])


def _same(source: torch.Tensor, target: torch.Tensor, kind: str, x) -> bool:
    """Whether the patch would write the values already there."""
    if kind == "z":
        return torch.equal(source[:, :, x], target[:, :, x])
    return torch.equal(source, target) if x is None else torch.equal(source[:, x], target[:, x])


def _layers(layers, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    out = []
    for x in layers:
        if not isinstance(x, int) or isinstance(x, bool) or not -n <= x < n:
            raise InputError(f"layer {x!r} out of range: the model has {n} layers (0..{n - 1}, or negative from "
                             f"the end)")
        out.append(x % n)
    if not out:
        raise InputError("no layers to patch")
    return sorted(dict.fromkeys(out))




def patch_metric(model, task: TaskSet, site: str, *, direction: str = "denoising", positions=None, heads=None,
                 batch_size: int = 32) -> torch.Tensor:
    """The per-prompt metric [n] with one site patched (any layer, optional positions / heads)."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    name = str(model.site(site))
    out = []
    with torch.no_grad():
        for clean, corrupt, mask, rows in task.batches(model, batch_size):
            source, target = (clean, corrupt) if direction == "denoising" else (corrupt, clean)
            # the source run only needs to reach the site: stop there instead of running to the logits
            with model.trace([name], stop_early=True) as tr:
                model.hf(input_ids=source, attention_mask=mask, use_cache=False)
            value = tr.acts()[name]
            logits, _ = task_last_logits(model, target, mask, [replace(name, value, positions=positions, heads=heads)])
            out.append(task.metric(logits, rows))
    return torch.cat(out)
