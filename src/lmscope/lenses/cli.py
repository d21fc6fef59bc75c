"""Command line of lecture part 4, the model explains itself: lens, dla, patchscope, backpatch, tuned-lens,
latent-language, lre. Every output location is checked before the model loads."""
from __future__ import annotations

import json
import sys

from lmscope.cli.common import (JSON_STDOUT, add_config_options, check_outputs, config_from_args, emit, load_model,
                                model_options, numbers, output_options)
from lmscope.core.checks import check_count, check_number
from lmscope.core.errors import InputError
from lmscope.data.corpora import check_corpus
from lmscope.lenses.backpatch import backpatch
from lmscope.lenses.dla import direct_logit_attribution
from lmscope.lenses.latent_language import latent_language
from lmscope.lenses.logit_lens import logit_lens
from lmscope.lenses.lre import LreConfig, load_relation, lre, relation_from_pairs
from lmscope.lenses.patchscope import PatchscopeConfig, patchscope
from lmscope.lenses.tuned_lens import TunedLens, evaluate_tuned_lens, train_tuned_lens
from lmscope.results import check_output, write_atomic


def cmd_lens(args) -> None:
    check_outputs(args)
    model = load_model(args)
    emit(args, logit_lens(model, args.prompt, target=args.target, top_k=args.top_k))


def cmd_dla(args) -> None:
    check_outputs(args)
    check_count("--top", args.top)
    model = load_model(args)
    result = direct_logit_attribution(model, args.prompt, args.target, position=args.position)
    emit(args, result, result.summary(args.top))


def cmd_patchscope(args) -> None:
    check_outputs(args)
    config = config_from_args(PatchscopeConfig, args)
    model = load_model(args)
    emit(args, patchscope(model, args.source_prompt, config))


def cmd_backpatch(args) -> None:
    check_outputs(args)
    layers = numbers(args.layers, int, "--layers")
    model = load_model(args)
    emit(args, backpatch(model, layers=layers, step=args.step))


def cmd_tuned_lens_train(args) -> None:
    check_outputs(args)
    out = check_output(args.out, overwrite=args.overwrite, suffixes=(".safetensors",), what="--out")
    check_count("--tokens", args.tokens)
    check_count("--steps", args.steps)
    check_count("--validation-tokens", args.validation_tokens)
    check_number("--lr", args.lr, positive=True)
    check_corpus(args.corpus)
    model = load_model(args)
    lens = train_tuned_lens(model, args.corpus, n_tokens=args.tokens, steps=args.steps, lr=args.lr,
                            seed=args.seed, validation_tokens=args.validation_tokens, progress=not args.json)
    print(f"lmscope: wrote {lens.save(out, overwrite=args.overwrite)}", file=sys.stderr)
    if args.json not in (None, JSON_STDOUT):   # the lens's metadata (it is not a result: its file is the lens)
        path = write_atomic(check_output(args.json, overwrite=args.overwrite, suffixes=(".json",)),
                            json.dumps(lens.to_json(), indent=1, allow_nan=False))
        print(f"lmscope: wrote {path}", file=sys.stderr)
    else:
        emit(args, lens)


def cmd_tuned_lens_eval(args) -> None:
    check_outputs(args)
    check_count("--tokens", args.tokens)
    check_corpus(args.corpus)
    lens = TunedLens.load(args.lens)          # a bad file fails before the model loads
    model = load_model(args)
    lens.check(model)
    emit(args, evaluate_tuned_lens(model, lens, args.corpus, n_tokens=args.tokens, seed=args.seed))


def cmd_latent_language(args) -> None:
    check_outputs(args)
    model = load_model(args)
    emit(args, latent_language(model, src=args.src, dst=args.dst, n_shots=args.shots, seed=args.seed))


def cmd_lre(args) -> None:
    check_outputs(args)
    if (args.relation is None) == (args.pairs is None):
        raise InputError("give --relation NAME or --pairs FILE --template TEXT")
    if args.pairs is not None and args.template is None:
        raise InputError("--pairs needs --template, e.g. --template 'The capital of {} is'")
    relation = load_relation(args.relation) if args.relation else relation_from_pairs(args.pairs, args.template)
    config = config_from_args(LreConfig, args)
    model = load_model(args)
    emit(args, lre(model, relation, config, progress=not args.json))


def register(sub) -> None:
    p = sub.add_parser("lens", help="logit lens: what each layer would predict")
    p.add_argument("prompt", help="the prompt to read")
    model_options(p)
    p.add_argument("--target", help="a token to follow through the layers (exactly one token, e.g. ' Tokyo'; "
                                    "default none)")
    p.add_argument("--top-k", type=int, default=5, help="top tokens kept per layer and position (default 5)")
    output_options(p)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("dla", help="direct logit attribution: embedding, layers and heads -> target logit")
    p.add_argument("prompt", help="the prompt to decompose")
    p.add_argument("--target", required=True, help="exactly one token, e.g. ' Tokyo' (required)")
    p.add_argument("--position", type=int, default=-1, help="token position (default -1, the last)")
    model_options(p)
    p.add_argument("--top", type=int, default=12, help="largest contributions to list (default 12)")
    output_options(p)
    p.set_defaults(func=cmd_dla)

    p = sub.add_parser("patchscope", help="PatchScope: a hidden state decoded by the model in a target prompt")
    p.add_argument("source_prompt", help="the prompt whose hidden state is decoded")
    add_config_options(p, PatchscopeConfig)
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_patchscope)

    p = sub.add_parser("backpatch", help="back-patching two-hop queries (oracle upper bound)")
    p.add_argument("--layers", help="layer grid, comma-separated (default: every --step-th layer)")
    p.add_argument("--step", type=int, default=3, help="spacing of the default layer grid (default 3)")
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_backpatch)

    p = sub.add_parser("tuned-lens", help="tuned lens: train per-layer affine translators, evaluate vs logit lens")
    tl = p.add_subparsers(dest="action", required=True)
    q = tl.add_parser("train", help="train a tuned lens on corpus text, save it (safetensors)")
    model_options(q)
    q.add_argument("--corpus", default="wiki", help="training text (default wiki)")
    q.add_argument("--tokens", type=int, default=20_000, help="corpus tokens to train on (default 20000)")
    q.add_argument("--seed", type=int, default=0, help="corpus order and sampled positions (default 0)")
    q.add_argument("--steps", type=int, default=200, help="Adam steps (default 200)")
    q.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    q.add_argument("--validation-tokens", type=int, default=256,
                   help="tokens of the corpus's validation documents that choose each layer's scale (default 256)")
    q.add_argument("--out", default="tuned_lens.safetensors", metavar="FILE.safetensors",
                   help="where the lens is written (default tuned_lens.safetensors)")
    output_options(q, html=False)
    q.set_defaults(func=cmd_tuned_lens_train)
    q = tl.add_parser("eval", help="held-out KL and perplexity per layer: logit lens vs tuned lens")
    q.add_argument("lens", help="a .safetensors file written by 'tuned-lens train'")
    model_options(q)
    q.add_argument("--corpus", default="wiki", help="evaluation text, held-out documents (default wiki)")
    q.add_argument("--tokens", type=int, default=2048, help="held-out tokens to score (default 2048)")
    q.add_argument("--seed", type=int, default=1, help="corpus order (default 1)")
    output_options(q)
    q.set_defaults(func=cmd_tuned_lens_eval)

    p = sub.add_parser("latent-language", help="latent language: logit-lens P(English) vs P(target) in translation")
    model_options(p)
    p.add_argument("--src", default="fr", choices=["fr", "es", "de", "it"], help="source language (default fr)")
    p.add_argument("--dst", default="es", choices=["fr", "es", "de", "it"], help="target language (default es)")
    p.add_argument("--shots", type=int, default=4, help="translation examples per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="choice of the examples (default 0)")
    output_options(p)
    p.set_defaults(func=cmd_latent_language)

    p = sub.add_parser("lre", help="linear relational embeddings: is a relation an affine map W s + b?")
    p.add_argument("--relation", help="a bundled relation: country_capital, country_language, object_colour, "
                                      "word_opposite, company_country (default: none; or --pairs)")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"subject\": ..., \"object\": ...} lines")
    p.add_argument("--template", help="with --pairs: a prompt where {} is the subject, e.g. 'The capital of {} is'")
    model_options(p)
    add_config_options(p, LreConfig)
    output_options(p)
    p.set_defaults(func=cmd_lre)
