"""What every subcommand shares: the model options, the output options and the one output rule, number lists,
config dataclasses as flags, and the common tail that prints or writes a result.

Output rule (lmscope.results.output): `--html FILE`, `--json FILE`, `--out` and `--save` refuse to replace an
existing file or a non-empty folder unless `--overwrite`, and are checked before the work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from lmscope.core.errors import InputError
from lmscope.core.models.loading import DEFAULT_MODEL, MODEL_SPECS, load
from lmscope.results.output import HTML, check_output

JSON_STDOUT = "-"


def model_options(p: argparse.ArgumentParser, *, dtype: str = "float32") -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_SPECS} (default {DEFAULT_MODEL})")
    p.add_argument("--dtype", default=dtype, metavar="{float32,float64,bfloat16,float16}",
                   help=f"weights and activations dtype (default {dtype})")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a model folder ships (its auto_map); off by default: such a model is "
                        "refused. Only for code you trust")


def output_options(p: argparse.ArgumentParser, *, html: bool = True) -> None:
    p.add_argument("--json", nargs="?", const=JSON_STDOUT, default=None, metavar="FILE",
                   help="print the result as JSON (default: a readable summary); --json FILE writes it to FILE")
    if html:
        p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page to FILE")
    overwrite_option(p)


def overwrite_option(p: argparse.ArgumentParser) -> None:
    if not any("--overwrite" in a.option_strings for a in p._actions):
        p.add_argument("--overwrite", action="store_true", help="replace existing output files or folders")


def check_outputs(args) -> None:
    """The one output rule, applied before any work: every output the command was asked to write."""
    overwrite = getattr(args, "overwrite", False)
    if getattr(args, "html", None):
        check_output(args.html, overwrite=overwrite, suffixes=HTML, what="--html")
    if getattr(args, "json", None) not in (None, JSON_STDOUT):
        check_output(args.json, overwrite=overwrite, suffixes=(".json",), what="--json")


def load_model(args):
    return load(args.model, dtype=args.dtype, device=args.device,
                trust_remote_code=getattr(args, "trust_remote_code", False))


def numbers(text, kind, what):
    """'1,2, 3' -> [1, 2, 3] (None for no text); one clear error for anything else."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        values = [kind(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if kind is float and any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise InputError(f"{what} must be finite numbers, got {text!r}")
    return values


def emit(args, result, summary: "str | None" = None) -> None:
    """The common tail of a command: --html page, then --json (stdout or FILE) or the readable summary."""
    overwrite = getattr(args, "overwrite", False)
    if getattr(args, "html", None):
        path = result.save(args.html, overwrite=overwrite)
        print(f"lmscope: wrote {path}", file=sys.stderr)
    target = getattr(args, "json", None)
    if target == JSON_STDOUT:
        print(json.dumps(result.to_json(), allow_nan=False))
    elif target:
        path = result.save(target, overwrite=overwrite)
        print(f"lmscope: wrote {path}", file=sys.stderr)
    else:
        print(summary if summary is not None else result.summary())


def add_config_options(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --flag per field of the config dataclass `cls` (underscores become dashes), typed, with the field's help
    text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = hints.get(f.name, type(default))
        # argparse formats help texts with %: a literal % is written %%
        help_text = f"{f.metadata.get('help', '')} (default {default!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        convert = _converter(kind, flag)
        parser.add_argument(flag, dest=f.name, type=convert, default=default, help=help_text,
                            choices=f.metadata.get("choices"))


def config_from_args(cls, args: argparse.Namespace, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def _converter(kind, flag):
    origin, inner = typing.get_origin(kind), typing.get_args(kind)
    if origin in (list, tuple) or kind in (list, tuple):
        item = inner[0] if inner else str
        return lambda text: _as(origin or kind)(numbers(text, item, flag) or [])
    if origin is not None:          # Optional[X]: X's converter
        kinds = [k for k in inner if k is not type(None)]
        return _converter(kinds[0], flag) if kinds else str
    if kind is float:
        return lambda text: (numbers(text, float, flag) or [None])[0]
    return kind


def _as(kind):
    return tuple if kind is tuple else list
