"""Subcommands of part 2, directions (registered by lmscope.cli.build_parser):

    lmscope direction extract SET        per-layer directions, probe accuracy; --save FILE writes one vector
    lmscope direction sweep SET          induce / bypass / KL selection sweep (Arditi et al. 2024)
    lmscope direction orthogonalize      bake directional ablation into a copy of the weights
    lmscope steer [PROMPT ...]           generations with and without a vector, side by side; --dose: score + KL
"""
from __future__ import annotations

import sys
from pathlib import Path


def _prompt_file(path: str) -> list[str]:
    """One prompt per line, or JSON lines with a 'text' / 'prompt' field."""
    import json

    from lmscope.core.errors import InputError
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file not found: {path}")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path}: a line is not JSON: {line[:60]!r}") from None
            line = row.get("text") or row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(line, str):
                raise InputError(f"{path}: each JSON line needs a 'text' or 'prompt' string")
        out.append(line)
    return out


def _sets(args):
    from lmscope.data.contrast import load_contrast
    from lmscope.core.errors import InputError
    if args.positive or args.negative:
        if args.set or not (args.positive and args.negative):
            raise InputError("give a bundled SET, or both --positive FILE and --negative FILE")
        return _prompt_file(args.positive), _prompt_file(args.negative)
    if not args.set:
        raise InputError("give a bundled SET (harmful, sentiment, formality, language, concept:<word>) or "
                         "--positive FILE --negative FILE")
    s = load_contrast(args.set)
    return s.positive, s.negative


def _contrast(args, model, probe=True):
    from lmscope.cli.common import numbers
    from lmscope.directions.contrast import contrast
    positive, negative = _sets(args)
    return contrast(model, positive, negative, layers=numbers(args.layers, int, "--layers"),
                    site_kind=args.site_kind, positions=numbers(args.positions, int, "--positions"),
                    last_k=args.last_k, chat=args.chat, probe=probe and not args.no_probe,
                    test_fraction=args.test_fraction, seed=args.seed, batch_size=args.batch_size)


def cmd_direction(args) -> None:
    from lmscope.cli.common import emit, load_model
    from lmscope.directions.contrast import check_layers
    from lmscope.core.errors import InputError
    if args.action == "orthogonalize":
        from lmscope.directions.orthogonalize import save_orthogonalized
        from lmscope.directions.vector_files import load_vector
        model = load_model(args)
        d = load_vector(args.vector, model, allow_other_model=args.allow_other_model)
        print(f"lmscope: wrote {save_orthogonalized(model, d, args.out)}", file=sys.stderr)
        return
    if args.save and args.layer is None and args.action != "sweep":
        raise InputError("--save needs --layer L (which layer's direction to write)")
    if args.save and Path(args.save).exists() and not args.overwrite:
        raise InputError(f"{args.save} exists; pass --overwrite to replace it")
    model = load_model(args)
    c = _contrast(args, model, probe=args.action == "extract")
    result = c
    if args.action == "sweep":
        from lmscope.data.contrast import neutral_prompts
        from lmscope.directions.sweep import selection_sweep
        tokens = [t for t in args.tokens.split(",") if t]
        negative_tokens = [t for t in args.negative_tokens.split(",") if t] if args.negative_tokens else None
        neutral = _prompt_file(args.neutral) if args.neutral else neutral_prompts()
        result = selection_sweep(model, c, neutral, tokens, negative_tokens, n_eval=args.n_eval, max_kl=args.max_kl,
                                 max_layer_fraction=args.max_layer_fraction, progress=not args.json)
    if args.save:
        if args.layer is None:        # sweep: the best-ranked candidate
            from lmscope.directions.sweep import best_direction
            d = best_direction(c, result)
        else:
            position = args.position if args.position is not None else c.positions[-1]
            d = c.direction(check_layers(model, args.layer)[0], position, args.method, dtype=model.dtype)
        print(f"lmscope: wrote {d.save(args.save, overwrite=args.overwrite)}", file=sys.stderr)
    emit(args, result)


def cmd_steer(args) -> None:
    from lmscope.cli.common import emit, load_model, numbers
    from lmscope.directions.contrast import check_layers
    from lmscope.data.contrast import neutral_prompts
    from lmscope.core.errors import InputError
    if (args.vector is None) == (args.set is None and args.positive is None):
        raise InputError("give --vector FILE, or a contrast SET (--set NAME or --positive/--negative files) "
                         "with --layer L")
    prompts = list(args.prompts)
    if args.prompts_file:
        prompts += _prompt_file(args.prompts_file)
    if not prompts:
        prompts = neutral_prompts()
    coefs = numbers(args.coefs, float, "--coefs") or ([-1, -0.5, -0.25, 0, 0.25, 0.5, 1] if args.dose
                                                        else [-0.5, 0, 0.5])
    layers = numbers(args.layers_at, int, "--at-layers")
    model = load_model(args)
    if args.vector:
        from lmscope.directions.vector_files import load_vector
        d = load_vector(args.vector, model, allow_other_model=args.allow_other_model)
    else:
        if args.layer is None:
            raise InputError("--layer L is needed to extract a direction from a contrast set")
        from lmscope.directions.contrast import contrast
        positive, negative = _sets(args)
        c = contrast(model, positive, negative, layers=[args.layer], site_kind=args.site_kind, chat=args.chat,
                     probe=False)
        d = c.direction(check_layers(model, args.layer)[0], -1, dtype=model.dtype)
    if args.dose:
        from lmscope.directions.steering_eval import dose_response
        result = dose_response(model, d, prompts, coefs=coefs, mode=args.mode, layers=layers,
                               positions=args.positions_mode, scale=args.scale, max_new_tokens=args.max_new_tokens,
                               corpus=args.corpus, kl_tokens=args.kl_tokens)
    else:
        from lmscope.directions.steering import steer
        from lmscope.directions.steering_eval import SCORERS
        scorer, score_name = SCORERS[args.score] if args.score else (None, "")
        result = steer(model, prompts, d, coefs=coefs, mode=args.mode, layers=layers,
                       positions=args.positions_mode, scale=args.scale, chat=args.chat,
                       max_new_tokens=args.max_new_tokens, scorer=scorer, score_name=score_name)
    emit(args, result)


def _set_args(p) -> None:
    p.add_argument("set", nargs="?", help="bundled contrast set: harmful, sentiment, formality, language, "
                                          "concept:<word>")
    p.add_argument("--positive", help="file of positive prompts (one per line, or .jsonl with 'text')")
    p.add_argument("--negative", help="file of negative prompts")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--site-kind", default="resid_post", help="resid_post (default), resid_pre, resid_mid, ...")


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli.common import model_options, output_options

    p = sub.add_parser("direction", help="contrastive directions: extract (per layer, probes), sweep, orthogonalize")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("extract", "difference of means, PCA and probe at every layer; held-out accuracy"),
                         ("sweep", "selection sweep: induce / bypass / KL for every candidate (layer, position)")):
        q = actions.add_parser(action, help=text)
        _set_args(q)
        model_options(q)
        q.add_argument("--layers", help="layers, comma-separated (default: all)")
        q.add_argument("--positions", help="token positions, e.g. -3,-2,-1 (default: the last token)")
        q.add_argument("--last-k", type=int, help="each of the last K tokens (chat: the template tokens)")
        q.add_argument("--no-probe", action="store_true", help="skip the probes (faster)")
        q.add_argument("--test-fraction", type=float, default=0.25)
        q.add_argument("--seed", type=int, default=0, help="train/test split")
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--save", metavar="FILE", help="write one direction as a .safetensors vector file")
        q.add_argument("--layer", type=int, help="the layer of the direction to --save (sweep: default the best)")
        q.add_argument("--position", type=int, help="its position (default: the last extracted)")
        q.add_argument("--method", default="dom", choices=["dom", "pca", "probe"])
        q.add_argument("--overwrite", action="store_true")
        if action == "sweep":
            q.add_argument("--tokens", required=True,
                           help="comma-separated one-token strings whose next-token probability is the behaviour "
                                "(e.g. 'I,Sorry' for refusal)")
            q.add_argument("--negative-tokens", help="optional: metric = log P(tokens) - log P(these)")
            q.add_argument("--neutral", help="file of neutral prompts for the KL cost (default: bundled)")
            q.add_argument("--n-eval", type=int, default=16, help="prompts of each set used per candidate")
            q.add_argument("--max-kl", type=float, default=0.1)
            q.add_argument("--max-layer-fraction", type=float, default=0.8)
        output_options(q)
        q.set_defaults(func=cmd_direction)
    q = actions.add_parser("orthogonalize", help="save a copy of the model with the direction ablated in its weights")
    q.add_argument("--vector", required=True, help="a .safetensors vector file")
    q.add_argument("--out", required=True, help="a new folder; load it with --model hf:FOLDER")
    q.add_argument("--allow-other-model", action="store_true")
    model_options(q)
    q.set_defaults(func=cmd_direction)

    p = sub.add_parser("steer", help="generate with and without a steering vector, side by side")
    p.add_argument("prompts", nargs="*", help="prompts (default: the bundled neutral sentence starts)")
    p.add_argument("--prompts-file", help="more prompts, one per line")
    p.add_argument("--vector", help="a .safetensors vector file (lmscope direction extract --save)")
    p.add_argument("--set", help="or extract from a bundled contrast set at --layer")
    p.add_argument("--positive", help="or from a file of positive prompts ...")
    p.add_argument("--negative", help="... and one of negative prompts")
    p.add_argument("--layer", type=int, help="layer to extract at (with --set / --positive)")
    p.add_argument("--site-kind", default="resid_post")
    p.add_argument("--at-layers", dest="layers_at", help="layers to steer at (default: the vector's own layer)")
    p.add_argument("--mode", default="add", choices=["add", "subtract", "clamp", "ablate"])
    p.add_argument("--coefs", default=None, help="coefficients, e.g. --coefs=-0.5,0,0.5 (0 = no edit; clamp: the "
                                                 "projection value); default -0.5,0,0.5 (--dose: -1 .. 1)")
    p.add_argument("--scale", default="resid", choices=["unit", "raw", "resid"],
                   help="coef 1 = a vector as long as the mean residual stream at the site (default), the vector "
                        "as extracted (raw), or norm 1 (unit)")
    p.add_argument("--positions", dest="positions_mode", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--score", choices=["sentiment", "refusal"],
                   help="score each continuation: sentiment word lists, or refusal phrases (1/0)")
    p.add_argument("--dose", action="store_true", help="dose-response: sentiment score and KL cost per coefficient")
    p.add_argument("--corpus", default="wiki", help="text for the KL cost (with --dose)")
    p.add_argument("--kl-tokens", type=int, default=512, help="corpus tokens for the KL cost (with --dose)")
    p.add_argument("--allow-other-model", action="store_true")
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_steer)
