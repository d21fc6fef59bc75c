"""`lmscope circuit`: find a circuit (learned masks, or the top heads of patching / EAP / EAP-IG scores), measure
its faithfulness on held-out prompts, save it; `lmscope circuit eval CIRCUIT` checks a saved circuit on prompts."""
from __future__ import annotations

import sys

METHODS = ("prune", "patch", "eap", "eap-ig")


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli import _model_args
    p = sub.add_parser("circuit", help="find a minimal faithful circuit (prune / patch / eap / eap-ig) or evaluate one",
                       description="lmscope circuit TASK|--pairs FILE --method M [...]   or   "
                                   "lmscope circuit eval CIRCUIT.json --pairs FILE|--task NAME [...]")
    p.add_argument("what", nargs="*", metavar="TASK | eval CIRCUIT",
                   help="a task (ioi, greater-than, quote-type, bracket-depth), or 'eval' and a circuit file")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"clean\", \"corrupt\", \"answer\", \"wrong\"}")
    p.add_argument("--task", dest="task_name", metavar="NAME", help="eval: a built-in task instead of --pairs")
    p.add_argument("--method", choices=METHODS, default="prune")
    _model_args(p)
    p.add_argument("--n", type=int, default=200, help="prompts of a built-in task (default 200)")
    p.add_argument("--train", type=int, default=None, help="prompts to learn / score on (default: half); "
                                                            "the rest are held out for every number reported")
    p.add_argument("--heads", type=int, default=None,
                   help="head budget (default 20%% of the heads): prune keeps at most this many, patch / eap / "
                        "eap-ig keep exactly this many (top scores)")
    p.add_argument("--steps", type=int, default=100, help="prune: optimiser steps (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lam", type=float, default=1.0, help="prune: weight of the size penalty (default 1.0)")
    p.add_argument("--lr", type=float, default=0.3, help="prune: learning rate of the gate logits (default 0.3)")
    p.add_argument("--keep-mlps", action="store_true", help="prune: learn head gates only, keep every MLP")
    p.add_argument("--ablation", choices=("mean", "zero"), default="mean",
                   help="pruned nodes get the task mean (default) or zero")
    p.add_argument("--ig-steps", type=int, default=8, help="eap-ig: integrated-gradient steps")
    p.add_argument("--random-draws", type=int, default=10, help="random circuits of the same size (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE.json", help="write the circuit file (never replaces an existing file)")
    p.add_argument("--graph", metavar="FILE.html", help="write the circuit graph (EAP edge scores) as a page")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE", help="write the faithfulness page")
    p.set_defaults(func=cmd_circuit)


def cmd_circuit(args) -> None:
    from lmscope.cli import _emit, _load
    from lmscope.errors import InputError
    what = list(args.what)
    if what[:1] == ["eval"]:
        if len(what) != 2:
            raise InputError("usage: lmscope circuit eval CIRCUIT.json --pairs FILE (or --task NAME)")
        if (args.pairs is None) == (args.task_name is None):
            raise InputError("circuit eval needs --pairs FILE or --task NAME (one of them)")
        model = _load(args)
        from .circuit_file import load_circuit
        from .run import evaluate_saved
        circuit = load_circuit(what[1], model)
        task = _task(model, args.pairs or args.task_name, args)
        _emit(args, evaluate_saved(model, circuit, task, ablation=args.ablation, n_random=args.random_draws,
                                   seed=args.seed, batch_size=args.batch_size))
        return
    if len(what) > 1 or (what and args.pairs) or (not what and not args.pairs):
        raise InputError("give one task name or --pairs FILE (or 'eval CIRCUIT')")
    for flag in ("out", "graph", "html"):
        path = getattr(args, flag)
        if path and _exists(path):
            raise InputError(f"{path} exists; choose another name or remove it first")
    model = _load(args)
    task = _task(model, what[0] if what else args.pairs, args)
    from .run import find_circuit
    result, circuit = find_circuit(model, task, method=args.method, n_train=args.train, max_heads=args.heads,
                                   steps=args.steps, batch_size=args.batch_size, lam=args.lam, lr=args.lr,
                                   mlps=not args.keep_mlps, ablation=args.ablation, ig_steps=args.ig_steps,
                                   n_random=args.random_draws, seed=args.seed, progress=not args.json)
    if args.out:
        print(f"lmscope: wrote {circuit.save(args.out)}", file=sys.stderr)
    if args.graph:
        from .graph import circuit_graph
        graph = circuit_graph(model, task, circuit.nodes(model))
        print(f"lmscope: wrote {graph.save(args.graph)}", file=sys.stderr)
    _emit(args, result)


def _exists(path) -> bool:
    from pathlib import Path
    return Path(path).exists()


def _task(model, name_or_path, args):
    from .tasks import load_task
    return load_task(model, name_or_path, n=args.n, seed=args.seed)
