"""Subcommands of the circuits part, half A (registered by lmscope.cli.build_parser):

    lmscope task TASK|--pairs FILE         how well the model does a task: metric and accuracy, filtered counts
    lmscope patch TASK|--pairs FILE        activation patching heatmaps (layer x position, layer x head)
    lmscope attribute TASK|--pairs FILE    EAP / EAP-IG node (and --edges) scores; --compare checks them against
                                           real per-head / per-MLP patching
TASK is ioi, greater-than, quote-type or bracket-depth.
"""
from __future__ import annotations

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
    from ..errors import InputError
    if (args.task is None) == (args.pairs is None):
        raise InputError("give a TASK (ioi, greater-than, quote-type, bracket-depth) or --pairs FILE, not both")
    if args.html and Path(args.html).exists() and not args.overwrite:
        raise InputError(f"{args.html} exists; pass --overwrite to replace it")


def _task(args, model, default_n: int):
    from ..cli import _numbers
    from .tasks import load_task
    n = default_n if args.n is None else args.n
    return load_task(model, args.pairs or args.task, n=n, seed=args.seed,
                     templates=_numbers(args.template, int, "--template"))


def cmd_task(args) -> None:
    from ..cli import _emit, _load
    from .task_baseline import task_baseline
    _check_output(args)
    model = _load(args)
    _emit(args, task_baseline(model, _task(args, model, 200), batch_size=args.batch_size))


def cmd_patch(args) -> None:
    from ..cli import _emit, _load, _numbers
    from .patching import activation_patching
    _check_output(args)
    sites = [s for s in args.sites.replace(",", " ").split() if s]
    layers = _numbers(args.layers, int, "--layers")
    model = _load(args)
    task = _task(args, model, 16)
    _emit(args, activation_patching(model, task, sites, direction=args.direction,
                                    per_position=not args.all_positions, layers=layers,
                                    batch_size=args.batch_size, progress=not args.json))


def cmd_attribute(args) -> None:
    from ..cli import _emit, _load
    from .attribution import attribute, compare
    from .patching import activation_patching
    _check_output(args)
    model = _load(args)
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
    _emit(args, result)


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    from ..cli import _model_args

    p = sub.add_parser("task", help="a circuit task's baseline: metric, accuracy and what was filtered")
    _task_args(p)
    _model_args(p)
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
    _model_args(p)
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("attribute", help="attribution patching: EAP / EAP-IG node and edge scores")
    _task_args(p)
    p.add_argument("--method", default="eap", choices=["eap", "eap-ig"])
    p.add_argument("--steps", type=int, default=5, help="integrated-gradient steps for eap-ig (default 5)")
    p.add_argument("--edges", action="store_true", help="also score edges (node -> node through the residual)")
    p.add_argument("--compare", action="store_true",
                   help="also patch every head and MLP for real (noising) and report the Spearman correlation")
    _model_args(p)
    p.set_defaults(func=cmd_attribute, batch_size=16)
