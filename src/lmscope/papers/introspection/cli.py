"""Command line of the introspection paper (Lindsey 2025): introspect (concept injection, or --prefill). Its flags
are generated from IntrospectionConfig, which the result stores."""
from __future__ import annotations

from lmscope.cli.common import (add_config_options, check_outputs, config_from_args, emit, load_model, model_options,
                                output_options)
from lmscope.papers.introspection.injection import check_injection_options, introspect
from lmscope.papers.introspection.prefill import check_prefill_options, prefill_trials
from lmscope.papers.introspection.trials import IntrospectionConfig


def concepts_flag(text: str) -> "int | list[str]":
    """'10' -> 10 (how many to draw); 'dog, cat' -> ['dog', 'cat']."""
    text = text.strip()
    return int(text) if text.isdigit() else [w.strip() for w in text.split(",") if w.strip()]


def start_flag(text: str) -> "str | int":
    """'question', 'assistant', 'all' as they are; '-3' or '12' -> a token position."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def cmd_introspect(args) -> None:
    check_outputs(args)
    config = config_from_args(IntrospectionConfig, args)
    # the options are checked before the model loads
    if args.prefill:
        check_prefill_options(config)
    else:
        check_injection_options(config)
    model = load_model(args)
    run = prefill_trials if args.prefill else introspect
    emit(args, run(model, config, progress=not args.json))


def register(sub) -> None:
    p = sub.add_parser("introspect", help="concept injection: does the model notice an injected thought?")
    model_options(p)
    defaults = IntrospectionConfig()
    p.add_argument("--concepts", type=concepts_flag, default=defaults.concepts,
                   help=f"how many bundled concepts to draw (seeded), or words: a,b,c (default {defaults.concepts})")
    p.add_argument("--start", type=start_flag, default=defaults.start,
                   help="injection protocol: inject from question (the paper's), assistant, all, or a token position "
                        f"(default {defaults.start}); not with --prefill")
    add_config_options(p, IntrospectionConfig, skip=("concepts", "start", "sentences"))
    p.add_argument("--prefill", action="store_true",
                   help="the prefill protocol: prefill an out-of-place word, inject its concept before it, ask 'Did "
                        "you mean to say that, or was it an accident?' (default: the injection protocol)")
    output_options(p)
    p.set_defaults(func=cmd_introspect)
