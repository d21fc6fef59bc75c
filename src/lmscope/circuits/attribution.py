"""Attribution patching: EAP and EAP-IG node and edge scores from gradients (Hanna et al. 2024, "Have faith in
faithfulness", arXiv 2403.17806), a first-order estimate of what activation patching would measure.

Nodes: the input embedding (`embed`), every attention head (`head.L.h`, its output before the output projection,
site z.L) and every MLP (`mlp.L`, site mlp_out.L); the logits are a downstream node only. For a node with
activation a (summed over positions, averaged over prompts):

    EAP     score(a)  = (a_corrupt - a_clean) . dm/da                 the gradient at the clean run
    EAP-IG  score(a)  = (a_corrupt - a_clean) . (1/k) sum_j dm/da     at inputs e_corrupt + (j/k)(e_clean - e_corrupt),
                                                                       j = 1..k, interpolating the input embeddings
so EAP-IG with one step is EAP. Both estimate m(clean with a from the corrupt run) - m(clean): the "noising"
effect that `activation_patching(..., direction="noising", per_position=False)` measures, which `compare` checks.

Edges u -> v: (u's output difference as written into the residual stream) . (the gradient of m with respect to
the residual stream that v reads, through v alone): v's input is resid_pre.L for a head of layer L (the path
through that one head, its q, k and v), resid_mid.L for the MLP of layer L (resid_pre.L with parallel attention),
resid_post of the last layer for the logits. A head's residual output is z_h W_O[h]; the sum of a node's outgoing
edge scores is its node score (the residual stream is a sum and every reader is a node). Edges are refused where
a head has no write of its own (Adapter.nonadditive_heads: Gemma's and OLMo 2's post-attention norms, the
weight-sparse model's AbsTopK write); node scores still work there.

Speed: the positions before a prompt's first token where clean and corrupt differ add nothing (their activation
differences are zero), so they run once into the KV cache and every pass runs the rest (prefix_cache; the rows of
a batch are laid out so that each row's own first change sits at one column, tasks.align_changes); the
interpolation steps of a batch run as one pass, and the clean run is the alpha = 1 copy of the last one
(step_rows). Edge input gradients: each head's through its own slices of the q/k/v projections, each MLP's from
the pass's one backward (_EdgePlan).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from tqdm import tqdm
from torch import nn

from lmscope.core.edits import replace, scale
from lmscope.core.errors import InputError, ModelSpecError
from lmscope.core.runs import on_cache, position_kwargs, prefix_cache as cache_of, supports_kv_cache
from lmscope.core.trace import qkv_module, qkv_view, weight_matrix
from lmscope.results.base import Result
from lmscope.circuits.tasks import TaskSet, align_changes, by_first_change, task_last_logits

METHODS = ("eap", "eap-ig")


@dataclass
class AttributionResult(Result, kind="circuit_attribution"):
    model: str
    task: str
    method: str
    steps: int
    metric_name: str
    n_prompts: int
    clean_metric: float
    corrupt_metric: float
    heads: list[list[float]]                 # [layer][head] node scores
    mlps: list[float]                        # [layer]
    embed: float
    upstream: list[str] = field(default_factory=list)     # edge rows: embed, head.L.h, mlp.L
    downstream: list[str] = field(default_factory=list)   # edge columns: head.L.h, mlp.L, logits
    edges: "list[list[float | None]] | None" = None        # [upstream][downstream]; None where u cannot reach v
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    comparison: "dict | None" = None     # `lmscope attribute --compare`: Spearman vs real noising patching

    def nodes(self) -> dict[str, float]:
        out = {"embed": self.embed}
        for layer, row in enumerate(self.heads):
            out.update({f"head.{layer}.{h}": v for h, v in enumerate(row)})
            out[f"mlp.{layer}"] = self.mlps[layer]
        return out

    def top_nodes(self, n: int = 10) -> list[tuple[str, float]]:
        return sorted(self.nodes().items(), key=lambda kv: -abs(kv[1]))[:n]

    def top_edges(self, n: int = 10) -> list[tuple[str, str, float]]:
        if self.edges is None:
            return []
        cells = [(u, v, s) for u, row in zip(self.upstream, self.edges) for v, s in zip(self.downstream, row)
                 if s is not None]
        return sorted(cells, key=lambda c: -abs(c[2]))[:n]

    def figure(self):
        z = [row + [m] for row, m in zip(self.heads, self.mlps)]
        lim = max(1e-12, max(abs(v) for row in z for v in row))
        fig = go.Figure(go.Heatmap(z=z, x=[f"head {h}" for h in range(len(self.heads[0]))] + ["MLP"],
                                   y=[f"L{i}" for i in range(len(z))], colorscale="RdBu", zmid=0, zmin=-lim,
                                   zmax=lim, colorbar={"title": "score"}))
        fig.update_layout(title=f"{self.method.upper()} node scores ({self.task}, {self.metric_name}; estimate of "
                                f"m(node from corrupt) - m(clean))", height=max(420, 18 * len(z) + 160), width=800)
        return fig

    def title(self) -> str:
        return f"Attribution patching - {self.task}"

    def page_intro(self) -> str:
        return (f"{self.model}, {self.method}" + (f" ({self.steps} steps)" if self.method == "eap-ig" else "")
                + f", {self.n_prompts} prompts; clean {self.clean_metric:.4f}, corrupt {self.corrupt_metric:.4f}. "
                + " ".join(self.notes))

    def summary(self, n: int = 10) -> str:
        lines = [f"attribution patching | {self.model} | {self.task} | {self.method}"
                 + (f" ({self.steps} steps)" if self.method == "eap-ig" else "")
                 + f" | {self.n_prompts} prompts | {self.seconds:.1f}s",
                 f"metric {self.metric_name}: clean {self.clean_metric:.4f}, corrupt {self.corrupt_metric:.4f}",
                 "largest node scores (estimated m(node from corrupt) - m(clean)):"]
        lines += [f"  {name:<12} {v:+.4f}" for name, v in self.top_nodes(n)]
        if self.edges is not None:
            lines.append("largest edge scores:")
            lines += [f"  {u:>12} -> {v:<12} {s:+.4f}" for u, v, s in self.top_edges(n)]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _node_names(model) -> tuple[list[str], list[str]]:
    n, h = model.n_layers, model.n_heads
    heads = [f"head.{layer}.{i}" for layer in range(n) for i in range(h)]
    mlps = [f"mlp.{layer}" for layer in range(n)]
    up = ["embed"] + [x for layer in range(n) for x in heads[layer * h:(layer + 1) * h] + [mlps[layer]]]
    down = [x for layer in range(n) for x in heads[layer * h:(layer + 1) * h] + [mlps[layer]]] + ["logits"]
    return up, down


def _place(node: str, n: int) -> tuple[int, int]:
    """(layer, 0 for a head or 1 for the MLP) of a node; the embedding comes before layer 0, the logits after all."""
    if node in ("embed", "logits"):
        return (-1 if node == "embed" else n, 0)
    kind, layer = node.split(".")[:2]
    return int(layer), int(kind == "mlp")


def _reaches(u: tuple[int, int], v: tuple[int, int], parallel: bool) -> bool:
    """Whether upstream node u writes into the residual stream that downstream node v reads (nodes by _place)."""
    return u[0] < v[0] or (u[0] == v[0] and u[1] < v[1] and not parallel)


def attribute(model, task: TaskSet, method: str = "eap", *, steps: int = 5, edges: bool = False,
              batch_size: int = 16, step_rows: int = 128, prefix_cache: bool = True,
              progress: bool = False) -> AttributionResult:
    """Node (and with edges=True, edge) attribution scores of `task` by EAP or EAP-IG.
    step_rows: EAP-IG runs several interpolation steps of a batch in one forward and backward pass (the batch
    repeated, one interpolation point per copy), up to this many rows; the clean run is not a pass of its own
    but the alpha = 1 copy of the last pass (EAP: its one pass), whose input is the clean embedding bit for bit;
    edge gradients go through each head's own q/k/v slices and the MLPs' read channels (_EdgePlan). 0 runs a
    clean pass, one step per pass and one backward per head and per MLP (the old path). The scores are the same
    up to float rounding (a larger matrix product may sum in another order).
    prefix_cache: the positions before the first token where a prompt's clean and corrupt tokens differ hold the
    same activations in the clean run, the corrupt run and every interpolation between them (the models are
    causal), so their activation differences, and their share of every score, are zero: they run once per batch
    into the model's KV cache and every pass runs the positions after them only. Where the rows' first changes
    differ, each row is moved so that its own sits at one column (tasks.align_changes: padding inside the rows,
    position ids per row). The same scores up to float rounding (attention sums split differently); False, or a
    model without a KV cache, runs every pass in full."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(task, TaskSet):
        raise InputError(f"attribute takes a TaskSet (lmscope.circuits.load_circuit_task), got {type(task).__name__}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if edges and model.adapter.nonadditive_heads:
        raise InputError(f"edge scores are refused: {model.adapter.nonadditive_heads}, so a head's output is not "
                         f"additive in the residual stream (node scores work: edges=False)")
    k = steps if method == "eap-ig" else 1
    n, heads = model.n_layers, model.n_heads
    z_sites = [f"z.{layer}" for layer in range(n)]
    mlp_sites = [f"mlp_out.{layer}" for layer in range(n)]
    last = f"resid_post.{n - 1}"
    node_sites = z_sites + mlp_sites + ["resid_pre.0"]
    base_reads = node_sites + ["embed"]
    plan = _EdgePlan(model, batched=step_rows > 0) if edges else None
    grad_reads = list(dict.fromkeys(node_sites + (plan.reads + [last] if edges else [])))
    up, down = _node_names(model) if edges else ([], [])
    w_o = [model.head_write_weights(layer, "edge scores")[0] for layer in range(n)] if edges else []
    head_sum = torch.zeros(n, heads, dtype=torch.float64)
    mlp_sum = torch.zeros(n, dtype=torch.float64)
    embed_sum = 0.0
    edge_sum = torch.zeros(len(up), len(down), dtype=torch.float64) if edges else None
    clean_sum = corrupt_sum = 0.0
    cached = prefix_cache and supports_kv_cache(model)
    reuse = step_rows > 0   # the clean run is the alpha = 1 copy of the last gradient pass, not a pass of its own
    ordered = by_first_change(task) if cached else task     # the scores are sums over prompts: order is free
    n_batches, prefixed = math.ceil(len(task) / batch_size), 0
    bar = tqdm(total=n_batches * k, unit="pass", desc=method, disable=not progress)
    begin = time.perf_counter()
    for clean, corrupt, mask, rows in ordered.batches(model, batch_size):
        positions, start = None, 0
        if cached:   # each row's own first change at one column: the columns before it run once
            clean, corrupt, mask, positions, start = align_changes(clean, corrupt, mask)
        prefixed += start > 0
        b = len(rows)
        with torch.no_grad():   # from here on every site read holds the positions start.. only
            prefix = None if start == 0 else cache_of(model, clean[:, :start], mask[:, :start],
                                                      None if positions is None else positions[:, :start])
            corrupt_logits, ka = task_last_logits(model, corrupt, mask, read=base_reads, prefix=prefix,
                                                  positions=positions)
            if not reuse:
                clean_logits, ca = task_last_logits(model, clean, mask, read=base_reads, prefix=prefix,
                                                    positions=positions)
            elif method == "eap-ig":
                ca = {"embed": _embedding(model, clean, mask, prefix, positions)}
        corrupt_sum += float(ordered.metric(corrupt_logits, rows).double().sum())
        # a no-op scale on z makes the per-head tensor the one the model computes with, so it gets a gradient
        flow = [scale(s, 1.0) for s in z_sites] + (plan.edits if plan else [])
        # gradients summed over steps in float32 at least (bfloat16 models too)
        acc = torch.promote_types(ka[mlp_sites[0]].dtype, torch.float32)
        g_nodes = [torch.zeros_like(ka[s], dtype=acc) for s in node_sites]
        g_in = [torch.zeros_like(ka[mlp_sites[0]], dtype=acc) for _ in down] if edges else []
        per_pass = 1 if not step_rows or method != "eap-ig" else max(1, min(k, step_rows // b))
        for first in range(1, k + 1, per_pass):
            alphas = [j / k for j in range(first, min(k, first + per_pass - 1) + 1)]
            c = len(alphas)
            edits = list(flow)
            if method == "eap-ig":
                # a leaf that requires grad, so the interpolated input carries the graph on; written so that
                # alpha = 1 gives the clean embedding bit for bit (one step = EAP exactly); copy i of the batch
                # takes alphas[i]
                point = torch.cat([(1 - a) * ka["embed"] + a * ca["embed"] for a in alphas]).requires_grad_()
                # an edit's value covers the whole sequence (the trace takes positions start.. of it)
                edits.append(replace("embed", nn.functional.pad(point, (0, 0, start, 0))))
            with _inputs_of(plan.modules if plan else []) as inputs:
                logits, acts = task_last_logits(model, clean.repeat(c, 1), mask.repeat(c, 1), edits,
                                                read=grad_reads, grad=True,
                                                prefix=prefix, copies=c,
                                                positions=None if positions is None else positions.repeat(c, 1))
            if reuse and alphas[-1] == 1:   # the last copy is the clean run itself (alpha = 1; EAP: every pass)
                clean_logits = logits[-b:].detach()
                ca = {s: acts[s][-b:].detach().clone() for s in node_sites}
            metric = ordered.metric(logits, rows * c).sum()
            nodes = [acts[s] for s in node_sites]
            extra = [acts[last]] + [acts[s] for s in plan.mlp_reads] if edges else []
            grads = torch.autograd.grad(metric, nodes + extra, retain_graph=edges)
            for total, g in zip(g_nodes, grads):
                total += _sum_copies(g.detach(), c)
            if edges:
                plan.add(acts, grads[:len(nodes)], grads[len(nodes) + 1:], inputs, g_in, c)
                g_in[-1] += _sum_copies(grads[len(nodes)].detach(), c)   # the logits read resid_post of the last block
            del acts, logits, metric, grads, inputs
            bar.update(c)
        clean_sum += float(ordered.metric(clean_logits, rows).double().sum())
        delta = {s: ka[s] - ca[s] for s in node_sites}
        for layer in range(n):
            head_sum[layer] += (delta[z_sites[layer]] * g_nodes[layer]).double().sum((0, 1, 3)) / k
            mlp_sum[layer] += float((delta[mlp_sites[layer]] * g_nodes[n + layer]).double().sum()) / k
        embed_sum += float((delta["resid_pre.0"] * g_nodes[-1]).double().sum()) / k
        if edges:
            out = _upstream_outputs(delta, w_o, n, heads)                 # [U, b, s, d]
            gin = torch.stack(g_in)                                       # [V, b, s, d]
            edge_sum += out.flatten(1).double() @ gin.flatten(1).double().T / k
    bar.close()
    count = len(task)
    notes = [f"prefix cache: in {prefixed} of {n_batches} batches the positions before each prompt's first token "
             f"where clean and corrupt differ ran once, every pass the rest"] if prefixed else []
    edge_rows = None
    if edges:
        parallel = model.parallel
        ups, downs = [_place(u, n) for u in up], [_place(v, n) for v in down]
        edge_rows = [[s if _reaches(u, v, parallel) else None for s, v in zip(row, downs)]
                     for row, u in zip((edge_sum / count).tolist(), ups)]
    return AttributionResult(model.spec, task.name, method, k, task.metric_name, count, clean_sum / count,
                             corrupt_sum / count, (head_sum / count).tolist(), (mlp_sum / count).tolist(),
                             embed_sum / count, up, down, edge_rows, time.perf_counter() - begin, notes)


def _embedding(model, ids, mask, prefix, positions) -> torch.Tensor:
    """The embed site of ids' positions after the cached prefix (the pass stops right there)."""
    start = 0 if prefix is None else prefix.get_seq_length()
    with model.trace(["embed"], stop_early=True) as tr:
        model.hf(input_ids=ids[:, start:], attention_mask=mask, **position_kwargs(positions, start),
                 **on_cache(model, prefix))
    return tr["embed"]


def _sum_copies(g: torch.Tensor, copies: int) -> torch.Tensor:
    """[copies * batch, ...] -> [batch, ...]: the sum over the interpolation steps run as copies of the batch."""
    return g if copies == 1 else g.reshape(copies, -1, *g.shape[1:]).sum(0)


@contextmanager
def _inputs_of(modules):
    """{module: the input of its last call} while the block runs (forward pre-hooks, removed on exit)."""
    seen: dict = {}

    def hook(module, args, kwargs):
        seen[module] = args[0] if args else next(iter(kwargs.values()))
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class _EdgePlan:
    """How the gradient of m with respect to the residual stream a node reads, through that node alone, is taken
    (EAP's edge input gradients, g_in[v]).

    Old path (batched=False): one backward per head, from z.L masked to head h, to resid_pre.L, and one per MLP,
    from mlp_out.L to its input.
    Batched path:
    - MLPs: the MLP reads its own copy of the residual stream (a no-op edit on the mlp_in read channel), so the
      pass's one backward already gives the gradient through the MLP alone. Where the MLP's input norm is also
      attention's (GPT-J, Cohere) or the model names none, one backward per MLP as before.
    - Heads: backward passes from z.L to the q, k and v sites only (the attention core), one per round of heads
      that share no q/k/v slot (calibrate); then each head's part of the projection, a [d_head, d_in] slice of
      the model's own weight (with grouped KV heads, its group's k and v), instead of the whole projection per
      head; then one batched backward through what lies between the residual stream and the projection's input
      (the norm).
      Where the q/k/v sites are not the projections' outputs (the weight-sparse model's AbsTopK) or the three
      projections do not read one tensor, the heads take the masked backward to resid_pre.L as before. A head
      whose q (or k, v) gradient reaches several slots (a norm over all heads' queries, OLMo 2) takes all of
      them, in a round of its own: exact either way.
    The same numbers up to float rounding (tests/circuits/test_attribution_batched.py, every family)."""

    def __init__(self, model, batched: bool):
        a, n = model.adapter, model.n_layers
        self.n, self.heads, self.batched = n, model.n_heads, batched
        self.z = [f"z.{layer}" for layer in range(n)]
        self.mlp_out = [f"mlp_out.{layer}" for layer in range(n)]
        self.resid_pre = [f"resid_pre.{layer}" for layer in range(n)]
        self.mlp_resid = [f"resid_pre.{layer}" if model.parallel else f"resid_mid.{layer}" for layer in range(n)]
        channel = batched and model.has_block_module(a.mlp_in_norm) and a.mlp_in_norm != a.attn_in_norm
        self.mlp_reads = [f"mlp_in.{layer}" for layer in range(n)] if channel else []
        # per layer: [(site, module, weight [d_in, n, d_head])] for q, k, v, or None (the masked backward)
        self.projections: list = [None] * n
        if batched and a.qkv:
            try:
                for layer in range(n):
                    mods = [qkv_module(model, layer, x) for x in "qkv"]
                    self.projections[layer] = [
                        (f"{x}.{layer}", mod, qkv_view(model, f"{x}.{layer}", weight_matrix(mod).T))
                        for x, mod in zip("qkv", mods)]
            except ModelSpecError:       # a q/k/v site that is not a projection's output
                self.projections = [None] * n
        self.qkv_sites = [site for p in self.projections if p for site, _, _ in p]
        # no-op edits: the pass runs through these tensors (they get gradients of their own)
        self.edits = [scale(site, 1.0) for site in self.qkv_sites + self.mlp_reads]
        # what the pass reads for the edge gradients: the residual streams the heads read (and the MLPs, where
        # they take a backward of their own), the q/k/v sites and the MLPs' channels
        self.reads = list(dict.fromkeys(self.resid_pre + ([] if self.mlp_reads else self.mlp_resid)
                                        + self.qkv_sites + self.mlp_reads))
        self.modules = list(dict.fromkeys(mod for p in self.projections if p for _, mod, _ in p))
        self.calibrate(model)

    def calibrate(self, model) -> None:
        """Which q/k/v slots each head's output depends on, per layer, read off one small pass (4 tokens, random
        output gradients: the zeros left are structural, where no path exists), and the heads of a layer grouped
        into rounds whose heads share no slot. One backward through the attention core then serves a whole round:
        one round with one KV head per query head, the group size with grouped KV heads, one round per head where
        a norm runs over all heads' queries. Every pass checks that no round's gradient reaches a slot outside its
        heads' (a path this probe did not see) and otherwise takes the masked backward for that layer."""
        self.rounds = [None] * self.n
        if not any(self.projections):
            return
        ids = torch.arange(1, 5, device=model.device).unsqueeze(0) % model.hf.config.vocab_size
        with torch.no_grad(), model.trace(["embed"], stop_early=True) as tr:
            model.hf(input_ids=ids)
        leaf = tr["embed"].detach().clone().requires_grad_()
        reads = [self.z[layer] for layer in range(self.n) if self.projections[layer]] + self.qkv_sites
        edits = [replace("embed", leaf)] + [scale(site, 1.0) for site in reads]
        with torch.enable_grad(), model.trace(reads, edits, grad=True, stop_early=True) as tr:
            model.hf(input_ids=ids)
        acts = tr.acts()
        gen = torch.Generator(device="cpu").manual_seed(0)
        for layer, proj in enumerate(self.projections):
            if not proj:
                continue
            z = acts[self.z[layer]]
            g_z = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
            outs = torch.autograd.grad(z, [acts[site] for site, _, _ in proj], self._masks(g_z, _each_head(self.heads)),
                                       retain_graph=True, is_grads_batched=True)
            reach = [g.abs().amax((1, 2, 4)) > 0 for g in outs]                  # per site: [heads, slots]
            rounds: list[list[int]] = []
            for h in range(self.heads):
                for r in rounds:
                    if not any(bool((x[h] & x[r].any(0)).any()) for x in reach):
                        r.append(h)
                        break
                else:
                    rounds.append([h])
            self.rounds[layer] = (rounds, [_slot_layout(x, rounds) for x in reach])

    @staticmethod
    def _masks(g_z: torch.Tensor, rounds: list[list[int]]) -> torch.Tensor:
        """[rounds, *g_z.shape]: round r keeps the heads in rounds[r] (the z gradient's head axis is -2)."""
        masks = torch.zeros(len(rounds), *g_z.shape, dtype=g_z.dtype, device=g_z.device)
        for r, hs in enumerate(rounds):
            masks[r, ..., hs, :] = g_z[..., hs, :]
        return masks

    def add(self, acts, node_grads, channel_grads, inputs, g_in, copies: int) -> None:
        """Add this pass's gradients into g_in (node_grads: z.L then mlp_out.L per layer; channel_grads: mlp_in.L)."""
        n, heads = self.n, self.heads
        for layer in range(n):
            z, g_z = acts[self.z[layer]], node_grads[layer]
            proj, resid = self.projections[layer], acts[self.resid_pre[layer]]
            u = inputs.get(proj[0][1]) if proj else None
            g = None
            if proj and all(inputs.get(mod) is u for _, mod, _ in proj):
                g = self._through_projections(acts, z, g_z, proj, u, resid, self.rounds[layer])
            if g is None and self.batched:   # one backward for all heads of the layer, masked, as a batch (vmap)
                (g,) = torch.autograd.grad(z, resid, self._masks(g_z, _each_head(heads)), retain_graph=True,
                                           is_grads_batched=True)
            elif g is None:
                masks = self._masks(g_z, _each_head(heads))
                g = [torch.autograd.grad(z, resid, masks[h], retain_graph=True)[0] for h in range(heads)]
            for h in range(heads):
                g_in[layer * (heads + 1) + h] += _sum_copies(g[h].detach(), copies)
            if self.mlp_reads:
                g_mlp = channel_grads[layer]
            else:
                (g_mlp,) = torch.autograd.grad(acts[self.mlp_out[layer]], acts[self.mlp_resid[layer]],
                                               node_grads[n + layer], retain_graph=True)
            g_in[layer * (heads + 1) + heads] += _sum_copies(g_mlp.detach(), copies)

    def _through_projections(self, acts, z, g_z, proj, u, resid, calibrated) -> "torch.Tensor | None":
        """[heads, batch, seq, d_model]: each head's gradient w.r.t. resid, through its own q, k, v slices; None
        where this pass does not have the structure calibrate() found (the caller takes the masked backward)."""
        heads = self.heads
        rounds, layouts = calibrated
        outs = torch.autograd.grad(z, [acts[site] for site, _, _ in proj], self._masks(g_z, rounds),
                                   retain_graph=True, is_grads_batched=True)
        g_u = None
        # g [rounds, batch, seq, slots, d_head]; w [d_in, slots, d_head]
        for (_, _, w), g, lay in zip(proj, outs, layouts):
            slots, d_head = g.shape[-2:]
            flat = g.reshape(len(rounds), -1, slots, d_head)
            reached = torch.linalg.vector_norm(flat, ord=float("inf"), dim=(1, 3)) > 0           # [rounds, slots]
            if bool((reached & ~lay.allowed).any()):
                return None                       # a slot reached that no head of its round should reach
            w_t = w.permute(1, 2, 0).to(g.dtype)                    # [slots, d_head, d_in]: a view of the weight
            if g_u is None:
                g_u = torch.zeros(heads, flat.shape[1], w_t.shape[-1], dtype=g.dtype, device=g.device)
            if lay.kind == "several":             # its reached slots, from its round (no other head there shares one)
                g_u += torch.einsum("hbsk,dsk->hbd", flat[lay.owner] * lay.reach[:, None, :, None].to(g.dtype),
                                    w.to(g.dtype))
                continue
            g_h = flat[lay.owner, :, lay.slot]      # [heads, b*s, d_head]: each head's one slot (k, v: its group's)
            if lay.kind == "own":
                g_u.baddbmm_(g_h, w_t)
            elif lay.kind == "grouped":           # heads g * rep .. g * rep + rep - 1 read slot g: no weight copy
                g_u.view(slots, -1, w_t.shape[-1]).baddbmm_(g_h.reshape(slots, -1, d_head), w_t)
            else:
                g_u.baddbmm_(g_h, w_t[lay.slot])
        (g,) = torch.autograd.grad(u, resid, g_u.reshape(heads, *u.shape).to(u.dtype), retain_graph=True,
                                   is_grads_batched=True)
        return g


@dataclass
class _SlotLayout:
    """Which q (or k, v) slots the heads of one layer reach (calibrate): kind "own" (head h reaches slot h),
    "grouped" (slot h // rep, contiguous groups), "one" (one slot each, another order) or "several"."""
    kind: str
    reach: torch.Tensor          # [heads, slots] bool
    slot: torch.Tensor           # [heads]: the one slot each reaches (kinds own, grouped, one)
    owner: torch.Tensor          # [heads]: each head's round
    allowed: torch.Tensor        # [rounds, slots]: the slots the heads of each round reach


def _slot_layout(reach: torch.Tensor, rounds: list[list[int]]) -> _SlotLayout:
    """Worked out on the CPU; the tensors are kept on reach's device (the model's), where the passes index with them."""
    device, reach = reach.device, reach.cpu()
    heads, slots = reach.shape
    owner = torch.empty(heads, dtype=torch.long)
    for r, hs in enumerate(rounds):
        owner[hs] = r
    allowed = torch.stack([reach[hs].any(0) for hs in rounds])
    slot = reach.to(torch.float32).argmax(1)
    every = torch.arange(heads)
    if not bool((reach.sum(1) == 1).all()):
        kind = "several"
    elif slots == heads and torch.equal(slot, every):
        kind = "own"
    elif heads % slots == 0 and torch.equal(slot, every // (heads // slots)):
        kind = "grouped"
    else:
        kind = "one"
    return _SlotLayout(kind, reach.to(device), slot.to(device), owner.to(device), allowed.to(device))


def _each_head(heads: int) -> list[list[int]]:
    return [[h] for h in range(heads)]


def _upstream_outputs(delta, w_o, n, heads) -> torch.Tensor:
    """Each upstream node's output difference in the residual stream: [embed, heads and MLP per layer]."""
    outs = [delta["resid_pre.0"]]
    for layer in range(n):
        dz = delta[f"z.{layer}"]                                          # [b, s, heads, d_head]
        per_head = torch.einsum("bshk,dhk->hbsd", dz, w_o[layer].to(dz.dtype))
        outs += list(per_head) + [delta[f"mlp_out.{layer}"]]
    return torch.stack(outs)




# ---------------------------------------------------------------------------------------------------------------
# Scores against real patching

def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties), in float64."""
    x, y = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.numel() != y.numel() or x.numel() < 2:
        raise InputError(f"spearman needs two equal-length sequences of 2+ values, got {x.numel()} and {y.numel()}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for value in torch.unique(x):                      # ties share their average rank
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def compare(attribution: AttributionResult, patching) -> dict:
    """Rank agreement of attribution node scores with actual noising effects (m(patched) - m(clean)) from
    `activation_patching(model, task, ["z", "mlp_out"], direction="noising", per_position=False)` on the same
    prompts."""
    if patching.direction != "noising":
        raise InputError("compare needs noising patching (corrupt into clean): that is what EAP estimates")
    out = {"n_prompts": patching.n_prompts, "method": attribution.method, "steps": attribution.steps}
    if "z" in patching.raw:
        actual = [v - patching.clean_metric for row in patching.raw["z"] for v in row]
        est = [attribution.heads[layer][h] for layer in patching.layers for h in range(len(patching.raw["z"][0]))]
        out["heads"] = {"n": len(actual), "spearman": spearman(est, actual),
                        "spearman_abs": spearman([abs(v) for v in est], [abs(v) for v in actual]),
                        "pearson": _pearson(est, actual)}
    if "mlp_out" in patching.raw:
        if patching.axes["mlp_out"] != "all positions":
            raise InputError("compare needs MLP patching at all positions at once (per_position=False)")
        actual = [row[0] - patching.clean_metric for row in patching.raw["mlp_out"]]
        est = [attribution.mlps[layer] for layer in patching.layers]
        out["mlps"] = {"n": len(actual), "spearman": spearman(est, actual),
                       "spearman_abs": spearman([abs(v) for v in est], [abs(v) for v in actual]),
                       "pearson": _pearson(est, actual)}
    return out


def _pearson(a, b) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 0 else float("nan")
