"""The README as a newcomer reads it: the Python tour runs as written on the default model and prints the values
its comments show; every Python block's imports exist; every CLI line it shows parses with today's flags."""
import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

from lmscope.cli.main import build_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
TOUR = next(b for b in BLOCKS if 'model = lmscope.load("smollm2")' in b)


def expected_values(block: str):
    """(statement, expected text) for each top-level statement whose value the README shows: a trailing comment on
    its last line, or a comment line right after it."""
    tree = ast.parse(block)
    lines = block.split("\n")
    for node in tree.body:
        last = lines[node.end_lineno - 1]
        comment = None
        code_end = last.split("#", 1)
        if isinstance(node, ast.Expr) and "  # " in last and last.count("#") == 1:
            comment = last.split("  # ", 1)[1].strip()
        elif isinstance(node, ast.Expr) and node.end_lineno < len(lines) and lines[node.end_lineno].startswith("# "):
            comment = lines[node.end_lineno][2:].strip()
        yield node, comment


def plain(value):
    if isinstance(value, torch.Size):
        return list(value)
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def same(actual, text: str) -> bool:
    """Compare a value with what the README prints: a literal (floats to the digits shown), several literals
    separated by two spaces for a tuple, or a repr."""
    parts = re.split(r"\s{2,}", text)
    if len(parts) > 1 and isinstance(actual, tuple) and len(parts) == len(actual):
        return all(same(a, p) for a, p in zip(actual, parts))
    try:
        want = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return repr(actual) == text
    return close(plain(actual), want, text)


def close(actual, want, text) -> bool:
    if isinstance(want, float):
        digits = len(text.split(".")[-1].rstrip("]) ,")) if "." in text else 0
        # the last printed digit may differ with the number of threads (float sums in another order)
        return isinstance(actual, (int, float)) and abs(actual - want) <= 1.5 * 10 ** -digits
    if isinstance(want, list):
        return isinstance(actual, (list, tuple)) and len(actual) == len(want) and all(
            close(a, w, f"{w}") if not isinstance(w, float) else close(a, w, _number_text(text, i))
            for i, (a, w) in enumerate(zip(actual, want)))
    return actual == want


def _number_text(text: str, i: int) -> str:
    numbers = re.findall(r"-?\d+\.\d+", text)
    return numbers[i] if i < len(numbers) else "0.000000"


def checkable(comment: "str | None") -> bool:
    if comment is None:
        return False
    try:
        ast.literal_eval(re.split(r"\s{2,}", comment)[0])
        return True
    except (ValueError, SyntaxError):
        return comment.startswith("Model(")


@pytest.mark.default_model
def test_the_python_tour_runs_as_written_and_prints_what_it_says():
    namespace: dict = {}
    checked = []
    for node, comment in expected_values(TOUR):
        code = ast.Module(body=[node], type_ignores=[])
        if checkable(comment) and isinstance(node, ast.Expr):
            with contextlib.redirect_stdout(io.StringIO()):
                value = eval(compile(ast.Expression(node.value), "README", "eval"), namespace)
            assert same(value, comment), f"README line {ast.unparse(node)!r}: shows {comment!r}, got {value!r}"
            checked.append(comment)
        else:
            exec(compile(code, "README", "exec"), namespace)
    assert len(checked) >= 8


def test_every_python_block_parses_and_its_imports_exist():
    assert len(BLOCKS) >= 5
    for block in BLOCKS:
        tree = ast.parse(block)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module(body=[node], type_ignores=[]), "README", "exec"), {})


def readme_cli_lines() -> list[list[str]]:
    """Every `lmscope ...` command the README shows (after `$ ` in text blocks), as argv."""
    out = []
    for line in README.replace("\\\n", " ").split("\n"):
        m = re.match(r"^\$ lmscope (.*)$", line.strip())
        if not m:
            continue
        text = m.group(1).split("  #")[0].rstrip(" \\")
        out.append(shlex.split(text))
    return out


def test_every_cli_line_in_the_readme_parses_with_todays_flags():
    lines = readme_cli_lines()
    assert len(lines) >= 15
    parser = build_parser()
    bad = []
    for argv in lines:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as exc:       # --help exits 0; a flag that no longer exists exits 2
            if exc.code != 0:
                bad.append(" ".join(argv))
    assert not bad, "README commands that no longer parse:\n" + "\n".join(bad)
