"""Command line of the in-context-update paper (Dherin et al. 2025): icl-update, icl-regression."""
from __future__ import annotations

from lmscope.cli.common import emit, load_model, model_options, output_options


def cmd_icl_update(args) -> None:
    from lmscope.papers.icl_update.dynamics import icl_update
    # a shell gives '\n' as two characters; a one-line prompt with them means line breaks
    prompt = args.prompt if "\n" in args.prompt else args.prompt.replace("\\n", "\n")
    model = load_model(args)
    emit(args, icl_update(model, prompt, position=args.position, n_orders=args.orders))


def cmd_icl_regression(args) -> None:
    from dataclasses import replace as with_changes

    from lmscope.papers.icl_update.regression import TINY, RegressionConfig, icl_regression
    config = TINY if args.tiny else RegressionConfig()
    emit(args, icl_regression(with_changes(config, seed=args.seed)))


def register(sub) -> None:
    p = sub.add_parser("icl-update", help="in-context learning as an implicit rank-1 update of the MLP weights")
    model_options(p)
    p.set_defaults(dtype="float64")  # the identity is checked to float64 round-off
    p.add_argument("--prompt", default="hot -> cold\nbig -> small\nfast ->",
                   help="few-shot prompt: one example per line, the query on the last line")
    p.add_argument("--position", type=int, default=-1, help="query token to read (default -1, the last)")
    p.add_argument("--orders", type=int, default=2, help="orders of the examples: given, reversed, then shuffles")
    output_options(p)
    p.set_defaults(func=cmd_icl_update)

    p = sub.add_parser("icl-regression", help="the paper's toy: one-block transformer, in-context linear regression")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (seconds), for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    output_options(p)
    p.set_defaults(func=cmd_icl_regression)
