"""Every flag of every subcommand has a help text, and every flag with a default says what it is."""
import argparse

from lmscope.cli.main import build_parser


def subcommand_parsers(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from subcommand_parsers(sub, path + (name,))


def test_every_flag_has_help_and_shows_its_default():
    missing_help, missing_default = [], []
    parsers = list(subcommand_parsers(build_parser()))
    assert len(parsers) > 25
    for path, parser in parsers:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing_help.append(name)
                continue
            has_default = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
            if has_default and "default" not in action.help.lower() and "%(default)" not in action.help:
                missing_default.append(f"{name} (default {action.default!r})")
    assert not missing_help, "flags without help:\n" + "\n".join(missing_help)
    assert not missing_default, "defaults not shown:\n" + "\n".join(missing_default)
