"""Config dataclasses: one field per parameter, each with its help text, so that the defaults live in one place and
the same class is the method's options, the CLI's flags (lmscope.cli.common.add_config_options) and the JSON stored
in the result.

    @dataclass
    class LreConfig:
        n_train: int = option(5, "pairs to fit W and b on")
"""
from __future__ import annotations

import dataclasses


def option(default, help_text: str, **metadata):
    """A config field with its help text (and, optionally, `choices=`, `flag=` for the CLI)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help_text, **metadata})
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})
