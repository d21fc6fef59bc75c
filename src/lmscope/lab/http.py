"""Request helpers shared by the lab's views: reading and checking JSON fields, and errors tied to a field.

An error raised inside `blame("layer")` reaches the page as {"error": ..., "field": "layer"}, and the page shows it
next to that field. Library errors (LmscopeError) keep their own message; anything else becomes a one-line
"internal error" (the traceback goes to the server's log, never into a response).
"""
from __future__ import annotations

import contextlib
import logging
import math

from starlette.requests import Request
from starlette.responses import JSONResponse

from lmscope.core.errors import LmscopeError

log = logging.getLogger("lmscope.lab")
MAX_TEXT = 4000


class FieldError(LmscopeError):
    """Bad input in one field of a form."""

    def __init__(self, field: "str | None", message: str):
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def blame(field: str):
    """Tag a library error raised inside with the form field it comes from."""
    try:
        yield
    except FieldError:
        raise
    except LmscopeError as e:
        raise FieldError(field, str(e)) from None


def error_response(exc: BaseException, status: int = 400) -> JSONResponse:
    if isinstance(exc, FieldError):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=status)
    if isinstance(exc, LmscopeError):
        return JSONResponse({"error": str(exc), "field": None}, status_code=status)
    log.exception("internal error in a lab request", exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the lab's log", "field": None},
                        status_code=500)


async def request_json(request: Request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        raise FieldError(None, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise FieldError(None, "the request body must be a JSON object")
    return data


def text(data: dict, name: str, *, required: bool = True, default: "str | None" = None, strip: bool = False,
         max_len: int = MAX_TEXT) -> "str | None":
    value = data.get(name, default)
    if value is None or (value == "" and not required):
        if required:
            raise FieldError(name, f"{name} is required")
        return default
    if not isinstance(value, str):
        raise FieldError(name, f"{name} must be text")
    if strip:
        value = value.strip()
    if required and not value.strip():
        raise FieldError(name, f"empty {name}")
    if len(value) > max_len:
        raise FieldError(name, f"{name} is too long ({len(value)} characters; at most {max_len})")
    return value


def integer(data: dict, name: str, lo: int, hi: int, default: "int | None" = None, what: str = "") -> int:
    value = data.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, f"{name} must be a whole number")
    if not lo <= value <= hi:
        raise FieldError(name, f"{name} {value} is out of range{what}: {lo}..{hi}")
    return value


def number(data: dict, name: str, lo: float, hi: float, default: "float | None" = None) -> float:
    value = data.get(name, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FieldError(name, f"{name} must be a number") from None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, f"{name} must be a number")
    if not lo <= value <= hi:
        raise FieldError(name, f"{name} {value:g} is out of range: {lo:g}..{hi:g}")
    return float(value)


def choice(data: dict, name: str, options, default: "str | None" = None) -> str:
    value = data.get(name, default)
    if value not in options:
        raise FieldError(name, f"{name} must be one of {', '.join(map(str, options))}")
    return value


def layer(data: dict, model, name: str = "layer", default: "int | None" = None) -> int:
    return integer(data, name, 0, model.n_layers - 1, default, f" (the model has {model.n_layers} layers)")
