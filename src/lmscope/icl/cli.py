"""Subcommands of this part (registered by lmscope.cli.main.build_parser): `fv` (function and task vectors) and
`truth` (the truth direction). Outputs (--json FILE, --html) are checked before the model loads."""
from __future__ import annotations

from lmscope.cli.common import (add_config_options, check_outputs, config_from_args, emit, load_model, model_options,
                                output_options)
from lmscope.core.errors import InputError
from lmscope.data.icl_tasks import TASKS, load_icl_task, load_pairs
from lmscope.directions import TruthConfig, truth_direction
from lmscope.icl.function_vectors import FvConfig, function_vector
from lmscope.icl.prompts import split_pairs


def cmd_fv(args) -> None:
    check_outputs(args)
    if (args.task is None) == (args.pairs is None):
        raise InputError("give --task NAME or --pairs FILE (one of them)")
    # the task is read and checked before the model loads: bad input fails fast
    task = load_icl_task(args.task) if args.task else load_pairs(args.pairs)
    config = config_from_args(FvConfig, args)
    split_pairs(task.pairs, n_shots=config.n_shots, heldout_fraction=config.heldout_fraction, seed=config.seed)
    model = load_model(args)
    emit(args, function_vector(model, task, config, progress=not args.json))


def cmd_truth(args) -> None:
    check_outputs(args)
    config = config_from_args(TruthConfig, args)
    model = load_model(args)
    emit(args, truth_direction(model, config))


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("fv", help="function vectors (Todd et al. 2024) and task vectors (Hendel et al. 2023)",
                       description="Build a function vector from few-shot prompts of a task (mean head outputs, "
                                   "causal indirect effect per head, top heads summed through the output "
                                   "projection), add it to zero-shot prompts at each layer, and report held-out "
                                   "first-token accuracy against zero-shot and few-shot; the task vector "
                                   "(replacing the zero-shot state by the few-shot one) alongside.")
    p.add_argument("--task", help=f"a bundled task: {', '.join(TASKS)} (default: none; or --pairs)")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl file of {\"input\": ..., \"output\": ...} lines "
                                                   "(default: none)")
    model_options(p)
    add_config_options(p, FvConfig)
    output_options(p)
    p.set_defaults(func=cmd_fv)

    p = sub.add_parser("truth", help="truth direction: per-layer probes on true/false city statements, ITI heads",
                       description="Probe 'The city of X is in Y.' statements (true and false, from the bundled "
                                   "city table, split by city) layer by layer and head by head.")
    model_options(p)
    add_config_options(p, TruthConfig)
    output_options(p)
    p.set_defaults(func=cmd_truth)
