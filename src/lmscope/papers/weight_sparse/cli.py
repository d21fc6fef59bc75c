"""`lmscope sparse train|tasks` (registered by lmscope.cli.main).

    lmscope sparse train --preset cpu --out runs/sparse                  weight-sparse model (Gao et al. 2025)
    lmscope sparse train --preset cpu --weight-frac 1 --out runs/dense   its dense baseline (same shape, same tokens)
    lmscope sparse tasks runs/sparse                                     accuracy on every task's held-out prompts

Every field of SparseTrainConfig is a flag; a flag not given takes the preset's value. Data parallel:
`torchrun --nproc_per_node N -m lmscope.cli sparse train ...` (gloo on CPU, nccl with --device cuda); only rank 0
writes and prints.
"""
from __future__ import annotations

from dataclasses import fields

from lmscope.cli.common import add_config_options, check_outputs, emit, output_options
from lmscope.harvest import launched_world
from lmscope.papers.weight_sparse.cli_circuits import register_circuit_commands
from lmscope.papers.weight_sparse.config import SparseTrainConfig, preset_config
from lmscope.papers.weight_sparse.tasks import evaluate_tasks
from lmscope.papers.weight_sparse.train import train_sparse


def cmd_train(args) -> None:
    given = {f.name: getattr(args, f.name) for f in fields(SparseTrainConfig)
             if f.name != "preset" and getattr(args, f.name, None) is not None}
    cfg = preset_config(args.preset, **given)
    check_outputs(args)
    result = train_sparse(cfg, overwrite=args.overwrite, resume=args.resume, progress=args.json is None)
    if launched_world()[0] == 0:
        emit(args, result)


def cmd_tasks(args) -> None:
    check_outputs(args)
    emit(args, evaluate_tasks(args.folder, names=args.tasks.split(",") if args.tasks else None, n=args.n))


def register(sub) -> None:
    p = sub.add_parser("sparse", help="weight-sparse transformers (Gao et al. 2025): train, tasks, prune, circuit, bridge, compare")
    actions = p.add_subparsers(dest="action", required=True)

    t = actions.add_parser("train", help="train a weight-sparse model or (--weight-frac 1) its dense baseline")
    add_config_options(t, SparseTrainConfig)
    t.set_defaults(**{f.name: None for f in fields(SparseTrainConfig) if f.name != "preset"})  # preset fills them
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    output_options(t)  # --json, --html, --overwrite (which also replaces an earlier run in --out)
    t.set_defaults(func=cmd_train)

    k = actions.add_parser("tasks", help="accuracy of a model folder on every task's held-out prompts")
    k.add_argument("folder", help="a model folder written by lmscope sparse train (or one of its checkpoints)")
    k.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    k.add_argument("--n", type=int, default=200, help="held-out prompts per task (default 200)")
    output_options(k)
    k.set_defaults(func=cmd_tasks)
    register_circuit_commands(actions)      # prune, circuit, bridge, compare
