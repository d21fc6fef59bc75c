"""In-context learning tasks written for this project: pairs of {"input", "output"}, one task per jsonl file.

Bundled (60+ pairs each, files `icl_task_<name>.jsonl`): antonyms, country_capital, english_french,
singular_plural, present_past, lowercase_uppercase. A custom task is a jsonl file of {"input": ..., "output": ...}
lines (`load_pairs`). Inputs and outputs are written without a leading space: the prompt format "input -> output"
puts one space before the output, and a prediction is judged by the first token of " " + output.

Also the table behind the truth direction: `load_cities()` (city -> country, `cities.json`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from lmscope.core.errors import InputError

TASKS = ("antonyms", "country_capital", "english_french", "singular_plural", "present_past", "lowercase_uppercase")


@dataclass(frozen=True)
class IclTask:
    name: str
    pairs: tuple[tuple[str, str], ...]   # (input, output), file order


def task_names() -> list[str]:
    return list(TASKS)


@cache
def load_icl_task(name: str) -> IclTask:
    """A bundled task by name; one clear error for an unknown name."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; bundled tasks: {', '.join(TASKS)} (or give a pairs file)")
    text = resources.files("lmscope.data").joinpath(f"icl_task_{name}.jsonl").read_text(encoding="utf-8")
    return IclTask(name, _parse(text, f"task {name}"))


def load_pairs(path) -> IclTask:
    """A custom task: a jsonl file of {"input": ..., "output": ...} lines (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"pairs file {path} is not UTF-8 text") from None
    return IclTask(path.stem, _parse(text, f"pairs file {path}"))


def _parse(text: str, what: str) -> tuple[tuple[str, str], ...]:
    pairs, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{what}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or set(row) != {"input", "output"}:
            raise InputError(f"{what}, line {number}: each line must be an object with exactly the keys "
                             f"'input' and 'output', got {line.strip()[:80]!r}")
        x, y = row["input"], row["output"]
        if not (isinstance(x, str) and isinstance(y, str) and x.strip() and y.strip()):
            raise InputError(f"{what}, line {number}: input and output must be non-empty strings")
        if "\n" in x + y or "->" in x + y:
            # the prompt format separates pairs by lines and input from output by '->'
            raise InputError(f"{what}, line {number}: input and output may not contain a line break or '->'")
        x, y = x.strip(), y.strip()
        if x in seen:
            raise InputError(f"{what}, line {number}: input {x!r} appears twice")
        seen.add(x)
        pairs.append((x, y))
    if not pairs:
        raise InputError(f"{what} has no pairs")
    return tuple(pairs)


@cache
def load_cities() -> dict[str, str]:
    """City -> country as written after 'is in' ('the United States'); file order."""
    data = json.loads(resources.files("lmscope.data").joinpath("cities.json").read_text(encoding="utf-8"))
    return dict(data["cities"])
