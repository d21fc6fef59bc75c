"""Subcommands of part 2, directions (registered by lmscope.cli.main.build_parser):

    lmscope direction extract SET        per-layer directions, probe accuracy; --save FILE writes one vector
    lmscope direction sweep SET          induce / bypass / KL selection sweep (Arditi et al. 2024)
    lmscope direction orthogonalize      bake directional ablation into a copy of the weights
    lmscope steer [PROMPT ...]           generations with and without a vector, side by side; --dose: score + KL

Every output (--json FILE, --html, --save, --out) is checked before the model loads.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lmscope.cli.common import (add_config_options, check_outputs, config_from_args, emit, load_model, model_options,
                                numbers, output_options)
from lmscope.core.checks import check_layers, read_text_file
from lmscope.core.errors import InputError
from lmscope.data.contrast import load_contrast, neutral_prompts
from lmscope.directions.contrast import SITE_KINDS, ContrastConfig, contrast
from lmscope.directions.orthogonalize import save_orthogonalized
from lmscope.directions.steering import SteerConfig, steer
from lmscope.directions.steering_eval import SCORERS, DoseConfig, steering_dose_response
from lmscope.directions.sweep import SweepConfig, best_direction, direction_sweep
from lmscope.directions.vector_files import load_vector
from lmscope.results.output import check_output


def _prompt_file(path: str) -> list[str]:
    """One prompt per line, or JSON lines with a 'text' / 'prompt' field."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file not found: {path}")
    out = []
    for line in read_text_file(p, "prompt file").splitlines():
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
    if args.positive or args.negative:
        if args.set or not (args.positive and args.negative):
            raise InputError("give a bundled SET, or both --positive FILE and --negative FILE")
        return _prompt_file(args.positive), _prompt_file(args.negative)
    if not args.set:
        raise InputError("give a bundled SET (harmful, sentiment, formality, language, concept:<word>) or "
                         "--positive FILE --negative FILE")
    s = load_contrast(args.set)
    return s.positive, s.negative


def _check_save(args) -> None:
    if args.save:
        check_output(args.save, overwrite=args.overwrite, suffixes=(".safetensors",), what="--save")


def cmd_extract(args) -> None:
    check_outputs(args)
    if args.save and args.layer is None:
        raise InputError("--save needs --layer L (which layer's direction to write)")
    _check_save(args)
    positive, negative = _sets(args)
    config = config_from_args(ContrastConfig, args)
    model = load_model(args)
    c = contrast(model, positive, negative, config)
    if args.save:
        position = args.position if args.position is not None else c.positions[-1]
        d = c.direction(check_layers(model, args.layer)[0], position, args.method, dtype=model.dtype)
        print(f"lmscope: wrote {d.save(args.save, overwrite=args.overwrite)}", file=sys.stderr)
    emit(args, c)


def cmd_sweep(args) -> None:
    check_outputs(args)
    _check_save(args)
    positive, negative = _sets(args)
    tokens = [t for t in args.tokens.split(",") if t]
    negative_tokens = [t for t in args.negative_tokens.split(",") if t] if args.negative_tokens else None
    neutral = _prompt_file(args.neutral) if args.neutral else neutral_prompts()
    config = config_from_args(SweepConfig, args)
    model = load_model(args)
    c, result = direction_sweep(model, positive, negative, neutral, tokens, negative_tokens, config,
                                contrast_options=dict(site_kind=args.site_kind, last_k=args.last_k, chat=args.chat),
                                progress=not args.json)
    if args.save:
        d = best_direction(c, result) if args.layer is None else c.direction(
            check_layers(model, args.layer)[0], args.position if args.position is not None else c.positions[-1],
            dtype=model.dtype)
        print(f"lmscope: wrote {d.save(args.save, overwrite=args.overwrite)}", file=sys.stderr)
    emit(args, result)


def cmd_orthogonalize(args) -> None:
    check_output(args.out, overwrite=args.overwrite, folder=True, what="--out")
    model = load_model(args)
    d = load_vector(args.vector, model, allow_other_model=args.allow_other_model)
    print(f"lmscope: wrote {save_orthogonalized(model, d, args.out, overwrite=args.overwrite)}", file=sys.stderr)


def cmd_steer(args) -> None:
    check_outputs(args)
    if (args.vector is None) == (args.set is None and args.positive is None):
        raise InputError("give --vector FILE, or a contrast SET (--set NAME or --positive/--negative files) "
                         "with --layer L")
    if args.vector is None and args.layer is None:
        raise InputError("--layer L is needed to extract a direction from a contrast set")
    if args.score and args.dose:
        raise InputError("--score is for plain steering; --dose always scores sentiment")
    prompts = list(args.prompts) + (_prompt_file(args.prompts_file) if args.prompts_file else [])
    prompts = prompts or neutral_prompts()
    sets = _sets(args) if args.vector is None else None
    if args.dose:
        config = config_from_args(DoseConfig, args, coefs=args.coefs or DoseConfig().coefs)
    else:
        config = config_from_args(SteerConfig, args, coefs=args.coefs or SteerConfig().coefs)
    model = load_model(args)
    if args.vector:
        d = load_vector(args.vector, model, allow_other_model=args.allow_other_model)
    else:
        c = contrast(model, sets[0], sets[1], layers=[args.layer], site_kind=args.site_kind, chat=args.chat,
                     probe=False)
        d = c.direction(check_layers(model, args.layer)[0], -1, dtype=model.dtype)
    if args.dose:
        result = steering_dose_response(model, d, prompts, config)
    else:
        scorer, score_name = SCORERS[args.score] if args.score else (None, "")
        result = steer(model, prompts, d, config, scorer=scorer, score_name=score_name)
    emit(args, result)


def _set_args(p, chat: bool = True) -> None:
    p.add_argument("set", nargs="?", help="bundled contrast set: harmful, sentiment, formality, language, "
                                          "concept:<word> (default: none; or --positive/--negative)")
    p.add_argument("--positive", help="file of positive prompts, one per line or .jsonl with 'text' (default: none)")
    p.add_argument("--negative", help="file of negative prompts (default: none)")
    if chat:
        p.add_argument("--chat", action="store_true",
                       help="wrap prompts in the tokenizer's chat template (default off)")
        p.add_argument("--site-kind", default="resid_post", choices=list(SITE_KINDS),
                       help="the d_model-wide site read at every layer (default resid_post)")


def _save_args(p, sweep: bool) -> None:
    p.add_argument("--save", metavar="FILE", help="write one direction as a .safetensors vector file (default: none)")
    p.add_argument("--layer", type=int, help="the layer of the direction to --save (default: "
                                             + ("the best-ranked candidate)" if sweep else "none; required)"))
    p.add_argument("--position", type=int, help="its position (default: the last extracted)")


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("direction", help="contrastive directions: extract (per layer, probes), sweep, orthogonalize")
    actions = p.add_subparsers(dest="action", required=True)

    q = actions.add_parser("extract", help="difference of means, PCA and probe at every layer; held-out accuracy")
    _set_args(q, chat=False)
    model_options(q)
    add_config_options(q, ContrastConfig, skip=("batch_size",))
    q.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    _save_args(q, sweep=False)
    q.add_argument("--method", default="dom", choices=["dom", "pca", "probe"],
                   help="which estimate --save writes (default dom)")
    output_options(q)
    q.set_defaults(func=cmd_extract)

    q = actions.add_parser("sweep", help="selection sweep: induce / bypass / KL for every candidate (layer, position)")
    _set_args(q)
    model_options(q)
    q.add_argument("--last-k", type=int, help="candidates at each of the last K tokens (default: the last token)")
    add_config_options(q, SweepConfig)
    q.add_argument("--tokens", required=True,
                   help="comma-separated one-token strings whose next-token probability is the behaviour "
                        "(e.g. 'I,Sorry' for refusal) (required)")
    q.add_argument("--negative-tokens", help="optional: metric = log P(tokens) - log P(these) (default: log-odds)")
    q.add_argument("--neutral", help="file of neutral prompts for the KL cost (default: bundled)")
    _save_args(q, sweep=True)
    output_options(q)
    q.set_defaults(func=cmd_sweep)

    q = actions.add_parser("orthogonalize", help="save a copy of the model with the direction ablated in its weights")
    q.add_argument("--vector", required=True, help="a .safetensors vector file (required)")
    q.add_argument("--out", required=True, help="a new folder; load it with --model hf:FOLDER (required)")
    q.add_argument("--allow-other-model", action="store_true",
                   help="use a vector read from another model (default off)")
    model_options(q)
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (default off)")
    q.set_defaults(func=cmd_orthogonalize)

    p = sub.add_parser("steer", help="generate with and without a steering vector, side by side")
    p.add_argument("prompts", nargs="*", help="prompts (default: the bundled neutral sentence starts)")
    p.add_argument("--prompts-file", help="more prompts, one per line (default: none)")
    p.add_argument("--vector", help="a .safetensors vector file (lmscope direction extract --save) (default: none)")
    p.add_argument("--set", help="or extract from a bundled contrast set at --layer (default: none)")
    p.add_argument("--positive", help="or from a file of positive prompts ... (default: none)")
    p.add_argument("--negative", help="... and one of negative prompts (default: none)")
    p.add_argument("--layer", type=int, help="layer to extract at (with --set / --positive) (default: none)")
    p.add_argument("--site-kind", default="resid_post", choices=list(SITE_KINDS),
                   help="site to extract at (default resid_post)")
    add_config_options(p, SteerConfig, skip=("coefs", "mode", "max_new_tokens"))
    p.add_argument("--mode", default="add", choices=["add", "subtract", "clamp", "ablate"],
                   help="add, subtract, clamp or ablate (--dose: not ablate) (default add)")
    p.add_argument("--coefs", type=lambda t: numbers(t, float, "--coefs"), default=None,
                   help="coefficients, e.g. --coefs=-0.5,0,0.5 (0 = no edit; clamp: the projection value) "
                        "(default -0.5,0,0.5; --dose: -1,-0.5,-0.25,0,0.25,0.5,1)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="greedy tokens per prompt (default 30)")
    p.add_argument("--score", choices=sorted(SCORERS),
                   help="score each continuation: sentiment word lists, or refusal phrases (1/0) (default: none)")
    p.add_argument("--dose", action="store_true",
                   help="dose-response: sentiment score and KL(edited || clean) per coefficient (default off)")
    add_config_options(p, DoseConfig, skip=("coefs", "mode", "layers", "positions", "scale", "max_new_tokens"))
    p.add_argument("--allow-other-model", action="store_true",
                   help="use a vector read from another model (default off)")
    model_options(p)
    output_options(p)
    p.set_defaults(func=cmd_steer)
