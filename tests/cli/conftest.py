"""Records which subcommands the tests run through lmscope.cli.main; when the whole tests/cli folder ran, the session
fails if any subcommand never ran (every subcommand must run once through main() on a random model)."""
import argparse
import importlib
from pathlib import Path

import pytest

cli_main = importlib.import_module("lmscope.cli.main")   # the module (lmscope.cli.main is also the function)

HERE = Path(__file__).resolve().parent
RAN: set = set()
_build = cli_main.build_parser


def leaf_commands(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_commands(sub, path + (name,))


def command_path(parser, argv) -> tuple:
    path, tokens = (), [a for a in argv if not a.startswith("-")]
    while tokens:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or tokens[0] not in subs[0].choices:
            break
        parser = subs[0].choices[tokens[0]]
        path, tokens = path + (tokens.pop(0),), tokens
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: outputs must be checked before the work starts."""
    called = []

    def refuse(*args, **kwargs):
        called.append(args)
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(importlib.import_module("lmscope.cli.common"), "load", refuse)
    monkeypatch.setattr(importlib.import_module("lmscope.harvest.cli"), "load", refuse)
    return called


def _recording_parser():
    parser = _build()
    parse = parser.parse_args

    def parse_args(argv=None, namespace=None):
        args = parse(argv, namespace)
        if "--help" not in (argv or []) and "-h" not in (argv or []):
            RAN.add(command_path(parser, [str(a) for a in (argv or [])]))
        return args
    parser.parse_args = parse_args
    return parser


@pytest.fixture(autouse=True, scope="session")
def _record_commands():
    cli_main.build_parser = _recording_parser
    yield
    cli_main.build_parser = _build


def pytest_sessionfinish(session, exitstatus):
    selected = [Path(str(item.fspath)).resolve() for item in getattr(session, "items", [])]
    every_file = sorted(HERE.glob("test_*.py"))
    ran_whole_folder = every_file and all(any(p == f for p in selected) for f in every_file)
    if not ran_whole_folder or session.config.getoption("keyword") or exitstatus != 0:
        return
    missing = sorted(" ".join(p) for p in leaf_commands(_build()) if p not in RAN)
    if missing:
        print("\nsubcommands never run through lmscope.cli.main by tests/cli: " + ", ".join(missing))
        session.exitstatus = 1
