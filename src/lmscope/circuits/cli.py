"""`lmscope circuit`: find a circuit (learned masks, or the top heads of patching / EAP / EAP-IG scores), measure
its faithfulness on held-out prompts, save it; `lmscope circuit eval CIRCUIT` checks a saved circuit on prompts.

    lmscope task TASK|--pairs FILE         how well the model does a task
    lmscope patch TASK|--pairs FILE        activation patching heatmaps
    lmscope attribute TASK|--pairs FILE    EAP / EAP-IG node scores
"""
from __future__ import annotations

import sys

METHODS = ("prune", "patch", "eap", "eap-ig")


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`: task, patch, attribute, circuit."""
    register_patching(sub)
    from lmscope.cli.common import model_options
    p = sub.add_parser("circuit", help="find a minimal faithful circuit (prune / patch / eap / eap-ig) or evaluate one",
                       description="lmscope circuit TASK|--pairs FILE --method M [...]   or   "
                                   "lmscope circuit eval CIRCUIT.json --pairs FILE|--task NAME [...]")
    p.add_argument("what", nargs="*", metavar="TASK | eval CIRCUIT",
                   help="a task (ioi, greater-than, quote-type, bracket-depth), or 'eval' and a circuit file")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"clean\", \"corrupt\", \"answer\", \"wrong\"}")
    p.add_argument("--task", dest="task_name", metavar="NAME", help="eval: a built-in task instead of --pairs")
    p.add_argument("--method", choices=METHODS, default="prune")
    model_options(p)
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
    from lmscope.cli.common import emit, load_model
    from lmscope.core.errors import InputError
    what = list(args.what)
    if what[:1] == ["eval"]:
        if len(what) != 2:
            raise InputError("usage: lmscope circuit eval CIRCUIT.json --pairs FILE (or --task NAME)")
        if (args.pairs is None) == (args.task_name is None):
            raise InputError("circuit eval needs --pairs FILE or --task NAME (one of them)")
        model = load_model(args)
        from lmscope.circuits.circuit_file import load_circuit
        from lmscope.circuits.run import evaluate_saved
        circuit = load_circuit(what[1], model)
        task = _task(model, args.pairs or args.task_name, args)
        emit(args, evaluate_saved(model, circuit, task, ablation=args.ablation, n_random=args.random_draws,
                                   seed=args.seed, batch_size=args.batch_size))
        return
    if len(what) > 1 or (what and args.pairs) or (not what and not args.pairs):
        raise InputError("give one task name or --pairs FILE (or 'eval CIRCUIT')")
    for flag in ("out", "graph", "html"):
        path = getattr(args, flag)
        if path and _exists(path):
            raise InputError(f"{path} exists; choose another name or remove it first")
    model = load_model(args)
    task = _task(model, what[0] if what else args.pairs, args)
    from lmscope.circuits.run import find_circuit
    result, circuit = find_circuit(model, task, method=args.method, n_train=args.train, max_heads=args.heads,
                                   steps=args.steps, batch_size=args.batch_size, lam=args.lam, lr=args.lr,
                                   mlps=not args.keep_mlps, ablation=args.ablation, ig_steps=args.ig_steps,
                                   n_random=args.random_draws, seed=args.seed, progress=not args.json)
    if args.out:
        print(f"lmscope: wrote {circuit.save(args.out)}", file=sys.stderr)
    if args.graph:
        from lmscope.circuits.graph import circuit_graph
        graph = circuit_graph(model, task, circuit.nodes(model))
        print(f"lmscope: wrote {graph.save(args.graph)}", file=sys.stderr)
    emit(args, result)


def _exists(path) -> bool:
    from pathlib import Path
    return Path(path).exists()


def _task(model, name_or_path, args):
    from lmscope.circuits.tasks import load_task
    return load_task(model, name_or_path, n=args.n, seed=args.seed)



import sys
from pathlib import Path


def _task_args(p) -> None:
    p.add_argument("task", nargs="?", help="ioi, greater-than, quote-type or bracket-depth")
    p.add_argument("--pairs", help='jsonl of {"clean", "corrupt", "answer", "wrong"} instead of a built-in task')
    p.add_argument("--n", type=int, default=None, help="prompts of a built-in task (default: per command)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", help="comma-separated template ids of a built-in task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", help="write a self-contained page to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --html file")


def _check_output(args) -> None:
    """Before any work (the model is not loaded yet): one task source, and no existing output replaced silently."""
    from lmscope.core.errors import InputError
    if (args.task is None) == (args.pairs is None):
        raise InputError("give a TASK (ioi, greater-than, quote-type, bracket-depth) or --pairs FILE, not both")
    if args.html and Path(args.html).exists() and not args.overwrite:
        raise InputError(f"{args.html} exists; pass --overwrite to replace it")


def _task(args, model, default_n: int):
    from lmscope.cli.common import numbers
    from lmscope.circuits.tasks import load_task
    n = default_n if args.n is None else args.n
    return load_task(model, args.pairs or args.task, n=n, seed=args.seed,
                     templates=numbers(args.template, int, "--template"))


def cmd_task(args) -> None:
    from lmscope.cli.common import emit, load_model
    from lmscope.circuits.task_baseline import task_baseline
    _check_output(args)
    model = load_model(args)
    emit(args, task_baseline(model, _task(args, model, 200), batch_size=args.batch_size))


def cmd_patch(args) -> None:
    from lmscope.cli.common import emit, load_model, numbers
    from lmscope.circuits.patching import activation_patching
    _check_output(args)
    sites = [s for s in args.sites.replace(",", " ").split() if s]
    layers = numbers(args.layers, int, "--layers")
    model = load_model(args)
    task = _task(args, model, 16)
    emit(args, activation_patching(model, task, sites, direction=args.direction,
                                    per_position=not args.all_positions, layers=layers,
                                    batch_size=args.batch_size, progress=not args.json))


def cmd_attribute(args) -> None:
    from lmscope.cli.common import emit, load_model
    from lmscope.circuits.attribution import attribute, compare
    from lmscope.circuits.patching import activation_patching
    _check_output(args)
    model = load_model(args)
    task = _task(args, model, 32)
    result = attribute(model, task, args.method, steps=args.steps, edges=args.edges, batch_size=args.batch_size,
                       progress=not args.json)
    if args.compare:
        patched = activation_patching(model, task, ["z", "mlp_out"], direction="noising", per_position=False,
                                      batch_size=args.batch_size, progress=not args.json)
        c = compare(result, patched)
        result.notes.append(
            f"against real noising patching ({patched.n_forwards} forwards, {patched.seconds:.0f}s): Spearman "
            f"heads {c['heads']['spearman']:.3f} (|.| {c['heads']['spearman_abs']:.3f}, n={c['heads']['n']}), "
            f"MLPs {c['mlps']['spearman']:.3f} (|.| {c['mlps']['spearman_abs']:.3f}, n={c['mlps']['n']})")
        if args.json:
            import json
            print(json.dumps({**result.to_json(), "compare": c, "patching": patched.to_json()}))
            if args.html:
                print(f"lmscope: wrote {result.save(args.html)}", file=sys.stderr)
            return
    emit(args, result)


def register_patching(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli.common import model_options

    p = sub.add_parser("task", help="a circuit task's baseline: metric, accuracy and what was filtered")
    _task_args(p)
    model_options(p)
    p.set_defaults(func=cmd_task)

    p = sub.add_parser("patch", help="activation patching between a task's clean and corrupt prompts")
    _task_args(p)
    p.add_argument("--sites", default="resid_pre,attn_out,mlp_out,z",
                   help="site kinds: resid_pre, resid_mid, resid_post, attn_out, mlp_out (layer x position) and "
                        "z (layer x head); default resid_pre,attn_out,mlp_out,z")
    p.add_argument("--direction", default="denoising", choices=["denoising", "noising"],
                   help="denoising: clean activations into the corrupt run (default); noising: the reverse")
    p.add_argument("--all-positions", action="store_true",
                   help="patch every position at once (one number per layer) instead of a layer x position map")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    model_options(p)
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("attribute", help="attribution patching: EAP / EAP-IG node and edge scores")
    _task_args(p)
    p.add_argument("--method", default="eap", choices=["eap", "eap-ig"])
    p.add_argument("--steps", type=int, default=5, help="integrated-gradient steps for eap-ig (default 5)")
    p.add_argument("--edges", action="store_true", help="also score edges (node -> node through the residual)")
    p.add_argument("--compare", action="store_true",
                   help="also patch every head and MLP for real (noising) and report the Spearman correlation")
    model_options(p)
    p.set_defaults(func=cmd_attribute, batch_size=16)
