"""A circuit as a graph: nodes by layer (x = layer, y = head; the MLP above the heads), edges weighted by EAP edge
scores (Hanna et al. 2024) computed here for the circuit's nodes:

    score(u -> v) = mean over prompts of sum over positions of (a_u(corrupt) - a_u(clean)) . dm / d(input of v)

a_u is what u writes into the residual stream (a head: its z through its slice of the output projection; an MLP:
mlp_out; 'embed': the embedding), and the gradient is taken on the clean prompts THROUGH v ONLY: for a head at layer L
it is d(z_v . g_v) / d resid_pre.L with g_v = dm/dz_v held fixed (so it follows v's own query, key and value paths),
for an MLP d(mlp_out . g) / d resid_mid.L, for 'logits' dm / d(final residual). It is the first-order estimate of
the metric change when the edge alone carries the corrupt activation; negative = the edge supports the answer.
Only upstream nodes in the circuit are scored, and only edges u -> v with u earlier than v. On Gemma the heads'
outputs pass a post-attention norm before the residual stream, so a head's a_u is approximate there (noted).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch

from lmscope.core.edits import scale
from lmscope.core.errors import InputError
from lmscope.results.base import Result
from lmscope.circuits.nodes import Node


def _short(name: str) -> str:
    """head.23.3 -> 23.3, mlp.20 -> mlp 20 (the axes give the rest)."""
    kind, _, rest = name.partition(".")
    return rest if kind == "head" else f"mlp {rest}" if kind == "mlp" else name


@dataclass
class CircuitGraph(Result, kind="circuit_graph"):
    model: str
    task: str
    nodes: list[dict]                 # {"name", "layer", "y", "kind"}
    edges: list[dict]                 # {"src", "dst", "score"}: strongest |score| first
    n_prompts: int
    rule: str = "EAP edge score (corrupt - clean) . d metric / d input of the downstream node, clean prompts"
    notes: list[str] = field(default_factory=list)

    def summary(self, n: int = 15) -> str:
        lines = [f"circuit graph | {self.model} | {self.task} | {len(self.nodes)} nodes, {len(self.edges)} edges "
                 f"scored on {self.n_prompts} prompts", f"edge weight: {self.rule}", f"strongest {n} edges:"]
        lines += [f"  {e['src']:>12} -> {e['dst']:<12} {e['score']:+.4f}" for e in self.edges[:n]]
        return "\n".join(lines + self.notes)

    def figure(self, max_edges: int = 80, labelled_edges: int = 12):
        """Nodes at (layer, head; the MLP row above the heads), the `max_edges` strongest edges (width ~ |score|;
        edges within one row bow upwards, so they do not run along it); only the nodes of the `labelled_edges`
        strongest edges carry a label (head L.h, mlp L), every node names itself on hover."""
        where = {nd["name"]: (nd["layer"], nd["y"]) for nd in self.nodes}
        shown = self.edges[:max_edges]
        top = max((abs(e["score"]) for e in shown), default=1.0) or 1.0
        labelled = {name for e in shown[:labelled_edges] for name in (e["src"], e["dst"])}
        n_heads = max((nd["y"] for nd in self.nodes if nd["kind"] == "head"), default=0) + 1
        fig = go.Figure()
        for e in reversed(shown):  # strongest drawn last, on top
            (x0, y0), (x1, y1) = where[e["src"]], where[e["dst"]]
            xs, ys = [x0, x1], [y0, y1]
            if y0 == y1 and abs(x1 - x0) > 1:     # along one row: an arc above it
                ts = [i / 16 for i in range(17)]
                xs = [x0 + (x1 - x0) * t for t in ts]
                ys = [y0 + min(2.0, 0.12 * abs(x1 - x0)) * 4 * t * (1 - t) for t in ts]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="text", showlegend=False,
                                     text=f"{e['src']} -> {e['dst']}: {e['score']:+.4f}",
                                     line={"width": 0.5 + 6 * abs(e["score"]) / top, "shape": "spline",
                                           "color": "rgba(36,113,163,0.6)" if e["score"] < 0
                                           else "rgba(192,57,43,0.6)"}))
        colours = {"head": "#2471a3", "mlp": "#d68910", "embed": "#1e8449", "logits": "#17202a"}
        for kind in ("embed", "head", "mlp", "logits"):
            nds = [nd for nd in self.nodes if nd["kind"] == kind]
            if nds:
                fig.add_trace(go.Scatter(x=[nd["layer"] for nd in nds], y=[nd["y"] for nd in nds],
                                         mode="markers+text", name=kind, hoverinfo="text",
                                         hovertext=[nd["name"] for nd in nds],
                                         text=[_short(nd["name"]) if nd["name"] in labelled else "" for nd in nds],
                                         textposition="top center", textfont={"size": 10},
                                         marker={"size": 11, "color": colours[kind], "symbol":
                                                 "square" if kind in ("mlp", "embed", "logits") else "circle"}))
        layers = [nd["layer"] for nd in self.nodes]
        first, last = min(layers, default=0), max(layers, default=0)
        ticks = {nd["layer"]: nd["name"] for nd in self.nodes if nd["kind"] in ("embed", "logits")}
        fig.update_layout(title=f"Circuit graph - {self.task} ({len(self.nodes)} nodes; {len(shown)} strongest "
                                f"edges: blue supports the answer, red opposes; width ~ |EAP edge score|; "
                                f"labels on the {min(labelled_edges, len(shown))} strongest)",
                          xaxis={"title": "layer", "tickvals": list(range(first, last + 1)),
                                 "ticktext": [ticks.get(x, str(x)) for x in range(first, last + 1)],
                                 "range": [first - 0.7, last + 0.7]},
                          yaxis={"title": "", "tickvals": list(range(n_heads)) + [n_heads + 0.5],
                                 "ticktext": [f"head {h}" for h in range(n_heads)] + ["MLP"],
                                 "range": [-0.6, n_heads + 2.8]},
                          width=1200, height=650)
        return fig

    def title(self) -> str:
        return f"Circuit graph - {self.task}"

    def page_intro(self) -> str:
        return f"{self.model}: nodes by layer, edges weighted by EAP edge scores on {self.n_prompts} prompts."

    def page_body(self) -> str:
        return f"<pre>{html.escape(self.summary(25))}</pre>"


def _head_write(model, layer: int, head: int, dz: torch.Tensor) -> torch.Tensor:
    """What head `head` adds to the residual stream for a z difference dz [b, s, heads, d_head] (the family's
    residual scale included; approximate where heads are not additive, which circuit_graph notes)."""
    w, _ = model.head_write_weights(layer, approximate=True)              # [d_model, heads, d_head]
    return dz[:, :, head] @ w[:, head].T.to(dz.dtype)


def circuit_graph(model, task, nodes: list[Node], *, n_prompts: int = 16, max_edges: int = 500) -> CircuitGraph:
    """EAP edge scores between the circuit's nodes (and embed -> ..., ... -> logits) on the first n_prompts prompts."""
    nodes = sorted(set(nodes))
    if not nodes:
        raise InputError("the circuit has no nodes to draw")
    n, rows = model.n_layers, list(range(min(n_prompts, len(task))))
    sub = task.subset(rows)
    clean, mask = model.encode(sub.clean)
    corrupt, _ = model.encode(sub.corrupt)
    layers = sorted({nd.layer for nd in nodes})
    head_layers = sorted({nd.layer for nd in nodes if nd.kind == "head"})
    mlp_in = "resid_pre" if model.parallel else "resid_mid"
    read = ([f"resid_pre.{l}" for l in head_layers] + [f"{mlp_in}.{nd.layer}" for nd in nodes if nd.kind == "mlp"]
            + [f"z.{l}" for l in head_layers] + [f"mlp_out.{l}" for l in layers]
            + ["resid_pre.0", f"resid_post.{n - 1}"])
    read = list(dict.fromkeys(read))
    with torch.no_grad():
        cor = model.run(sub.corrupt, read=read).acts
    # scale(..., 1.0) routes the read z through the hook's output, so gradients reach it
    run = model.run(sub.clean, read=read, edits=[scale(f"z.{l}", 1.0) for l in head_layers], grad=True)
    last = mask.sum(1) - 1
    logits = run.logits[torch.arange(len(rows)), last]
    metric = sub.metric(logits).sum()
    targets = [run.acts[f"z.{l}"] for l in head_layers] + [run.acts[f"mlp_out.{nd.layer}"] for nd in nodes
                                                           if nd.kind == "mlp"] + [run.acts[f"resid_post.{n - 1}"]]
    grads = torch.autograd.grad(metric, targets, retain_graph=True)
    g_z = dict(zip(head_layers, grads[:len(head_layers)]))
    mlp_nodes = [nd for nd in nodes if nd.kind == "mlp"]
    g_mlp = dict(zip([nd.layer for nd in mlp_nodes], grads[len(head_layers):-1]))
    real = mask[:, :, None].to(model.dtype)

    # upstream writes into the residual stream (corrupt - clean), real tokens only
    writes = {"embed": (-1, (cor["resid_pre.0"] - run.acts["resid_pre.0"].detach()) * real)}
    with torch.no_grad():
        for nd in nodes:
            if nd.kind == "head":
                dz = cor[f"z.{nd.layer}"] - run.acts[f"z.{nd.layer}"].detach()
                writes[nd.name] = (nd.layer, _head_write(model, nd.layer, nd.head, dz) * real)
            else:
                dm = cor[f"mlp_out.{nd.layer}"] - run.acts[f"mlp_out.{nd.layer}"].detach()
                writes[nd.name] = (nd.layer + 0.5, dm * real)
    edges = []

    def score_into(dst: str, at: float, input_grad: torch.Tensor):
        for src, (pos, dw) in writes.items():
            if pos < at:
                edges.append({"src": src, "dst": dst,
                              "score": float((dw.double() * input_grad.double()).sum() / len(rows))})

    for nd in nodes:
        if nd.kind == "head":
            z = run.acts[f"z.{nd.layer}"][:, :, nd.head]
            x = run.acts[f"resid_pre.{nd.layer}"]
            (gx,) = torch.autograd.grad((z * g_z[nd.layer][:, :, nd.head]).sum(), x, retain_graph=True)
            score_into(nd.name, nd.layer, gx)
        else:
            x = run.acts[f"{mlp_in}.{nd.layer}"]
            out = run.acts[f"mlp_out.{nd.layer}"]
            (gx,) = torch.autograd.grad((out * g_mlp[nd.layer]).sum(), x, retain_graph=True)
            # parallel blocks: the MLP reads resid_pre, so heads of its own layer do not feed it
            score_into(nd.name, nd.layer if model.parallel else nd.layer + 0.5, gx)
    score_into("logits", n + 1, grads[-1])
    edges.sort(key=lambda e: -abs(e["score"]))
    graph_nodes = ([{"name": "embed", "layer": -1, "y": model.n_heads / 2, "kind": "embed"}]
                   + [{"name": nd.name, "layer": nd.layer, "y": nd.head if nd.kind == "head" else model.n_heads + 0.5,
                       "kind": nd.kind} for nd in nodes]
                   + [{"name": "logits", "layer": n, "y": model.n_heads / 2, "kind": "logits"}])
    reason = model.adapter.nonadditive_heads
    notes = [f"head writes are approximate: {reason}"] if reason else []
    return CircuitGraph(model.spec, task.name, graph_nodes, edges[:max_edges], len(rows), notes=notes)
