"""Sparse vs dense circuits (Gao et al. 2025 report weight-sparse circuits ~16x smaller than dense ones at matched
pretraining loss).

    find_node_circuit   prune one model on one task (circuit.prune_nodes) and read it (edges, activations)
    heldout_loss        mean next-token cross-entropy (nats) over token windows
    matched_checkpoint  the dense folder or checkpoint whose held-out loss is closest to a target loss
    compare             per task, for the sparse model and the matched dense model: accuracy, circuit nodes and
                        edges, faithfulness, necessity; the dense/sparse edge ratio; controls (random circuits of
                        the same size, zero ablation, a random-label task, a randomly initialised model)
    CompareResult       .to_json(), .summary(), .figure(), .save()
"""
from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers as tf

from lmscope.core.errors import InputError
from lmscope.results import Result, table
from lmscope.papers.weight_sparse.circuit import NodePruneConfig, nonsense_task, prune_nodes
from lmscope.papers.weight_sparse.edges import count_edges
from lmscope.papers.weight_sparse.reading import NodeCircuit, head_attention, node_activations
from lmscope.core.models import Model


def find_node_circuit(model, task, reference, config: NodePruneConfig = NodePruneConfig(), *, heldout=None,
                      progress: bool = False, list_edges: int = 2000) -> NodeCircuit:
    out = prune_nodes(model, task, reference, config, heldout=heldout, progress=progress)
    edges = count_edges(model, out.masks, list_limit=list_edges)
    acts = node_activations(model, out.heldout, out.means, out.masks)
    notes = []
    if not out.info["target_reached_on_train"]:
        notes.append(f"the task loss target {out.info['target_loss']:.3f} nats was not reached even with every node "
                     f"kept (train loss {out.info['train_loss_circuit']:.3f}): the circuit is the whole model")
    heads = head_attention(model, out.heldout, out.means, out.masks)
    return NodeCircuit(model.spec, task.name, len(out.heldout), out.masks.to_json(), asdict(out.evaluation), edges,
                       acts, heads, out.info, notes)


@torch.no_grad()
def heldout_loss(model, windows: list[list[int]], batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of the windows."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = torch.tensor(windows[start:start + batch_size], device=model.device)
        logits = model.run(batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                 reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
    return total / count


def nonzero_parameters(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.hf.parameters()))


def candidate_folders(folder) -> list[Path]:
    """A model folder and the checkpoint folders under it (checkpoints/*, or any subfolder with a config.json)."""
    folder = Path(folder)
    if not (folder / "config.json").exists() and not any(folder.glob("*/config.json")) \
            and not any(folder.glob("checkpoints/*/config.json")):
        raise InputError(f"{folder} is not a model folder (no config.json in it or its checkpoints)")
    found = [folder] if (folder / "config.json").exists() else []
    found += sorted(p.parent for p in folder.glob("checkpoints/*/config.json"))
    found += sorted(p.parent for p in folder.glob("*/config.json") if p.parent.name != "checkpoints")
    return list(dict.fromkeys(found))


def matched_checkpoint(load, folder, target_loss: float, windows) -> tuple[object, float, list[dict]]:
    """The model (via `load(path)`) among `folder`'s candidates whose held-out loss is closest to target_loss."""
    scored = []
    for path in candidate_folders(folder):
        model = load(path)
        scored.append({"path": str(path), "heldout_loss": heldout_loss(model, windows)})
    best = min(scored, key=lambda r: abs(r["heldout_loss"] - target_loss))
    return load(Path(best["path"])), best["heldout_loss"], scored


def random_init(model, seed: int = 0):
    """The same architecture and config, randomly initialised (the control a careful replication needs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = tf.AutoModelForCausalLM.from_config(model.hf.config).to(model.device, model.dtype).eval()
    return Model(hf, model.tokenizer, f"{model.spec} (random init, seed {seed})")


def _row(circuit: NodeCircuit) -> dict:
    e = circuit.evaluation
    rand = e["random_faithfulness"]
    return {"accuracy": e["accuracy_full"], "circuit_accuracy": e["accuracy_circuit"], "nodes": e["n_nodes"],
            "nodes_total": e["n_nodes_total"], "edges": circuit.edges["edges"], "faithfulness": e["faithfulness"],
            "necessity_drop": e["necessity_drop"], "loss_full": e["loss_full"], "loss_circuit": e["loss_circuit"],
            "random_circuit_faithfulness": sum(rand) / len(rand) if rand else float("nan"),
            "zero_ablation_faithfulness": e.get("zero_ablation", {}).get("faithfulness", float("nan")),
            "target_reached": circuit.training.get("target_reached_on_train")}


@dataclass
class CompareResult(Result, kind="sparse_compare"):
    sparse: dict                   # {"spec", "heldout_loss", "nonzero_parameters"}
    dense: dict                    # the matched dense model, with every candidate's held-out loss
    tasks: dict                    # task -> {"sparse": row, "dense": row, "edge_ratio_dense_to_sparse": x}
    controls: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        s, d = self.sparse, self.dense
        lines = [f"sparse {s['spec']}: held-out loss {s['heldout_loss']:.3f}, {s['nonzero_parameters']:,} nonzero "
                 f"parameters",
                 f"dense  {d['spec']}: held-out loss {d['heldout_loss']:.3f}, {d['nonzero_parameters']:,} nonzero "
                 f"parameters (matched: closest held-out loss of {len(d.get('candidates', []))} candidates)",
                 "task                      model  acc    nodes   edges  faithful  necessity  random  zero-abl"]
        for name, t in self.tasks.items():
            for which in ("sparse", "dense"):
                r = t[which]
                lines.append(f"{name[:24]:<25} {which:<6} {_num(r['accuracy'], '.2f')} {r['nodes']:>7} "
                             f"{r['edges']:>8}  {_num(r['faithfulness'], '>7.3f')}  "
                             f"{_num(r['necessity_drop'], '>8.3f')}  {_num(r['random_circuit_faithfulness'], '>6.3f')}"
                             f"  {_num(r['zero_ablation_faithfulness'], '>7.3f')}")
            ratio = t["edge_ratio_dense_to_sparse"]
            lines.append(f"{'':<25} edges dense / sparse = "
                         + (_num(ratio, ".2f") if ratio is not None else "undefined (the sparse circuit has no edges)"))
        for name, r in self.controls.items():
            lines.append(f"control {name} ({r['task']}): nodes {r['nodes']} of {r['nodes_total']}, faithfulness "
                         f"{_num(r['faithfulness'], '.3f')}, target reached {r['target_reached']}, accuracy "
                         f"{_num(r['accuracy'], '.2f')}")
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        names = list(self.tasks)
        fig = go.Figure([go.Bar(name=w, x=names, y=[self.tasks[n][w]["edges"] for n in names])
                         for w in ("sparse", "dense")])
        fig.update_layout(title="Circuit edges per task, sparse vs dense (matched pretraining loss)", barmode="group",
                          yaxis_type="log", yaxis_title="edges (nonzero weights between kept nodes)",
                          width=900, height=450)
        return fig

    def title(self) -> str:
        return "Sparse vs dense circuits"

    def page_intro(self) -> str:
        return "Gao et al. 2025 comparison at matched pretraining loss; every circuit number on held-out prompts."

    def page_body(self) -> str:
        rows = [[n, w, _num(t[w]['accuracy'], ".2f"), t[w]["nodes"], t[w]["edges"], _num(t[w]['faithfulness'], ".3f"),
                 _num(t[w]['necessity_drop'], ".3f")] for n, t in self.tasks.items() for w in ("sparse", "dense")]
        return f"<pre>{html.escape(self.summary())}</pre>" + table(
            ["task", "model", "accuracy", "nodes", "edges", "faithfulness", "necessity drop"], rows)


def _num(x, spec: str) -> str:
    """A number for the summary; NaN (null in a saved JSON) prints as n/a."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'n/a':>{width or 0}}"
    return format(x, spec)


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.inf


def compare_sparse_dense(sparse, dense_folder, load, tasks: dict, reference, heldout_windows,
            config: NodePruneConfig = NodePruneConfig(), *, progress: bool = False, controls: bool = True,
            seed: int = 0) -> CompareResult:
    """`tasks`: name -> a function model -> (TaskSet to prune on, held-out TaskSet or None to split the first),
    built with that model's tokenizer. `load(path)` loads a dense folder or checkpoint. `reference` windows give the
    ablation means; `heldout_windows` the losses."""
    if not tasks:
        raise InputError("give at least one task")
    s_loss = heldout_loss(sparse, heldout_windows)
    dense, d_loss, candidates = matched_checkpoint(load, dense_folder, s_loss, heldout_windows)
    out = {}
    for name, build in tasks.items():
        rows = {}
        for which, model in (("sparse", sparse), ("dense", dense)):
            task, held = build(model)
            rows[which] = _row(find_node_circuit(model, task, reference, config, heldout=held, progress=progress))
        out[name] = {**rows, "edge_ratio_dense_to_sparse": _ratio(rows["dense"]["edges"], rows["sparse"]["edges"])}
    ctl = {}
    if controls:
        first_name, first = next(iter(tasks.items()))
        task, held = first(sparse)
        labels = find_node_circuit(sparse, nonsense_task(task, seed), reference, config,
                                   heldout=None if held is None else nonsense_task(held, seed + 1))
        init = find_node_circuit(random_init(sparse, seed), task, reference, config, heldout=held)
        ctl["random_labels_sparse"] = {**_row(labels), "task": first_name}
        ctl["random_init_sparse"] = {**_row(init), "task": first_name}
    return CompareResult({"spec": sparse.spec, "heldout_loss": s_loss,
                          "nonzero_parameters": nonzero_parameters(sparse)},
                         {"spec": dense.spec, "heldout_loss": d_loss, "nonzero_parameters": nonzero_parameters(dense),
                          "candidates": candidates},
                         out, ctl, {**asdict(config), "n_reference_windows": len(reference),
                                    "n_heldout_windows": len(heldout_windows)})
