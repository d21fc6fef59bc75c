"""Command line: one subcommand per method, thin over the library. Errors print one line and exit with code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import LmscopeError
from .models.loading import DEFAULT_MODEL


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="smollm2 (default), hf:<name-or-path>, gguf:<path> or random:<family>")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")


def _load(args):
    from .models.loading import load
    return load(args.model, dtype=args.dtype, device=args.device)


def cmd_lens(args) -> None:
    from .lenses.logit_lens import logit_lens
    model = _load(args)
    result = logit_lens(model, args.prompt, target=args.target, top_k=args.top_k)
    _emit(args, result)


def cmd_sites(args) -> None:
    model = _load(args)
    sites = model.sites()
    if args.json:
        print(json.dumps({"model": model.spec, "family": model.adapter.family, "n_layers": model.n_layers,
                          "d_model": model.d_model, "n_heads": model.n_heads, "d_head": model.d_head,
                          "d_mlp": model.d_mlp, "vocab_size": model.vocab_size, "parallel": model.parallel,
                          "sites": [str(s) for s in sites]}))
        return
    print(model)
    print(f"adapter: {model.adapter.family}" + (f" ({model.adapter.notes})" if model.adapter.notes else ""))
    for kind in dict.fromkeys(s.kind for s in sites):
        shape = model.site_shape(kind if kind in ("embed", "final_norm", "logits") else f"{kind}.0")
        layers = "" if kind in ("embed", "final_norm", "logits") else f".0 .. {kind}.{model.n_layers - 1}"
        print(f"  {kind}{layers}  [batch, seq, {', '.join(map(str, shape))}]" if shape else
              f"  {kind}{layers}  [batch, heads, query, key]")


def _emit(args, result) -> None:
    """The common tail of a command: --html page, then --json or the readable summary."""
    if getattr(args, "html", None):
        path = result.save(args.html)
        print(f"lmscope: wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.summary())


def cmd_neuron(args) -> None:
    from .neurons import profile_neuron
    model = _load(args)
    _emit(args, profile_neuron(model, args.layer, args.index, args.corpus, n_tokens=args.tokens, k=args.top_k,
                               seed=args.seed, progress=not args.json))


def cmd_knowledge_neurons(args) -> None:
    from .neurons import number_agreement_experiment
    model = _load(args)
    _emit(args, number_agreement_experiment(model, attribution_prompts=args.prompts, steps=args.steps))


def cmd_introspect(args) -> None:
    from .errors import InputError
    from .introspection import introspect

    def numbers(text, kind, what):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"{what} must be comma-separated {kind.__name__}s, got {text!r}") from None
    concepts = (int(args.concepts) if args.concepts.strip().isdigit()
                else [w.strip() for w in args.concepts.split(",") if w.strip()])
    start = int(args.start) if args.start.lstrip("-").isdigit() else args.start
    layers = numbers(args.layers, int, "--layers") if args.layers else None
    if args.prefill:
        from .introspection_prefill import prefill_trials
        if start != "question":
            raise InputError("--start does not apply to --prefill (it injects before the prefilled word)")
        model = _load(args)
        _emit(args, prefill_trials(model, concepts=concepts, layers=layers,
                                   strengths=numbers(args.strengths, float, "--strengths"),
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json))
        return
    model = _load(args)
    _emit(args, introspect(model, concepts=concepts,
                           layers=numbers(args.layers, int, "--layers") if args.layers else None,
                           strengths=numbers(args.strengths, float, "--strengths"), start=start,
                           max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json))


def cmd_icl_update(args) -> None:
    from .icl_dynamics import icl_update
    # a shell gives '\n' as two characters; a one-line prompt with them means line breaks
    prompt = args.prompt if "\n" in args.prompt else args.prompt.replace("\\n", "\n")
    model = _load(args)
    _emit(args, icl_update(model, prompt, position=args.position, n_orders=args.orders))


def cmd_icl_regression(args) -> None:
    from dataclasses import replace as with_changes

    from .icl_regression import TINY, RegressionConfig, icl_regression
    config = TINY if args.tiny else RegressionConfig()
    _emit(args, icl_regression(with_changes(config, seed=args.seed)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Look inside language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lens", help="logit lens: what each layer would predict")
    p.add_argument("prompt")
    _model_args(p)
    p.add_argument("--target", help="a token to follow through the layers (exactly one token, e.g. ' Tokyo')")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("neuron", help="one neuron: top contexts, statistics, ablation, dose-response")
    p.add_argument("layer", type=int)
    p.add_argument("index", type=int)
    _model_args(p)
    p.add_argument("--corpus", default="wiki", help="wiki (default), wiki-fr, wiki-es, python, shakespeare, bible")
    p.add_argument("--tokens", type=int, default=100_000, help="corpus tokens to record (default 100000)")
    p.add_argument("--top-k", type=int, default=20, help="top contexts to keep")
    p.add_argument("--seed", type=int, default=0, help="corpus order")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_neuron)

    p = sub.add_parser("knowledge-neurons", help="knowledge-neuron attribution, re-examined on number agreement")
    p.add_argument("--task", default="number-agreement", choices=["number-agreement"])
    _model_args(p)
    p.add_argument("--prompts", type=int, default=16, help="plural prompts used for attribution")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_knowledge_neurons)

    p = sub.add_parser("introspect", help="concept injection: does the model notice an injected thought?")
    _model_args(p)
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
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_introspect)

    p = sub.add_parser("icl-update", help="in-context learning as an implicit rank-1 update of the MLP weights")
    _model_args(p)
    p.set_defaults(dtype="float64")  # the identity is checked to float64 round-off
    p.add_argument("--prompt", default="hot -> cold\nbig -> small\nfast ->",
                   help="few-shot prompt: one example per line, the query on the last line")
    p.add_argument("--position", type=int, default=-1, help="query token to read (default -1, the last)")
    p.add_argument("--orders", type=int, default=2, help="orders of the examples: given, reversed, then shuffles")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_icl_update)

    p = sub.add_parser("icl-regression", help="the paper's toy: one-block transformer, in-context linear regression")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (seconds), for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_icl_regression)

    p = sub.add_parser("sites", help="the model's shape and its site names")
    _model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sites)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LmscopeError as exc:
        print(f"lmscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
