"""Command line: one subcommand per method, thin over the library. Errors print one line and exit with code 2."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from .errors import InputError, LmscopeError
from .models.loading import DEFAULT_MODEL


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="smollm2 (default), hf:<name-or-path>, gguf:<path> or random:<family>")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page")


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


def _numbers(text, kind, what):
    """'1,2, 3' -> [1, 2, 3] (None for no text); one clear error for anything else."""
    if not text:
        return None
    try:
        return [kind(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated {kind.__name__}s, got {text!r}") from None


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
    from .introspection import introspect

    concepts = (int(args.concepts) if args.concepts.strip().isdigit()
                else [w.strip() for w in args.concepts.split(",") if w.strip()])
    start = int(args.start) if args.start.lstrip("-").isdigit() else args.start
    layers = _numbers(args.layers, int, "--layers")
    if args.prefill:
        from .introspection_prefill import prefill_trials
        if start != "question":
            raise InputError("--start does not apply to --prefill (it injects before the prefilled word)")
        model = _load(args)
        _emit(args, prefill_trials(model, concepts=concepts, layers=layers,
                                   strengths=_numbers(args.strengths, float, "--strengths"),
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json))
        return
    model = _load(args)
    _emit(args, introspect(model, concepts=concepts,
                           layers=_numbers(args.layers, int, "--layers"),
                           strengths=_numbers(args.strengths, float, "--strengths"), start=start,
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




def cmd_dla(args) -> None:
    from .lenses.dla import direct_logit_attribution
    model = _load(args)
    result = direct_logit_attribution(model, args.prompt, args.target, position=args.position)
    if getattr(args, "html", None):
        print(f"lmscope: wrote {result.save(args.html)}", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.summary(args.top))


def cmd_patchscope(args) -> None:
    from .lenses.patchscope import patchscope
    model = _load(args)
    _emit(args, patchscope(model, args.source_prompt, position=args.position, template=args.template,
                           placeholder=args.placeholder, layers=_numbers(args.layers, int, "--layers"),
                           target_layers=_numbers(args.target_layers, int, "--target-layers"),
                           max_new_tokens=args.max_new_tokens))


def cmd_backpatch(args) -> None:
    from .lenses.backpatch import backpatch
    model = _load(args)
    _emit(args, backpatch(model, layers=_numbers(args.layers, int, "--layers"), step=args.step))


def cmd_tuned_lens(args) -> None:
    from .lenses.tuned_lens import TunedLens, evaluate_tuned_lens, train_tuned_lens
    model = _load(args)
    if args.action == "train":
        lens = train_tuned_lens(model, args.corpus, n_tokens=args.tokens, steps=args.steps, lr=args.lr,
                                seed=args.seed, progress=not args.json)
        path = lens.save(args.out)
        print(f"lmscope: wrote {path}", file=sys.stderr)
        _emit(args, lens)
        return
    lens = TunedLens.load(args.lens, model)
    _emit(args, evaluate_tuned_lens(model, lens, args.corpus, n_tokens=args.tokens, seed=args.seed))


def cmd_latent_language(args) -> None:
    from .lenses.latent_language import latent_language
    model = _load(args)
    _emit(args, latent_language(model, src=args.src, dst=args.dst, n_shots=args.shots, seed=args.seed))


def cmd_lre(args) -> None:
    from .lenses.lre import load_relation, lre, relation_from_pairs

    if (args.relation is None) == (args.pairs is None):
        raise InputError("give --relation NAME or --pairs FILE --template TEXT")
    if args.pairs is not None and args.template is None:
        raise InputError("--pairs needs --template, e.g. --template 'The capital of {} is'")
    relation = (load_relation(args.relation) if args.relation else relation_from_pairs(args.pairs, args.template))
    layers = _numbers(args.layer, int, "--layer")
    model = _load(args)
    _emit(args, lre(model, relation, layers=layers, betas=_numbers(args.beta, float, "--beta"),
                    ranks=_numbers(args.ranks, int, "--ranks"), n_train=args.train, seed=args.seed,
                    progress=not args.json))


# Parts that keep their subcommands next to their code; each module has `register(subparsers)`.
_PARTS = ("cli_directions", "cli_icl_vectors", "harvest.cli", "sae.cli", "circuits.cli_patching", "circuits.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Look inside language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lens", help="logit lens: what each layer would predict")
    p.add_argument("prompt")
    _model_args(p)
    p.add_argument("--target", help="a token to follow through the layers (exactly one token, e.g. ' Tokyo')")
    p.add_argument("--top-k", type=int, default=5)
    _output_args(p)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("neuron", help="one neuron: top contexts, statistics, ablation, dose-response")
    p.add_argument("layer", type=int)
    p.add_argument("index", type=int)
    _model_args(p)
    p.add_argument("--corpus", default="wiki", help="wiki (default), wiki-fr, wiki-es, python, shakespeare, bible")
    p.add_argument("--tokens", type=int, default=100_000, help="corpus tokens to record (default 100000)")
    p.add_argument("--top-k", type=int, default=20, help="top contexts to keep")
    p.add_argument("--seed", type=int, default=0, help="corpus order")
    _output_args(p)
    p.set_defaults(func=cmd_neuron)

    p = sub.add_parser("knowledge-neurons", help="knowledge-neuron attribution, re-examined on number agreement")
    p.add_argument("--task", default="number-agreement", choices=["number-agreement"])
    _model_args(p)
    p.add_argument("--prompts", type=int, default=16, help="plural prompts used for attribution")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
    _output_args(p)
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
    _output_args(p)
    p.set_defaults(func=cmd_introspect)

    p = sub.add_parser("icl-update", help="in-context learning as an implicit rank-1 update of the MLP weights")
    _model_args(p)
    p.set_defaults(dtype="float64")  # the identity is checked to float64 round-off
    p.add_argument("--prompt", default="hot -> cold\nbig -> small\nfast ->",
                   help="few-shot prompt: one example per line, the query on the last line")
    p.add_argument("--position", type=int, default=-1, help="query token to read (default -1, the last)")
    p.add_argument("--orders", type=int, default=2, help="orders of the examples: given, reversed, then shuffles")
    _output_args(p)
    p.set_defaults(func=cmd_icl_update)

    p = sub.add_parser("icl-regression", help="the paper's toy: one-block transformer, in-context linear regression")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (seconds), for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    _output_args(p)
    p.set_defaults(func=cmd_icl_regression)

    p = sub.add_parser("dla", help="direct logit attribution: embedding, layers and heads -> target logit")
    p.add_argument("prompt")
    p.add_argument("--target", required=True, help="exactly one token, e.g. ' Tokyo'")
    p.add_argument("--position", type=int, default=-1, help="token position (default -1, the last)")
    _model_args(p)
    p.add_argument("--top", type=int, default=12, help="largest contributions to list")
    _output_args(p)
    p.set_defaults(func=cmd_dla)

    p = sub.add_parser("patchscope", help="PatchScope: a hidden state decoded by the model in a target prompt")
    p.add_argument("source_prompt")
    p.add_argument("--position", type=int, default=-1, help="source token position (default -1, the last)")
    p.add_argument("--template", default="identity", help="identity (default), entity, or a text with a placeholder")
    p.add_argument("--placeholder", default=None, help="placeholder of a custom template (default '?')")
    p.add_argument("--layers", help="source layers, comma-separated (default: all)")
    p.add_argument("--target-layers", help="target layers for a grid (default: target layer = source layer)")
    p.add_argument("--max-new-tokens", type=int, default=4)
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_patchscope)

    p = sub.add_parser("backpatch", help="back-patching two-hop queries (oracle upper bound)")
    p.add_argument("--layers", help="layer grid, comma-separated (default: every --step-th layer)")
    p.add_argument("--step", type=int, default=3)
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_backpatch)

    p = sub.add_parser("tuned-lens", help="tuned lens: train per-layer affine translators, evaluate vs logit lens")
    tl = p.add_subparsers(dest="action", required=True)
    for action, help_text in (("train", "train a tuned lens on corpus text, save it (safetensors)"),
                              ("eval", "held-out KL and perplexity per layer: logit lens vs tuned lens")):
        q = tl.add_parser(action, help=help_text)
        if action == "eval":
            q.add_argument("lens", help="a .safetensors file written by 'tuned-lens train'")
        _model_args(q)
        q.add_argument("--corpus", default="wiki")
        q.add_argument("--tokens", type=int, default=20_000 if action == "train" else 2048,
                       help="corpus tokens (default 20000 to train, 2048 to evaluate)")
        q.add_argument("--seed", type=int, default=0 if action == "train" else 1, help="corpus order")
        if action == "train":
            q.add_argument("--steps", type=int, default=200, help="Adam steps (default 200)")
            q.add_argument("--lr", type=float, default=1e-3)
            q.add_argument("--out", default="tuned_lens.safetensors", metavar="FILE.safetensors")
        else:
            q.add_argument("--html", metavar="FILE")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=cmd_tuned_lens)

    p = sub.add_parser("latent-language", help="latent language: logit-lens P(English) vs P(target) in translation")
    _model_args(p)
    p.add_argument("--src", default="fr")
    p.add_argument("--dst", default="es")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    _output_args(p)
    p.set_defaults(func=cmd_latent_language)

    p = sub.add_parser("lre", help="linear relational embeddings: is a relation an affine map W s + b?")
    p.add_argument("--relation", help="a bundled relation: country_capital, country_language, object_colour, "
                                      "word_opposite, company_country")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"subject\": ..., \"object\": ...} lines")
    p.add_argument("--template", help="with --pairs: a prompt where {} is the subject, e.g. 'The capital of {} is'")
    _model_args(p)
    p.add_argument("--layer", help="layer(s) of s, comma-separated (default: every 3rd layer)")
    p.add_argument("--beta", default="1,2,4,8", help="scales of W s, comma-separated (default 1,2,4,8)")
    p.add_argument("--ranks", default="32,96,256", help="ranks of the pseudo-inverse for causality")
    p.add_argument("--train", type=int, default=5, help="pairs to fit W and b on (default 5)")
    p.add_argument("--seed", type=int, default=0, help="train / test split")
    _output_args(p)
    p.set_defaults(func=cmd_lre)

    for part in _PARTS:
        importlib.import_module(f"lmscope.{part}").register(sub)

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
