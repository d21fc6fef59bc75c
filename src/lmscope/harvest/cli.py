"""Subcommands of this part (registered by lmscope.cli.build_parser)."""
from __future__ import annotations


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
