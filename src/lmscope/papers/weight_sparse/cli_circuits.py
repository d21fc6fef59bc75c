"""`lmscope sparse prune | circuit | bridge | compare`: node circuits, bridges and the sparse-vs-dense comparison
(Gao et al. 2025). `register_circuit_commands(actions)` adds them to the `sparse` command group's subparsers
(`lmscope sparse train` lives in this folder's cli.py).

    lmscope sparse prune   --model hf:runs/sparse --task single_double_quote --html quote.html --out quote.json
    lmscope sparse circuit quote.json --model hf:runs/sparse --task single_double_quote --seed 1 --html page.html
    lmscope sparse bridge  --dense hf:runs/dense --sparse hf:runs/sparse --circuit quote.json --html bridges.html
    lmscope sparse compare --sparse runs/sparse --dense runs/dense --tasks single_double_quote,bracket_counting

Reference text (ablation means) is the validation split of the Python corpus, held-out text (losses, bridges) its
test split, bridge training text its train split (lmscope.papers.weight_sparse.data splits files by hash).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lmscope.cli.common import check_outputs, emit, load_model, model_options, output_options
from lmscope.core.errors import InputError, LmscopeError
from lmscope.core.models import load
from lmscope.data.corpora import iter_token_windows
from lmscope.papers.weight_sparse.bridges import BridgeConfig, bridge_steering, check_pair, save_bridges, train_bridges
from lmscope.papers.weight_sparse.circuit import (NODE_KINDS, NodePruneConfig, evaluate_nodes, node_sites,
                                                  node_zero_means, reference_means)
from lmscope.papers.weight_sparse.compare import candidate_folders, compare_sparse_dense, find_node_circuit
from lmscope.papers.weight_sparse.data import split_texts
from lmscope.papers.weight_sparse.edges import count_edges
from lmscope.papers.weight_sparse.reading import NodeCircuit, head_attention, node_activations
from lmscope.papers.weight_sparse.tasks import circuit_task_builder
from lmscope.results import check_output, write_atomic


def _common(q, model: bool = True) -> None:
    if model:
        model_options(q)
    q.add_argument("--n", type=int, default=200, help="prompts per task (default 200)")
    q.add_argument("--steps", type=int, default=200, help="mask-training steps (default 200)")
    q.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (default 32)")
    q.add_argument("--lr", type=float, default=0.1, help="learning rate of the gate logits (default 0.1)")
    q.add_argument("--target", type=float, default=0.15, help="task loss target in nats (default 0.15, the paper's)")
    q.add_argument("--above-model", type=float, default=None, metavar="NATS",
                   help="target = the model's own train task loss + NATS instead of --target (for models that do "
                        "not reach --target themselves)")
    q.add_argument("--kinds", default="", help="node kinds, comma-separated (default: all of attn_in,q,k,v,"
                                               "attn_out,mlp_in,neurons,mlp_out)")
    q.add_argument("--ablation", choices=("mean", "zero"), default="mean",
                   help="what a removed node is set to: its mean over reference code, or zero (default mean)")
    q.add_argument("--reference", type=int, default=64, help="reference windows for the means (default 64)")
    q.add_argument("--ctx", type=int, default=64, help="tokens per reference / held-out window (default 64)")
    q.add_argument("--seed", type=int, default=0, help="gate noise and sampling seed (default 0)")
    output_options(q)


def register_circuit_commands(actions) -> None:
    p = actions.add_parser("prune", help="the smallest node circuit with task loss under a target (held-out numbers)")
    _common(p)
    p.add_argument("--task", required=True, help="a task name")
    p.add_argument("--out", metavar="FILE.json", help="write the circuit (its kept nodes) as JSON")
    p.set_defaults(func=cmd_prune)

    c = actions.add_parser("circuit", help="evaluate and read a saved node circuit on a task's prompts")
    c.add_argument("circuit", help="a circuit file written by lmscope sparse prune --out")
    _common(c)
    c.add_argument("--task", required=True, help="the task to read the circuit on")
    c.set_defaults(func=cmd_circuit)

    b = actions.add_parser("bridge", help="train per-layer bridges between a dense and a sparse model")
    b.add_argument("--dense", required=True, help="hf:<folder> of the dense model")
    b.add_argument("--sparse", required=True, help="hf:<folder> of the sparse model (same tokenizer)")
    b.add_argument("--steps", type=int, default=200, help="Adam steps per bridge (default 200)")
    b.add_argument("--batch-size", type=int, default=8, help="code windows per step (default 8)")
    b.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    b.add_argument("--train-windows", type=int, default=256, help="training windows of train-split code (default 256)")
    b.add_argument("--heldout-windows", type=int, default=32, help="held-out windows of test-split code (default 32)")
    b.add_argument("--ctx", type=int, default=64, help="tokens per window (default 64)")
    b.add_argument("--circuit", metavar="FILE.json", help="a sparse circuit: flip its most separating node and "
                                                          "carry the flip into the dense model")
    b.add_argument("--task", help="the circuit's task (with --circuit)")
    b.add_argument("--n", type=int, default=64, help="prompts for the steering test (default 64)")
    b.add_argument("--save-bridges", metavar="FILE.safetensors", help="also write the trained bridges")
    b.add_argument("--seed", type=int, default=0, help="initialisation and window order (default 0)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                   help="both models' dtype (default float32)")
    b.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    output_options(b)
    b.set_defaults(func=cmd_bridge)

    k = actions.add_parser("compare", help="sparse vs dense circuits per task at matched pretraining loss")
    k.add_argument("--sparse", required=True, help="the sparse model folder")
    k.add_argument("--dense", required=True, help="the dense model folder (its checkpoints are candidates)")
    k.add_argument("--tasks", required=True, help="comma-separated task names")
    k.add_argument("--heldout-windows", type=int, default=64, help="held-out windows for matching the loss (default 64)")
    k.add_argument("--no-controls", action="store_true", help="skip the random-label and random-init controls")
    k.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                   help="the models' dtype (default float32)")
    k.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    _common(k, model=False)
    k.set_defaults(func=cmd_compare)


# ---------------------------------------------------------------------------------------------------------------

def _check_outputs(args, **files) -> None:
    """The output rule before any work: --html / --json FILE, and each extra output {dest: suffix}."""
    check_outputs(args)
    for dest, suffix in files.items():
        if getattr(args, dest, None):
            check_output(getattr(args, dest), overwrite=args.overwrite, suffixes=(suffix,), what=f"--{dest}")


def _load(spec: str, args):
    return load(spec, dtype=args.dtype, device=args.device)


def _split_windows(model, split: str, n: int, ctx: int) -> list[list[int]]:
    """n windows of ctx tokens of the Python files of one split (lmscope.papers.weight_sparse.data splits them by
    hash), each file tokenized on its own (any tokenizer: no end-of-text token needed)."""
    if model.tokenizer is None:
        raise InputError(f"{model.spec} has no tokenizer")
    longest = getattr(model.hf.config, "max_position_embeddings", None)
    if longest is not None and ctx > longest:
        raise InputError(f"--ctx {ctx} is longer than {model.spec}'s context ({longest} tokens); pass --ctx {longest} "
                         f"or less")
    texts = split_texts(split, max_chars=max(200_000, n * ctx * 8))
    windows = [w.input_ids for w in iter_token_windows(model.tokenizer, texts, n_tokens=2 * (n + 1) * ctx, window=ctx)]
    windows = [w for w in windows if len(w) == ctx][:n]
    if len(windows) < n:
        raise InputError(f"the {split} split gives {len(windows)} windows of {ctx} tokens, fewer than {n}")
    return windows


def _config(args):
    kinds = tuple(k for k in args.kinds.replace(",", " ").split()) or NODE_KINDS
    return NodePruneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, target_loss=args.target,
                           kinds=kinds, ablation=args.ablation, seed=args.seed,
                           above_model=args.above_model)


def cmd_prune(args) -> None:
    _check_outputs(args, out=".json")
    config = _config(args)
    model = load_model(args)
    task, held = circuit_task_builder(args.task, args.n, args.seed)(model)
    circuit = find_node_circuit(model, task, _split_windows(model, "validation", args.reference, args.ctx), config,
                                heldout=held, progress=not args.json)
    if args.out:
        saved = {"format": "lmscope node circuit", "model": circuit.model, "task": circuit.task,
                 "nodes": circuit.nodes, "training": {k: v for k, v in circuit.training.items() if k != "history"}}
        print(f"lmscope: wrote {write_atomic(args.out, json.dumps(saved, indent=1, allow_nan=False))}",
              file=sys.stderr)
    emit(args, circuit)


def load_circuit_nodes(path, model) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read circuit file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != "lmscope node circuit":
        raise InputError(f"{path} is not a node circuit file (written by lmscope sparse prune --out)")
    for site, idxs in data["nodes"].items():
        shape = model.site_shape(site)
        if any(len(i) != len(shape) or not all(0 <= v < s for v, s in zip(i, shape)) for i in idxs):
            raise InputError(f"{path}: node indices of {site} do not fit {model.spec} (shape {shape})")
    return data


def cmd_circuit(args) -> None:
    _check_outputs(args)
    model = load_model(args)
    data = load_circuit_nodes(args.circuit, model)
    task, held = circuit_task_builder(args.task, args.n, args.seed)(model)
    task = held if held is not None else task      # the held-out words where the task has them
    shell = NodeCircuit(model.spec, task.name, len(task), data["nodes"], {}, {})
    masks = shell.masks(model)
    sites = list(masks.masks)
    zero = node_zero_means(model, sites)
    means = zero if args.ablation == "zero" else reference_means(
        model, _split_windows(model, "validation", args.reference, args.ctx), sites)
    from dataclasses import asdict
    ev = evaluate_nodes(model, task, means, masks, zero_means_=None if args.ablation == "zero" else zero,
                        seed=args.seed, batch_size=args.batch_size)
    circuit = NodeCircuit(model.spec, task.name, len(task), data["nodes"], asdict(ev),
                          count_edges(model, masks, list_limit=2000), node_activations(model, task, means, masks),
                          head_attention(model, task, means, masks), data.get("training", {}),
                          [f"found on {data.get('task')}; evaluated on {len(task)} prompts of seed {args.seed}",
                           "no removal curve: a circuit file keeps no gate logits to order its nodes by"])
    emit(args, circuit)


def _top_node(circuit_data: dict, model, task, means) -> tuple[str, tuple]:
    """The circuit node whose last-token activation separates the two answers most (the prompts of a both-ways task
    hold both answers on each side, so clean vs corrupt is not the contrast; without answer labels, clean vs
    corrupt)."""
    masks = NodeCircuit(model.spec, "", 0, circuit_data["nodes"], {}, {}).masks(model)
    rows = node_activations(model, task, means, masks)
    if not rows:
        raise InputError("the circuit has no nodes to flip")
    best = max(rows, key=lambda r: abs(r.get("label_separation_last", r["separation"])))
    return best["site"], tuple(best["index"])


def cmd_bridge(args) -> None:
    _check_outputs(args, save_bridges=".safetensors")
    if bool(args.circuit) != bool(args.task):
        raise InputError("--circuit and --task go together")
    dense, sparse = _load(args.dense, args), _load(args.sparse, args)
    check_pair(dense, sparse)
    train = _split_windows(sparse, "train", args.train_windows, args.ctx)
    held = _split_windows(sparse, "test", args.heldout_windows, args.ctx)
    config = BridgeConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    bridges, result = train_bridges(dense, sparse, train, held, config, progress=not args.json)
    if args.circuit:
        data = load_circuit_nodes(args.circuit, sparse)
        task, held = circuit_task_builder(args.task, args.n, args.seed + 1)(sparse)   # prompts not used to find it
        task = held if held is not None else task
        means = reference_means(sparse, _split_windows(sparse, "validation", 64, args.ctx), node_sites(sparse))
        site, index = _top_node(data, sparse, task, means)                 # chosen on every held-out prompt
        task = task.subset(task.largest_group())                              # one token length: positions align
        layer = int(site.split(".")[1])
        pair = result.pairs[layer]
        result.steering = bridge_steering(dense, sparse, bridges[layer], tuple(pair), task, site, index,
                                          seed=args.seed)
    if args.save_bridges:
        print(f"lmscope: wrote {save_bridges(bridges, args.save_bridges, overwrite=args.overwrite)}", file=sys.stderr)
    emit(args, result)


def cmd_compare(args) -> None:
    _check_outputs(args)
    for folder in (args.sparse, args.dense):
        candidate_folders(folder)                       # one clear error before any work
    names = [t for t in args.tasks.replace(",", " ").split()]
    sparse = _load(f"hf:{args.sparse}", args)
    tasks = {name: circuit_task_builder(name, args.n, args.seed) for name in names}
    result = compare_sparse_dense(sparse, args.dense, lambda p: _load(f"hf:{p}", args), tasks,
                     _split_windows(sparse, "validation", args.reference, args.ctx),
                     _split_windows(sparse, "test", args.heldout_windows, args.ctx), _config(args),
                     progress=not args.json, controls=not args.no_controls, seed=args.seed)
    emit(args, result)

