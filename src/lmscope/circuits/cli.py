"""Subcommands of part 3 (registered by lmscope.cli.main):

    lmscope task TASK|--pairs FILE         how well the model does a task
    lmscope patch TASK|--pairs FILE        activation patching heatmaps
    lmscope attribute TASK|--pairs FILE    EAP / EAP-IG node (and edge) scores
    lmscope circuit TASK|--pairs FILE      find a circuit (prune / patch / eap / eap-ig), measure it on held-out prompts
    lmscope circuit eval CIRCUIT.json      a saved circuit's faithfulness on prompts (--pairs FILE or --task NAME)

Every output (--html, --json FILE, --out, --graph) is checked before the model loads.
"""
from __future__ import annotations

import sys

from lmscope.cli.common import (add_config_options, check_outputs, config_from_args, emit, load_model, model_options,
                                numbers, output_options)
from lmscope.core.errors import InputError
from lmscope.results.output import HTML, check_output
from lmscope.circuits.attribution import METHODS as ATTRIBUTION_METHODS, attribute, compare
from lmscope.circuits.circuit_file import load_circuit
from lmscope.circuits.graph import circuit_graph
from lmscope.circuits.patching import DIRECTIONS, activation_patching
from lmscope.circuits.prune import PruneConfig
from lmscope.circuits.run import evaluate_saved, find_circuit
from lmscope.circuits.task_baseline import task_baseline
from lmscope.circuits.tasks import load_circuit_task

METHODS = ("prune", "patch", "eap", "eap-ig")


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`: task, patch, attribute, circuit."""
    p = sub.add_parser("task", help="a circuit task's baseline: metric, accuracy and what was filtered")
    _task_args(p)
    p.set_defaults(func=cmd_task)

    p = sub.add_parser("patch", help="activation patching between a task's clean and corrupt prompts")
    _task_args(p)
    p.add_argument("--sites", default="resid_pre,attn_out,mlp_out,z",
                   help="site kinds: resid_pre, resid_mid, resid_post, attn_out, mlp_out (layer x position) and "
                        "z (layer x head); default resid_pre,attn_out,mlp_out,z")
    p.add_argument("--direction", default="denoising", choices=DIRECTIONS,
                   help="denoising: clean activations into the corrupt run (default); noising: the reverse")
    p.add_argument("--all-positions", action="store_true",
                   help="patch every position at once (one number per layer; default: a layer x position map)")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("attribute", help="attribution patching: EAP / EAP-IG node and edge scores")
    _task_args(p, batch_size=16)
    p.add_argument("--method", default="eap", choices=ATTRIBUTION_METHODS, help="eap (default) or eap-ig")
    p.add_argument("--steps", type=int, default=5, help="integrated-gradient steps for eap-ig (default 5)")
    p.add_argument("--edges", action="store_true", help="also score edges (node -> node through the residual; "
                                                         "default: nodes only)")
    p.add_argument("--compare", action="store_true", help="also patch every head and MLP for real (noising) and "
                                                           "report the Spearman correlation (default: no)")
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("circuit", help="find a minimal faithful circuit (prune / patch / eap / eap-ig) or evaluate one",
                       description="lmscope circuit TASK|--pairs FILE --method M [...]   or   "
                                   "lmscope circuit eval CIRCUIT.json --pairs FILE|--task NAME [...]")
    p.add_argument("what", nargs="*", metavar="TASK | eval CIRCUIT",
                   help="a task (ioi, greater-than, quote-type, bracket-depth), or 'eval' and a circuit file")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"clean\", \"corrupt\", \"answer\", \"wrong\"} "
                                                   "(default: none, a built-in task)")
    p.add_argument("--task", dest="task_name", metavar="NAME", help="eval: a built-in task instead of --pairs "
                                                                          "(default: none)")
    p.add_argument("--method", choices=METHODS, default="prune", help="how the circuit is found (default prune)")
    p.add_argument("--n", type=int, default=200, help="prompts of a built-in task (default 200)")
    p.add_argument("--ig-steps", type=int, default=8, help="eap-ig: integrated-gradient steps (default 8)")
    _corruption_arg(p)
    add_config_options(p, PruneConfig)
    p.add_argument("--out", metavar="FILE.json", help="write the circuit file (default: not written)")
    p.add_argument("--graph", metavar="FILE.html", help="write the circuit graph (EAP edge scores) as a page "
                                                        "(default: not written)")
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_circuit)


def _corruption_arg(p) -> None:
    p.add_argument("--corruption", choices=("s2", "abc"), default=None,
                   help="ioi only: s2 = only S2 replaced (the EAP-IG repository's), abc = all three names resampled "
                        "(Wang et al.) (default: s2)")


def _task_args(p, batch_size: int = 32) -> None:
    p.add_argument("task", nargs="?", help="ioi, greater-than, quote-type or bracket-depth")
    p.add_argument("--pairs", help='jsonl of {"clean", "corrupt", "answer", "wrong"} instead of a built-in task '
                                           '(default: none)')
    p.add_argument("--n", type=int, default=None, help="prompts of a built-in task (default: 200 for task, 16 for "
                                                       "patch, 32 for attribute)")
    p.add_argument("--seed", type=int, default=0, help="which prompts of a built-in task (default 0)")
    p.add_argument("--template", help="comma-separated template ids of a built-in task (default: all)")
    _corruption_arg(p)
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"prompts per forward pass (default "
                                                                      f"{batch_size})")
    model_options(p)
    output_options(p)


def _check_task_args(args) -> None:
    """Before any work (the model is not loaded yet): one task source, and every output location."""
    if (args.task is None) == (args.pairs is None):
        raise InputError("give a TASK (ioi, greater-than, quote-type, bracket-depth) or --pairs FILE, not both")
    check_outputs(args)


def _task(args, model, default_n: int):
    n = default_n if args.n is None else args.n
    return load_circuit_task(model, args.pairs or args.task, n=n, seed=args.seed,
                             templates=numbers(args.template, int, "--template"), corruption=args.corruption)


def cmd_task(args) -> None:
    _check_task_args(args)
    model = load_model(args)
    emit(args, task_baseline(model, _task(args, model, 200), batch_size=args.batch_size))


def cmd_patch(args) -> None:
    _check_task_args(args)
    sites = [s for s in args.sites.replace(",", " ").split() if s]
    layers = numbers(args.layers, int, "--layers")
    model = load_model(args)
    task = _task(args, model, 16)
    emit(args, activation_patching(model, task, sites, direction=args.direction,
                                    per_position=not args.all_positions, layers=layers,
                                    batch_size=args.batch_size, progress=not args.json))


def cmd_attribute(args) -> None:
    _check_task_args(args)
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
        result.comparison = {**c, "patching": patched.to_json()}
    emit(args, result)


def cmd_circuit(args) -> None:
    what = list(args.what)
    if what[:1] == ["eval"]:
        if len(what) != 2:
            raise InputError("usage: lmscope circuit eval CIRCUIT.json --pairs FILE (or --task NAME)")
        if (args.pairs is None) == (args.task_name is None):
            raise InputError("circuit eval needs --pairs FILE or --task NAME (one of them)")
        if args.out or args.graph:
            raise InputError("circuit eval writes no circuit file or graph (--out, --graph); use --json FILE or "
                             "--html FILE")
        check_outputs(args)
        model = load_model(args)
        circuit = load_circuit(what[1], model)
        task = load_circuit_task(model, args.pairs or args.task_name, n=args.n, seed=args.seed,
                                 corruption=args.corruption)
        emit(args, evaluate_saved(model, circuit, task, ablation=args.ablation, n_random=args.n_random,
                                  seed=args.seed, batch_size=args.batch_size))
        return
    if len(what) > 1 or (what and args.pairs) or (not what and not args.pairs):
        raise InputError("give one task name or --pairs FILE (or 'eval CIRCUIT')")
    check_outputs(args)
    if args.out:
        check_output(args.out, overwrite=args.overwrite, suffixes=(".json",), what="--out")
    if args.graph:
        check_output(args.graph, overwrite=args.overwrite, suffixes=HTML, what="--graph")
    model = load_model(args)
    task = load_circuit_task(model, what[0] if what else args.pairs, n=args.n, seed=args.seed,
                             corruption=args.corruption)
    result, circuit = find_circuit(model, task, config_from_args(PruneConfig, args), method=args.method,
                                   ig_steps=args.ig_steps, progress=not args.json)
    if args.out:
        print(f"lmscope: wrote {circuit.save(args.out, overwrite=args.overwrite)}", file=sys.stderr)
    if args.graph:
        graph = circuit_graph(model, task, circuit.nodes(model))
        print(f"lmscope: wrote {graph.save(args.graph, overwrite=args.overwrite)}", file=sys.stderr)
    emit(args, result)
