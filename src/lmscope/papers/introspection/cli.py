"""Command line of the introspection paper (Lindsey 2025): introspect."""
from __future__ import annotations

from lmscope.cli.common import emit, load_model, model_options, numbers, output_options
from lmscope.core.errors import InputError


def cmd_introspect(args) -> None:
    from lmscope.papers.introspection.injection import introspect

    concepts = (int(args.concepts) if args.concepts.strip().isdigit()
                else [w.strip() for w in args.concepts.split(",") if w.strip()])
    start = int(args.start) if args.start.lstrip("-").isdigit() else args.start
    layers = numbers(args.layers, int, "--layers")
    if args.prefill:
        from lmscope.papers.introspection.prefill import prefill_trials
        if start != "question":
            raise InputError("--start does not apply to --prefill (it injects before the prefilled word)")
        model = load_model(args)
        emit(args, prefill_trials(model, concepts=concepts, layers=layers,
                                   strengths=numbers(args.strengths, float, "--strengths"),
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json))
        return
    model = load_model(args)
    emit(args, introspect(model, concepts=concepts,
                           layers=numbers(args.layers, int, "--layers"),
                           strengths=numbers(args.strengths, float, "--strengths"), start=start,
                           max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json))


def register(sub) -> None:
    p = sub.add_parser("introspect", help="concept injection: does the model notice an injected thought?")
    model_options(p)
    p.add_argument("--concepts", default="10", help="how many bundled concepts (default 10, seeded), or words: a,b,c")
    p.add_argument("--layers", help="comma-separated layers (default: 1/4, 1/2 and 2/3 of the depth)")
    p.add_argument("--strengths", default="0.125,0.25,0.5", help="multiples of the residual norm at the layer")
    p.add_argument("--start", default="question",
                   help="inject from: question (default, the paper's), assistant, all, or a token position")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0, help="which bundled concepts are drawn")
    p.add_argument("--prefill", action="store_true",
                   help="the prefill variant: prefill an out-of-place word, inject its concept before it, "
                        "ask 'Did you mean to say that, or was it an accident?'")
    output_options(p)
    p.set_defaults(func=cmd_introspect)
