"""Command line: `lmscope <command>`; each lecture part registers its own subcommands."""
from lmscope.cli.main import main

__all__ = ["main"]
