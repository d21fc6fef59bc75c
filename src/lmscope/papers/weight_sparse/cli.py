"""`lmscope sparse train|tasks` (registered by lmscope.cli.build_parser).

    lmscope sparse train --preset cpu --out runs/sparse            weight-sparse model (Gao et al. 2025)
    lmscope sparse train --preset cpu --weight-frac 1 --out runs/dense   its dense baseline (same shape, same tokens)
    lmscope sparse tasks runs/sparse                               accuracy on every task's held-out prompts

Every field of SparseTrainConfig is a flag; a flag not given takes the preset's value. Data parallel:
`torchrun --nproc_per_node N -m lmscope.cli sparse train ...` (gloo on CPU); only rank 0 writes and prints.
"""
from __future__ import annotations


def _check_html(args) -> None:
    """The --html page's folder must exist before any work starts."""
    from pathlib import Path

    from ...errors import InputError
    if args.html and not Path(args.html).expanduser().parent.is_dir():
        raise InputError(f"folder {Path(args.html).parent} for --html does not exist")


def cmd_train(args) -> None:
    from dataclasses import fields

    from lmscope.cli import _emit

    from ...harvest.distributed import launched_world
    from .config import SparseTrainConfig, preset_config
    from .train import train
    given = {f.name: getattr(args, f.name) for f in fields(SparseTrainConfig)
             if f.name != "preset" and getattr(args, f.name, None) is not None}
    cfg = preset_config(args.preset, **given)
    _check_html(args)
    result = train(cfg, overwrite=args.overwrite, resume=args.resume, progress=not args.json)
    if launched_world()[0] == 0:
        _emit(args, result)


def cmd_tasks(args) -> None:
    from lmscope.cli import _emit

    from .tasks import evaluate_tasks
    _check_html(args)
    _emit(args, evaluate_tasks(args.folder, names=args.tasks.split(",") if args.tasks else None, n=args.n))


def register(sub) -> None:
    from ...sae.config import add_dataclass_args
    from .config import SparseTrainConfig
    p = sub.add_parser("sparse", help="weight-sparse transformers (Gao et al. 2025): train, task accuracy")
    actions = p.add_subparsers(dest="action", required=True)

    def output(q):
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        q.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")

    t = actions.add_parser("train", help="train a weight-sparse model or (--weight-frac 1) its dense baseline")
    add_dataclass_args(t, SparseTrainConfig)
    t.set_defaults(**{f: None for f in SparseTrainConfig.__dataclass_fields__ if f != "preset"})
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    output(t)
    t.set_defaults(func=cmd_train)

    k = actions.add_parser("tasks", help="accuracy of a model folder on every task's held-out prompts")
    k.add_argument("folder", help="a model folder written by lmscope sparse train (or one of its checkpoints)")
    k.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    k.add_argument("--n", type=int, default=200, help="held-out prompts per task")
    output(k)
    k.set_defaults(func=cmd_tasks)
