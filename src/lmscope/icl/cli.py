"""Subcommands of this part (registered by lmscope.cli.build_parser): `fv` (function and task vectors) and `truth`."""
from __future__ import annotations


def cmd_fv(args) -> None:
    from lmscope.cli.common import emit, load_model, numbers
    from lmscope.data.icl_tasks import load_pairs, load_task
    from lmscope.core.errors import InputError
    from lmscope.icl.function_vectors import function_vector
    from lmscope.icl.prompts import split_pairs

    if (args.task is None) == (args.pairs is None):
        raise InputError("give --task NAME or --pairs FILE (one of them)")
    # the task is read and checked before the model loads: bad input fails fast
    task = load_task(args.task) if args.task else load_pairs(args.pairs)
    split_pairs(task.pairs, n_shots=args.shots, heldout_fraction=args.heldout, seed=args.seed)
    layers = numbers(args.layers, int, "--layers")
    model = load_model(args)
    emit(args, function_vector(model, task, n_shots=args.shots, n_heads=args.heads, n_mean_prompts=args.mean_prompts,
                                n_cie_prompts=args.cie_prompts, layers=layers, heldout_fraction=args.heldout,
                                seed=args.seed, with_task_vector=not args.no_task_vector, progress=not args.json))


def cmd_truth(args) -> None:
    from lmscope.cli.common import emit, load_model, numbers
    from lmscope.directions.truth import truth_direction

    layers = numbers(args.layers, int, "--layers")
    model = load_model(args)
    emit(args, truth_direction(model, layers=layers, position=args.position, top_k=args.top_k,
                                heads=not args.no_heads, seed=args.seed))


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli.common import model_options
    from lmscope.data.icl_tasks import TASKS

    p = sub.add_parser("fv", help="function vectors (Todd et al. 2024) and task vectors (Hendel et al. 2023)",
                       description="Build a function vector from few-shot prompts of a task (mean head outputs, "
                                   "causal indirect effect per head, top heads summed through the output "
                                   "projection), add it to zero-shot prompts at each layer, and report held-out "
                                   "first-token accuracy against zero-shot and few-shot; the task vector "
                                   "(replacing the zero-shot state by the few-shot one) alongside.")
    p.add_argument("--task", help=f"a bundled task: {', '.join(TASKS)}")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl file of {\"input\": ..., \"output\": ...} lines")
    model_options(p)
    p.add_argument("--shots", type=int, default=10, help="demonstrations per few-shot prompt (default 10)")
    p.add_argument("--heads", type=int, default=10, help="top heads summed into the function vector (default 10)")
    p.add_argument("--cie-prompts", type=int, default=20, help="shuffled-label prompts for the CIE (default 20)")
    p.add_argument("--mean-prompts", type=int, default=32, help="few-shot prompts for mean activations (default 32)")
    p.add_argument("--layers", help="layers to put the vectors at, comma-separated (default: all)")
    p.add_argument("--heldout", type=float, default=0.3, help="fraction of pairs held out (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="split and prompt sampling")
    p.add_argument("--no-task-vector", action="store_true", help="skip the task-vector sweep")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")
    p.set_defaults(func=cmd_fv)

    p = sub.add_parser("truth", help="truth direction: per-layer probes on true/false city statements, ITI heads",
                       description="Probe 'The city of X is in Y.' statements (true and false, from the bundled "
                                   "city table, split by city) layer by layer and head by head.")
    model_options(p)
    p.add_argument("--layers", help="layers, comma-separated (default: all)")
    p.add_argument("--position", type=int, default=-1,
                   help="token read: -1 the final '.', -2 the last token of the country (default -1)")
    p.add_argument("--top-k", type=int, default=10, help="heads to report (default 10)")
    p.add_argument("--no-heads", action="store_true", help="skip the per-head probes")
    p.add_argument("--seed", type=int, default=0, help="false countries and the city split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")
    p.set_defaults(func=cmd_truth)
