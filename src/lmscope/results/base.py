"""The one base class of every result a method returns.

    @dataclass
    class LensResult(Result, kind="logit_lens"):      # registered under its kind
        model: str
        ...
        def figure(self): ...                          # a Plotly figure for people
        def summary(self) -> str: ...                  # what the terminal prints

    result.to_json()          # {"kind": "logit_lens", "format": 1, <every field>}: strict JSON (NaN/inf -> null)
    LensResult.from_json(d)   # the inverse, field by field, guided by the type hints
    result.save("x.html")     # a self-contained page; any other suffix (".json") -> the JSON; refuses to replace a
                              # file unless overwrite=True (the one output rule, lmscope.results.output)
    Result.load("x.json")     # any saved result back, as its own class
    result                    # in a notebook: its summary and its figure (_repr_html_)

A subclass may add `json_extras()` (derived values for readers of the JSON; ignored by from_json), `figures()`
(several figures on its page), `page_intro()` (plain text: the page escapes it) and `page_body()` (already-escaped
HTML between intro and figures).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import html
import importlib
import json
import math
import types
import typing
from pathlib import Path

import torch

from lmscope.core.errors import InputError
from lmscope.results.files import write_atomic
from lmscope.results.html import write_page
from lmscope.results.output import HTML, check_output

_REGISTRY: dict[str, type] = {}


class Result:
    """Base of every method's result; subclasses are dataclasses declared with `kind=`."""
    kind: typing.ClassVar[str] = ""
    format: typing.ClassVar[int] = 1

    def __init_subclass__(cls, kind: "str | None" = None, format: int = 1, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is not None:
            if kind in _REGISTRY and _REGISTRY[kind].__qualname__ != cls.__qualname__:
                raise TypeError(f"result kind {kind!r} is taken by {_REGISTRY[kind].__qualname__}")
            _REGISTRY[kind] = cls
            cls.kind, cls.format = kind, format

    # --- JSON ------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {"kind": self.kind, "format": self.format}
        out.update({f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)})
        out.update(to_plain(self.json_extras()))
        return out

    def json_extras(self) -> dict:
        """Derived values written beside the fields for readers of the JSON (not read back)."""
        return {}

    @classmethod
    def from_json(cls, data: dict):
        if not isinstance(data, dict):
            raise InputError(f"a saved result is a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        if cls is Result and kind not in _REGISTRY:
            _register_every_kind()
        target = _REGISTRY.get(kind) if cls is Result else cls
        if target is None:
            raise InputError(f"unknown result kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
        if cls is Result:       # the class's own reader (a subclass may refine from_json)
            return target.from_json(data)
        if kind != target.kind:
            raise InputError(f"this is a {kind!r} result, not {target.kind!r}")
        if data.get("format") != target.format:
            raise InputError(f"{kind!r} result of format {data.get('format')!r}; this lmscope reads format "
                             f"{target.format}")
        return _restore_dataclass(target, data)

    # --- people ----------------------------------------------------------------------------------------------
    def figure(self):
        raise NotImplementedError(f"{type(self).__name__} has no figure")

    def figures(self) -> list:
        return [self.figure()]

    def summary(self) -> str:
        return json.dumps(self.to_json(), indent=1)[:2000]

    def title(self) -> str:
        model = getattr(self, "model", None)
        return f"{self.kind.replace('_', ' ')}" + (f" - {model}" if isinstance(model, str) else "")

    def page_intro(self) -> str:
        return ""

    def page_body(self) -> str:
        return ""

    def _repr_html_(self) -> str:
        parts = [f"<pre>{html.escape(self.summary())}</pre>"]
        try:
            parts += [fig._repr_html_() for fig in self.figures()]
        except NotImplementedError:
            pass
        return "".join(parts)

    # --- files -----------------------------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        """`.html`/`.htm` -> a self-contained page; any other name -> the JSON. Written atomically; an existing
        file is replaced only with overwrite=True."""
        path = check_output(path, overwrite=overwrite)
        if path.suffix.lower() in HTML:
            return write_page(path, self.figures(), self.title(), self.page_intro(), self.page_body())
        return write_atomic(path, json.dumps(self.to_json(), indent=1, allow_nan=False))

    @staticmethod
    def load(path) -> "Result":
        """Read any saved result (its JSON) back as its own class."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not a JSON result ({exc})") from None
        return Result.from_json(data)


# The packages and modules that define result kinds. A kind registers when its module is imported; Result.load in a
# fresh interpreter imports these (by name, at the first unknown kind) so that every kind can be read back. Names
# only: results does not depend on the parts' code.
KIND_PACKAGES = ("lmscope.neurons", "lmscope.directions", "lmscope.icl", "lmscope.harvest", "lmscope.sae",
                 "lmscope.circuits", "lmscope.lenses", "lmscope.papers.icl_update", "lmscope.papers.introspection",
                 "lmscope.papers.weight_sparse", "lmscope.papers.weight_sparse.bridges",
                 "lmscope.papers.weight_sparse.compare", "lmscope.papers.weight_sparse.reading", "lmscope.cli.check",
                 "lmscope.cli.sites")


def _register_every_kind() -> None:
    for name in KIND_PACKAGES:
        importlib.import_module(name)


def result_kinds() -> list[str]:
    """Every result kind (all packages imported first)."""
    _register_every_kind()
    return sorted(_REGISTRY)


# -------------------------------------------------------------------------------------------------------------
# Plain JSON values and back

def to_plain(value):
    """Dataclasses, tensors, tuples, paths -> JSON values; NaN and infinities -> None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Result):
            return value.to_json()
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return to_plain(value.detach().cpu().tolist())
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):     # numpy scalars
        return to_plain(value.item())
    if hasattr(value, "tolist"):                                 # numpy arrays
        return to_plain(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _restore_dataclass(cls, data: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _restore(data[f.name], hints.get(f.name, typing.Any))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"saved {getattr(cls, 'kind', '') or cls.__name__} has no field {f.name!r}")
    return cls(**kwargs)


def _restore(value, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return math.nan if type(None) not in args and float in args else None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _restore(value, arg)
            except (TypeError, ValueError, InputError):
                continue
        return value
    if hint is float:
        return math.nan if value is None else float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) and not (hint is float and isinstance(value, int)):
            raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
        return value
    if hint is torch.Tensor:
        # JSON does not keep the dtype: floats come back as float64 (exact for float32/16 values), ints as int64
        value = _none_to_nan(value)
        return torch.tensor(value, dtype=torch.float64 if _has_float(value) else None)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {hint.__name__}")
        if isinstance(hint, type) and issubclass(hint, Result):
            return hint.from_json(value)
        return _restore_dataclass(hint, value)
    if origin in (list, collections.abc.Sequence) or hint is list:
        inner = args[0] if args else typing.Any
        return [_restore(v, inner) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_restore(v, args[0]) for v in value)
        return tuple(_restore(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin is dict or hint is dict:
        key, val = (args or (typing.Any, typing.Any))
        return {_restore_key(k, key): _restore(v, val) for k, v in value.items()}
    if origin is typing.Literal:
        return value
    return value


def _restore_key(key: str, hint):
    if hint is int:
        return int(key)
    if hint is float:
        return float(key)
    return key


def _none_to_nan(value):
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return math.nan if value is None else value


def _has_float(value) -> bool:
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return isinstance(value, float)
