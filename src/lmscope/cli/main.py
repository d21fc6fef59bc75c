"""`lmscope <command>`: one subcommand per method, thin over the library, grouped by lecture part in the lecture's
order. Each part registers its own subcommands (`register(subparsers)` in its cli.py). Expected failures (bad input,
a bad file or folder, a missing device) print one line `lmscope: error: ...` and exit with code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from lmscope.circuits import cli as circuits_cli
from lmscope.cli import check as check_cli
from lmscope.cli import sites as sites_cli
from lmscope.core.errors import LmscopeError
from lmscope.directions import cli as directions_cli
from lmscope.harvest import cli as harvest_cli
from lmscope.icl import cli as icl_cli
from lmscope.lenses import cli as lenses_cli
from lmscope.neurons import cli as neurons_cli
from lmscope.papers.icl_update import cli as icl_update_cli
from lmscope.papers.introspection import cli as introspection_cli
from lmscope.papers.weight_sparse import cli as weight_sparse_cli
from lmscope.sae import cli as sae_cli

EXIT_ERROR = 2

# (heading, modules whose register() adds its commands), in the lecture's order
PARTS = (
    ("the model", (sites_cli, check_cli)),
    ("part 1: one neuron", (neurons_cli,)),
    ("part 2: one layer (directions, steering, function vectors, truth)", (directions_cli, icl_cli)),
    ("part 2, automated: activations to disk and sparse autoencoders", (harvest_cli, sae_cli)),
    ("part 3: layers together (circuits)", (circuits_cli,)),
    ("part 4: the model explains itself (lenses)", (lenses_cli,)),
    ("papers", (icl_update_cli, introspection_cli, weight_sparse_cli)),
    ("the lab", ("lmscope.lab.cli",)),
)
# The lab sits above the command line (it uses cli.common): its module is named here and imported by name, so
# dependencies still point one way.


class _GroupedHelp(argparse.ArgumentParser):
    """`lmscope --help` lists the commands under their lecture part."""
    groups: list = []

    def format_help(self) -> str:
        sub = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        lines = [self.format_usage().rstrip(), "", self.description or "", ""]
        for heading, names in self.groups:
            lines.append(f"{heading}:")
            lines += [f"  {name:<20} {helps.get(name, '')}" for name in names]
            lines.append("")
        lines.append("lmscope <command> --help shows a command's options. Errors: one line, exit code 2.")
        return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = _GroupedHelp(prog="lmscope", description="Look inside language models: every experiment of the lecture "
                                                      "on LLM internals, and three 2025 papers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>",
                                parser_class=argparse.ArgumentParser)
    groups = []
    for heading, modules in PARTS:
        before = set(sub.choices)
        for module in modules:
            (importlib.import_module(module) if isinstance(module, str) else module).register(sub)
        groups.append((heading, [name for name in sub.choices if name not in before]))
    parser.groups = groups
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)     # a command may return its own exit code (lmscope check: 1 on a failed check)
    except LmscopeError as exc:
        print(f"lmscope: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lmscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
