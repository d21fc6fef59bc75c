"""Reading a node circuit (Gao et al. 2025 read their quote circuit node by node): a typed result per circuit and
its self-contained page.

    node_activations   for each kept node, its activation on the task's clean and corrupt prompts (in the circuit,
                       every other node mean-ablated): at the last token, and the token where clean and corrupt
                       differ most (e.g. the opening quote for a quote detector)
    head_attention     for each head with kept q/k/v nodes, how much its last-token query attends to the tokens where
                       clean and corrupt prompts differ (a head that copies, e.g., the quote type reads there)
    NodeCircuit        the circuit (kept nodes, edges with weights, held-out evaluation, training), .to_json(),
                       .summary(), .figure() (the graph), .save(path) (.html: the page; else JSON)

The page: the graph (nodes by layer and kind, edges with their weights), per-node activations on the contrasting
inputs, and the task metric as nodes are removed one by one.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field

import torch

from lmscope.results import Result, table
from lmscope.papers.weight_sparse.circuit import NODE_KINDS, NodeMasks, mask_edits


@torch.no_grad()
def node_activations(model, task, means, masks: NodeMasks, *, max_prompts: int = 64, batch_size: int = 16) -> list:
    """One row per kept node: mean activation at the last token on clean and corrupt prompts and their separation
    (difference of means over the pooled standard deviation); the same at the first token where the clean and
    corrupt prompts differ (the opening quote of a quote task: where a quote-type classifier fires); and the
    clean-prompt token where |clean - corrupt| peaks most often (with how often). A task's clean prompts may hold
    both classes (quotes opened with ' and with "): `label_separation` pools clean and corrupt prompts and separates
    them by their correct answer (the two most common answer tokens), at the changed token and at the last token."""
    kept = masks.kept()
    if not kept:
        return []
    sites = sorted({s for s, _ in kept})
    rows = list(range(min(len(task), max_prompts)))
    edits = mask_edits(model, means, masks)
    last_c, last_k, change_c, change_k, peak_tokens = {}, {}, {}, {}, {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        runs = [model.run([side[r] for r in chunk], read=sites, edits=edits) for side in (task.clean, task.corrupt)]
        lengths = runs[0].attention_mask.sum(1) - 1
        first = torch.tensor([next((i for i, (x, y) in enumerate(zip(task.clean[r], task.corrupt[r])) if x != y),
                                   len(task.clean[r]) - 1) for r in chunk])
        for site, idx in kept:
            c = runs[0][site][(slice(None), slice(None)) + idx]      # [b, s]
            k = runs[1][site][(slice(None), slice(None)) + idx]
            ar = torch.arange(len(chunk))
            last_c.setdefault((site, idx), []).append(c[ar, lengths])
            last_k.setdefault((site, idx), []).append(k[ar, lengths])
            change_c.setdefault((site, idx), []).append(c[ar, first])
            change_k.setdefault((site, idx), []).append(k[ar, first])
            diff = (c - k).abs() * runs[0].attention_mask
            for b, pos in enumerate(diff.argmax(1).tolist()):
                token = model.to_str_tokens([task.clean[chunk[b]][pos]])[0] if diff[b].max() > 0 else "(none)"
                peak_tokens.setdefault((site, idx), Counter())[token] += 1
    labels = torch.tensor([task.answer[r] for r in rows] + [task.wrong[r] for r in rows])
    top = [t for t, _ in Counter(labels.tolist()).most_common(2)]
    a_rows, b_rows = (labels == top[0], labels == top[-1]) if len(top) == 2 else (None, None)
    out = []
    for site, idx in kept:
        c, k = torch.cat(last_c[(site, idx)]).double(), torch.cat(last_k[(site, idx)]).double()
        cc, ck = torch.cat(change_c[(site, idx)]).double(), torch.cat(change_k[(site, idx)]).double()
        token, count = peak_tokens[(site, idx)].most_common(1)[0]
        by_label = {}
        if a_rows is not None:
            last, change = torch.cat([c, k]), torch.cat([cc, ck])
            by_label = {"label_a": model.to_str_tokens([top[0]])[0], "label_b": model.to_str_tokens([top[1]])[0],
                        "label_separation": _separation(change[a_rows], change[b_rows]),
                        "label_separation_last": _separation(last[a_rows], last[b_rows])}
        out.append({"node": _node_name(site, idx), "site": site, "index": list(idx), "kind": site.split(".")[0],
                    "layer": int(site.split(".")[1]), "clean_last": float(c.mean()), "corrupt_last": float(k.mean()),
                    "separation": _separation(c, k), "clean_change": float(cc.mean()),
                    "corrupt_change": float(ck.mean()), "change_separation": _separation(cc, ck),
                    "peak_token": token, "peak_share": count / len(rows), **by_label})
    return out


def _separation(a: torch.Tensor, b: torch.Tensor) -> float:
    """(mean a - mean b) / pooled standard deviation; 0 when both are constant (or a class is empty)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    pooled = float(torch.cat([a - a.mean(), b - b.mean()]).std()) if len(a) + len(b) > 2 else 0.0
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


@torch.no_grad()
def head_attention(model, task, means, masks: NodeMasks, *, max_prompts: int = 64, batch_size: int = 16) -> list:
    """Per head with kept q, k or v nodes: mean attention (in the circuit) from the last token to the positions
    where the clean and corrupt prompts differ, on clean prompts, and the mean number of such positions."""
    heads = sorted({(int(s.split(".")[1]), s.split(".")[0], idx[0]) for s, idx in masks.kept()
                    if s.split(".")[0] in "qkv"})
    if not heads:
        return []
    group = model.n_heads // model.n_kv_heads
    wanted: dict = {}
    for layer, kind, h in heads:      # a kept k or v channel of KV head g serves query heads g*group ...
        for q in ([h] if kind == "q" else range(h * group, (h + 1) * group)):
            wanted.setdefault((layer, q), set()).add(kind)
    layers = sorted({layer for layer, _ in wanted})
    rows = list(range(min(len(task), max_prompts)))
    edits = mask_edits(model, means, masks)
    sums = {key: 0.0 for key in wanted}
    n_diff = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        run = model.run([task.clean[r] for r in chunk], read=[f"pattern.{l}" for l in layers], edits=edits)
        last = run.attention_mask.sum(1) - 1
        for b, r in enumerate(chunk):
            diff = [i for i, (x, y) in enumerate(zip(task.clean[r], task.corrupt[r])) if x != y]
            n_diff += len(diff)
            for (layer, q) in wanted:
                sums[(layer, q)] += float(run[f"pattern.{layer}"][b, q, last[b], diff].sum()) if diff else 0.0
    return [{"head": f"{layer}.{q}", "layer": layer, "kept": sorted(kinds),
             "attention_to_difference": sums[(layer, q)] / len(rows), "differing_positions": n_diff / len(rows)}
            for (layer, q), kinds in sorted(wanted.items())]


def _node_name(site: str, idx) -> str:
    return f"{site}[{','.join(str(i) for i in idx)}]"


@dataclass
class NodeCircuit(Result, kind="node_circuit"):
    model: str
    task: str
    n_prompts_heldout: int
    nodes: dict                  # site -> [[index...], ...] kept
    evaluation: dict             # circuit.NodeEvaluation as a dict (held-out)
    edges: dict                  # edges.count_edges: count, by kind, qk pairs, residual links, listed edges
    activations: list = field(default_factory=list)
    heads: list = field(default_factory=list)        # head_attention rows
    training: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def n_nodes(self) -> int:
        return sum(len(v) for v in self.nodes.values())

    def json_extras(self) -> dict:
        return {"n_nodes": self.n_nodes}

    def masks(self, model) -> NodeMasks:
        out = {}
        for site, idxs in self.nodes.items():
            m = torch.zeros(model.site_shape(site), dtype=model.dtype)
            for idx in idxs:
                m[tuple(idx)] = 1
            out[site] = m
        return NodeMasks(out)

    def summary(self) -> str:
        e = self.evaluation
        lines = [f"node circuit | {self.model} | task {self.task} | {self.n_prompts_heldout} held-out prompts",
                 f"nodes {e['n_nodes']} of {e['n_nodes_total']} ({_by_kind(e['nodes_by_kind'])}); edges "
                 f"{self.edges['edges']} (nonzero weights between kept nodes; also {self.edges['qk_pairs']} q.k "
                 f"pairs, {self.edges['residual_links']} residual links)",
                 f"task loss (nats): model {e['loss_full']:.3f}  circuit {e['loss_circuit']:.3f}  empty "
                 f"{e['loss_empty']:.3f}  model without circuit {e['loss_without_circuit']:.3f}",
                 f"faithfulness {e['faithfulness']:.3f} (random circuits, same count per site: "
                 f"{_mean(e['random_faithfulness']):.3f}), necessity drop {e['necessity_drop']:.3f}, accuracy "
                 f"model {e['accuracy_full']:.3f} circuit {e['accuracy_circuit']:.3f}"]
        if e.get("zero_ablation"):
            lines.append(f"zero ablation of the same circuit: faithfulness {e['zero_ablation']['faithfulness']:.3f}, "
                         f"loss {e['zero_ablation']['loss_circuit']:.3f}")
        if self.training:
            t = self.training
            nan = float("nan")
            lines.append(f"found on {t.get('n_train')} train prompts in {t.get('seconds')} s; train loss "
                         f"{t.get('train_loss_circuit', nan):.3f} (target {t.get('target_loss', nan):.3f}, "
                         f"{t.get('target_rule', 'absolute')}; model {t.get('model_train_loss', nan):.3f}; "
                         f"reached: {t.get('target_reached_on_train')})")
        for a in sorted(self.activations, key=_strength)[:16]:
            label = (f"answer {a['label_a']!r} vs {a['label_b']!r}: sep {a['label_separation']:+.2f} at the changed "
                     f"token, {a['label_separation_last']:+.2f} at the last; " if "label_a" in a else "")
            lines.append(f"  {a['node']:<18} {label}clean vs corrupt: sep {a.get('change_separation', 0):+.2f} at "
                         f"the changed token, {a['separation']:+.2f} at the last; differs most at "
                         f"{a['peak_token']!r} ({a['peak_share']:.0%})")
        for h in sorted(self.heads, key=lambda h: -h["attention_to_difference"])[:6]:
            lines.append(f"  head {h['head']:<6} (kept {','.join(h['kept'])}): last token attends "
                         f"{h['attention_to_difference']:.2f} to the {h['differing_positions']:.1f} position(s) where "
                         f"clean and corrupt differ")
        return "\n".join(lines + self.notes)

    def figure(self):
        """The graph: x = layer and kind, y = node; edges coloured by sign, width by |weight|."""
        import plotly.graph_objects as go
        pos = {}
        columns: dict = {}
        for site in sorted(self.nodes, key=_site_order):
            for idx in self.nodes[site]:
                name = _node_name(site, idx)
                col = _site_order(site)
                columns[col] = columns.get(col, 0) + 1
                pos[name] = (col, columns[col])
        fig = go.Figure()
        listed = self.edges.get("listed", [])
        top = max((abs(w) for _, _, w in listed), default=1.0) or 1.0
        for src, dst, w in listed[:400]:
            if src in pos and dst in pos:
                fig.add_trace(go.Scatter(x=[pos[src][0], pos[dst][0]], y=[pos[src][1], pos[dst][1]], mode="lines",
                                         line={"width": 0.5 + 3 * abs(w) / top,
                                               "color": "rgba(200,50,50,0.5)" if w > 0 else "rgba(50,50,200,0.5)"},
                                         hoverinfo="text", text=f"{src} -> {dst}: {w:+.3f}", showlegend=False))
        act = {a["node"]: a for a in self.activations}
        names = list(pos)
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text",
            text=[n.split("[")[0].split(".")[0] + "[" + n.split("[")[1] for n in names], textposition="middle right",
            marker={"size": 12, "color": [act.get(n, {}).get("separation", 0) for n in names], "colorscale": "RdBu",
                    "showscale": True, "colorbar": {"title": "separation"}},
            hovertext=[_hover(n, act.get(n)) for n in names], hoverinfo="text", showlegend=False))
        ticks = sorted({_site_order(s) for s in self.nodes})
        fig.update_xaxes(tickvals=ticks, ticktext=[_column_label(t) for t in ticks])
        fig.update_layout(title=f"Circuit graph - {self.task} ({self.n_nodes} nodes, {self.edges['edges']} edges)",
                          yaxis_title="node", width=1100, height=600)
        return fig

    def activations_figure(self):
        import plotly.graph_objects as go
        rows = sorted(self.activations, key=lambda a: -abs(a["separation"]))[:40]
        fig = go.Figure([go.Bar(name="clean", x=[a["node"] for a in rows], y=[a["clean_last"] for a in rows]),
                         go.Bar(name="corrupt", x=[a["node"] for a in rows], y=[a["corrupt_last"] for a in rows])])
        fig.update_layout(title="Node activation at the last token: clean vs corrupt prompts (in the circuit)",
                          barmode="group", width=1100, height=450)
        return fig

    def curve_figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        curve = self.evaluation.get("curve", [])
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=[p["kept"] for p in curve], y=[p["loss"] for p in curve], name="task loss"))
        fig.add_trace(go.Scatter(x=[p["kept"] for p in curve], y=[p["metric"] for p in curve], name="logit diff"),
                      secondary_y=True)
        fig.update_xaxes(title_text="nodes kept (removed lowest gate logit first)", autorange="reversed")
        fig.update_layout(title="Held-out task metric as nodes are removed one by one", width=900, height=420)
        return fig

    def figures(self) -> list:
        """The graph, the activations, and the removal curve where there is one (a circuit read back from its file
        keeps no gate logits to order its nodes by, so its evaluation has no curve)."""
        return [self.figure(), self.activations_figure()] + ([self.curve_figure()] if self.evaluation.get("curve")
                                                             else [])

    def title(self) -> str:
        return f"Node circuit - {self.task} - {self.model}"

    def page_intro(self) -> str:
        return ("Gao et al. 2025-style node circuit: kept nodes, nonzero weights between them, activations on the "
                "task's contrasting prompts, and the metric as nodes are removed.")

    def page_body(self) -> str:
        rows = [[a["node"], f"{a.get('label_separation', 0):+.2f}", f"{a.get('label_separation_last', 0):+.2f}",
                 f"{a.get('clean_change', 0):+.3f}", f"{a.get('corrupt_change', 0):+.3f}",
                 f"{a.get('change_separation', 0):+.2f}", f"{a['clean_last']:+.3f}", f"{a['corrupt_last']:+.3f}",
                 f"{a['separation']:+.2f}", a["peak_token"], f"{a['peak_share']:.0%}"]
                for a in sorted(self.activations, key=lambda a: (a["layer"], _site_order(a["site"])))]
        edges = [[s, d, f"{w:+.4f}"] for s, d, w in self.edges.get("listed", [])[:300]]
        return (f"<pre>{html.escape(self.summary())}</pre><h3>Nodes</h3>"
                + table(["node", "separation by answer (changed token)", "separation by answer (last token)",
                         "clean (changed token)", "corrupt (changed token)", "separation",
                         "clean (last token)", "corrupt (last token)", "separation",
                         "token where clean and corrupt differ most", "share of prompts"], rows)
                + "<h3>Heads with kept q/k/v nodes</h3>"
                + table(["head", "kept", "attention from the last token to the differing positions"],
                        [[h["head"], ",".join(h["kept"]), f"{h['attention_to_difference']:.3f}"] for h in self.heads])
                + f"<h3>Edges (largest |weight| first, {len(edges)} of {self.edges['edges']})</h3>"
                + table(["from", "to", "weight"], edges))


def _strength(a: dict) -> float:
    """Order of the summary: the node's larger |separation| (changed token or last token), largest first."""
    return -max(abs(a.get(k, 0.0)) for k in ("separation", "change_separation", "label_separation",
                                              "label_separation_last"))


def _site_order(site: str) -> int:
    kind, layer = site.split(".")
    return int(layer) * len(NODE_KINDS) + NODE_KINDS.index(kind)


def _column_label(col: int) -> str:
    layer, kind = divmod(col, len(NODE_KINDS))
    return f"L{layer} {NODE_KINDS[kind]}"


def _hover(name, a) -> str:
    if not a:
        return name
    return (f"{name}<br>clean {a['clean_last']:+.3f} corrupt {a['corrupt_last']:+.3f}<br>differs most at "
            f"{a['peak_token']!r} ({a['peak_share']:.0%})")


def _by_kind(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v)


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
