"""Config dataclasses: one field per parameter, each with its help text, so that the defaults live in one place and
the same class is the method's options, the CLI's flags (lmscope.cli.common.add_config_options) and the JSON stored
in the result.

    @dataclass
    class LreConfig:
        n_train: int = option(5, "pairs to fit W and b on")
"""
from __future__ import annotations

import dataclasses

from lmscope.core.errors import InputError


def option(default, help_text: str, **metadata):
    """A config field with its help text (and, optionally, `choices=`, `flag=` for the CLI)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help_text, **metadata})
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


def with_overrides(cls, config, overrides: dict):
    """`config` (or the defaults of the config dataclass `cls`) with keyword overrides of its fields, for a method
    that takes `config=None, **overrides`; one clear InputError for a config of another class or an unknown name."""
    config = config if config is not None else cls()
    if not isinstance(config, cls):
        raise InputError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(names)}")
    return dataclasses.replace(config, **overrides)
