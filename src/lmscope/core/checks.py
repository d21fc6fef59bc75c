"""The one home of input checks shared by the parts: layer lists, prompt lists, counts and numbers, a user's text
file. Each raises one InputError that says what is wrong."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from lmscope.core.errors import InputError


def check_layers(model, layers, *, what: str = "layers") -> list[int]:
    """None -> every layer; an int or a list of ints (negative count from the end) -> sorted layer indices without
    repeats. Anything else (bools, floats, an empty list, a layer out of range) is one clear error."""
    if layers is None:
        return list(range(model.n_layers))
    layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise InputError(f"{what} must be an int or a list of ints, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise InputError(f"{what}: the list is empty")
    for x in layers:
        if not isinstance(x, int) or isinstance(x, bool):
            raise InputError(f"{what} must be ints, got {x!r}")
        if not -model.n_layers <= x < model.n_layers:
            raise InputError(f"layer {x} out of range: {model.spec} has {model.n_layers} layers "
                             f"(0..{model.n_layers - 1}, or negative from the end)")
    return sorted({x % model.n_layers for x in layers})


def check_prompts(prompts, what: str = "prompts") -> list[str]:
    """A list of non-empty strings (not one string)."""
    if isinstance(prompts, str):
        raise InputError(f"{what} must be a list of strings, not one string")
    if prompts is None:
        raise InputError(f"{what}: give a list of strings")
    prompts = list(prompts)
    if not prompts:
        raise InputError(f"{what}: the list is empty")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InputError(f"{what}: every entry must be non-empty text")
    return prompts


def check_count(name: str, value, minimum: int = 1, maximum: "int | None" = None) -> int:
    """An int (not a bool) in [minimum, maximum]."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_number(name: str, value, *, minimum: "float | None" = None, positive: bool = False) -> float:
    """A finite real number (not NaN, not infinite), optionally > 0 or >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def check_numbers(name: str, values: Sequence, **kwargs) -> list[float]:
    values = list(values)
    if not values:
        raise InputError(f"{name}: the list is empty")
    return [check_number(name, v, **kwargs) for v in values]


def read_text_file(path, what: str = "file") -> str:
    """The text of a user's file; one InputError if it is missing, a folder, unreadable or not UTF-8 text."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None


SAFETY = 4.0  # ulps of slack per rounded operation


def tolerance(dtype: torch.dtype, scale: float = 1.0, terms: int = 1) -> float:
    """Absolute tolerance for two computations of one quantity in `dtype` that may round differently:
    SAFETY x terms x eps(dtype) x scale, where `scale` is the size of the values compared (max |x|) and `terms` the
    number of rounded operations (e.g. additions) in which the two computations differ. float32: eps 1.2e-7,
    bfloat16: 7.8e-3, float16: 9.8e-4. Used by `lmscope check` (core.check) and direct logit attribution."""
    return SAFETY * max(int(terms), 1) * torch.finfo(dtype).eps * max(float(scale), 0.0)
