"""`lmscope <command>`: one subcommand per method, thin over the library, grouped by lecture part in the lecture's
order. Each part registers its own subcommands (`register(subparsers)` in its cli.py). Expected failures (bad input,
a bad file or folder, a missing device) print one line `lmscope: error: ...` and exit with code 2."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from lmscope.circuits import cli as circuits_cli
from lmscope.cli import check as check_cli
from lmscope.cli import sites as sites_cli
from lmscope.core.errors import LmscopeError
from lmscope.directions import cli as directions_cli
from lmscope.harvest import cli as harvest_cli
from lmscope.harvest.distributed import leave_group
from lmscope.icl import cli as icl_cli
from lmscope.lenses import cli as lenses_cli
from lmscope.neurons import cli as neurons_cli
from lmscope.papers.icl_update import cli as icl_update_cli
from lmscope.papers.introspection import cli as introspection_cli
from lmscope.papers.weight_sparse import cli as weight_sparse_cli
from lmscope.sae import cli as sae_cli

EXIT_ERROR = 2
# raised while reading or writing a user's file: one line, exit 2 (BrokenPipeError is handled on its own)
USER_FILE_ERRORS = (OSError, UnicodeDecodeError, json.JSONDecodeError)

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


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line on stderr (`lmscope: error: ...`) and exit code 2, like every other error."""

    def error(self, message):
        print(f"lmscope: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        self.exit(EXIT_ERROR)


class _GroupedHelp(_OneLineErrors):
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
                                parser_class=_OneLineErrors)
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
    try:
        args = parser.parse_args(argv)     # a flag's converter may raise InputError (cli.common.numbers)
        code = args.func(args)     # a command may return its own exit code (lmscope check: 1 on a failed check)
        leave_group()              # under torchrun: every rank is done; a gloo group left to exit can abort it
    except LmscopeError as exc:
        print(f"lmscope: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_FILE_ERRORS as exc:        # a user's file or folder that could not be read or written
        print(f"lmscope: error: {_file_error(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lmscope: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _file_error(exc: BaseException) -> str:
    """One line for an OSError or a decoding error of a user's file (the readers raise InputError where they can;
    this is the net under them). A bug is not caught here: only these classes are."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({_one_line(exc)})"
    if isinstance(exc, json.JSONDecodeError):
        return f"a file is not valid JSON ({_one_line(exc)})"
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or _one_line(exc)
        return f"{exc.filename}: {reason}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return _one_line(exc)


if __name__ == "__main__":
    sys.exit(main())
