"""Command line of lecture part 4, the model explains itself: lens, tuned-lens, dla, patchscope, backpatch,
latent-language, lre."""
from __future__ import annotations

import json

from lmscope.cli.common import emit, load_model, model_options, numbers, output_options
from lmscope.core.errors import InputError


def cmd_lens(args) -> None:
    from lmscope.lenses.logit_lens import logit_lens
    model = load_model(args)
    result = logit_lens(model, args.prompt, target=args.target, top_k=args.top_k)
    emit(args, result)


def cmd_dla(args) -> None:
    from lmscope.lenses.dla import direct_logit_attribution
    model = load_model(args)
    result = direct_logit_attribution(model, args.prompt, args.target, position=args.position)
    if getattr(args, "html", None):
        print(f"lmscope: wrote {result.save(args.html)}", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.summary(args.top))


def cmd_patchscope(args) -> None:
    from lmscope.lenses.patchscope import patchscope
    model = load_model(args)
    emit(args, patchscope(model, args.source_prompt, position=args.position, template=args.template,
                           placeholder=args.placeholder, layers=numbers(args.layers, int, "--layers"),
                           target_layers=numbers(args.target_layers, int, "--target-layers"),
                           max_new_tokens=args.max_new_tokens))


def cmd_backpatch(args) -> None:
    from lmscope.lenses.backpatch import backpatch
    model = load_model(args)
    emit(args, backpatch(model, layers=numbers(args.layers, int, "--layers"), step=args.step))


def cmd_tuned_lens(args) -> None:
    from lmscope.lenses.tuned_lens import TunedLens, evaluate_tuned_lens, train_tuned_lens
    model = load_model(args)
    if args.action == "train":
        lens = train_tuned_lens(model, args.corpus, n_tokens=args.tokens, steps=args.steps, lr=args.lr,
                                seed=args.seed, progress=not args.json)
        path = lens.save(args.out)
        print(f"lmscope: wrote {path}", file=sys.stderr)
        emit(args, lens)
        return
    lens = TunedLens.load(args.lens, model)
    emit(args, evaluate_tuned_lens(model, lens, args.corpus, n_tokens=args.tokens, seed=args.seed))


def cmd_latent_language(args) -> None:
    from lmscope.lenses.latent_language import latent_language
    model = load_model(args)
    emit(args, latent_language(model, src=args.src, dst=args.dst, n_shots=args.shots, seed=args.seed))


def cmd_lre(args) -> None:
    from lmscope.lenses.lre import load_relation, lre, relation_from_pairs

    if (args.relation is None) == (args.pairs is None):
        raise InputError("give --relation NAME or --pairs FILE --template TEXT")
    if args.pairs is not None and args.template is None:
        raise InputError("--pairs needs --template, e.g. --template 'The capital of {} is'")
    relation = (load_relation(args.relation) if args.relation else relation_from_pairs(args.pairs, args.template))
    layers = numbers(args.layer, int, "--layer")
    model = load_model(args)
    emit(args, lre(model, relation, layers=layers, betas=numbers(args.beta, float, "--beta"),
                    ranks=numbers(args.ranks, int, "--ranks"), n_train=args.train, seed=args.seed,
                    progress=not args.json))


def register(sub) -> None:
    p = sub.add_parser("lens", help="logit lens: what each layer would predict")
    p.add_argument("prompt")
    model_options(p)
    p.add_argument("--target", help="a token to follow through the layers (exactly one token, e.g. ' Tokyo')")
    p.add_argument("--top-k", type=int, default=5)
    output_options(p)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("dla", help="direct logit attribution: embedding, layers and heads -> target logit")
    p.add_argument("prompt")
    p.add_argument("--target", required=True, help="exactly one token, e.g. ' Tokyo'")
    p.add_argument("--position", type=int, default=-1, help="token position (default -1, the last)")
    model_options(p)
    p.add_argument("--top", type=int, default=12, help="largest contributions to list")
    output_options(p)
    p.set_defaults(func=cmd_dla)

    p = sub.add_parser("patchscope", help="PatchScope: a hidden state decoded by the model in a target prompt")
    p.add_argument("source_prompt")
    p.add_argument("--position", type=int, default=-1, help="source token position (default -1, the last)")
    p.add_argument("--template", default="identity", help="identity (default), entity, or a text with a placeholder")
    p.add_argument("--placeholder", default=None, help="placeholder of a custom template (default '?')")
    p.add_argument("--layers", help="source layers, comma-separated (default: all)")
    p.add_argument("--target-layers", help="target layers for a grid (default: target layer = source layer)")
    p.add_argument("--max-new-tokens", type=int, default=4)
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_patchscope)

    p = sub.add_parser("backpatch", help="back-patching two-hop queries (oracle upper bound)")
    p.add_argument("--layers", help="layer grid, comma-separated (default: every --step-th layer)")
    p.add_argument("--step", type=int, default=3)
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_backpatch)

    p = sub.add_parser("tuned-lens", help="tuned lens: train per-layer affine translators, evaluate vs logit lens")
    tl = p.add_subparsers(dest="action", required=True)
    for action, help_text in (("train", "train a tuned lens on corpus text, save it (safetensors)"),
                              ("eval", "held-out KL and perplexity per layer: logit lens vs tuned lens")):
        q = tl.add_parser(action, help=help_text)
        if action == "eval":
            q.add_argument("lens", help="a .safetensors file written by 'tuned-lens train'")
        model_options(q)
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
    model_options(p)
    p.add_argument("--src", default="fr")
    p.add_argument("--dst", default="es")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    output_options(p)
    p.set_defaults(func=cmd_latent_language)

    p = sub.add_parser("lre", help="linear relational embeddings: is a relation an affine map W s + b?")
    p.add_argument("--relation", help="a bundled relation: country_capital, country_language, object_colour, "
                                      "word_opposite, company_country")
    p.add_argument("--pairs", metavar="FILE", help="a jsonl of {\"subject\": ..., \"object\": ...} lines")
    p.add_argument("--template", help="with --pairs: a prompt where {} is the subject, e.g. 'The capital of {} is'")
    model_options(p)
    p.add_argument("--layer", help="layer(s) of s, comma-separated (default: every 3rd layer)")
    p.add_argument("--beta", default="1,2,4,8", help="scales of W s, comma-separated (default 1,2,4,8)")
    p.add_argument("--ranks", default="32,96,256", help="ranks of the pseudo-inverse for causality")
    p.add_argument("--train", type=int, default=5, help="pairs to fit W and b on (default 5)")
    p.add_argument("--seed", type=int, default=0, help="train / test split")
    output_options(p)
    p.set_defaults(func=cmd_lre)
