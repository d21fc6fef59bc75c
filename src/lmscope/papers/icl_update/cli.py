"""Command line of the in-context-update paper (Dherin et al. 2025): icl-update, icl-regression."""
from __future__ import annotations

import argparse
import dataclasses

from lmscope.cli.common import add_config_options, check_outputs, emit, load_model, model_options, output_options
from lmscope.papers.icl_update.dynamics import icl_update
from lmscope.papers.icl_update.regression import TINY, RegressionConfig, icl_regression


def cmd_icl_update(args) -> None:
    check_outputs(args)
    # a shell gives '\n' as two characters; a one-line prompt with them means line breaks
    prompt = args.prompt if "\n" in args.prompt else args.prompt.replace("\\n", "\n")
    model = load_model(args)
    emit(args, icl_update(model, prompt, position=args.position, n_orders=args.orders))


def cmd_icl_regression(args) -> None:
    check_outputs(args)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RegressionConfig) if hasattr(args, f.name)}
    emit(args, icl_regression(dataclasses.replace(TINY if args.tiny else RegressionConfig(), **given)))


def register(sub) -> None:
    p = sub.add_parser("icl-update", help="in-context learning as an implicit rank-1 update of the MLP weights")
    model_options(p, dtype="float64")  # the identity is checked to float64 round-off
    p.add_argument("--prompt", default="hot -> cold\nbig -> small\nfast ->",
                   help="few-shot prompt: one example per line, the query on the last line (default "
                        "'hot -> cold\\nbig -> small\\nfast ->')")
    p.add_argument("--position", type=int, default=-1,
                   help="query token to read: 0, 1 .. from the query's start, -1, -2 .. from its end (default -1, "
                        "the last)")
    p.add_argument("--orders", type=int, default=2,
                   help="orders of the examples: given, reversed, then seeded shuffles (default 2)")
    output_options(p)
    p.set_defaults(func=cmd_icl_update)

    p = sub.add_parser("icl-regression", help="the paper's toy: one-block transformer, in-context linear regression")
    p.add_argument("--tiny", action="store_true",
                   help="start from a tiny configuration (seconds, for smoke tests) instead of the defaults below; "
                        "flags given with it still apply (default: off)")
    add_config_options(p, RegressionConfig)
    # a flag not given is left out of args, so that --tiny's values stand where no flag overrides them
    names = {f.name for f in dataclasses.fields(RegressionConfig)}
    for action in p._actions:
        if action.dest in names:
            action.default = argparse.SUPPRESS
    output_options(p)
    p.set_defaults(func=cmd_icl_regression)
