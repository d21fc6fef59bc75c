"""Contrast sets written for lmscope: pairs of prompts that differ in one property.

    harmful     harmful vs harmless requests, 128 + 128, loosely paired by topic ("build a pipe bomb" /
                "build a birdhouse"); the requests name the harm and contain no instructions
    sentiment   positive vs negative sentences, 64 pairs with the same subject
    formality   formal vs casual phrasing of the same message, 48 pairs
    language    English vs French translations, 48 pairs
    concept:W   "Tell me about W" vs "Tell me about B" for the baseline words B of data/concepts.json (Lindsey 2025)

`neutral_prompts()` are 24 neutral sentence starts for steering (no sentiment word of data/sentiment_words.json).
Files: data/contrast_<name>.jsonl, one {"positive": ..., "negative": ...} per line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from lmscope.core.errors import InputError

SETS = {
    "harmful": ("harmful request", "harmless request"),
    "sentiment": ("positive sentiment", "negative sentiment"),
    "formality": ("formal", "casual"),
    "language": ("English", "French"),
}
CONCEPT_TEMPLATE = "Tell me about {}"


@dataclass(frozen=True)
class ContrastSet:
    name: str
    positive: list[str]
    negative: list[str]
    positive_label: str
    negative_label: str

    def __len__(self) -> int:
        return len(self.positive)


def _lines(filename: str) -> list[dict]:
    text = resources.files("lmscope.data").joinpath(filename).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def names() -> list[str]:
    return sorted(SETS) + ["concept:<word>"]


def load_contrast(name: str) -> ContrastSet:
    """A bundled contrast set by name (see the module docstring)."""
    if not isinstance(name, str):
        raise InputError(f"a contrast set name is a string, got {type(name).__name__}")
    if name.startswith("concept:"):
        return concept_contrast(name.partition(":")[2])
    if name not in SETS:
        raise InputError(f"unknown contrast set {name!r}; bundled: {', '.join(names())}")
    rows = _lines(f"contrast_{name}.jsonl")
    return ContrastSet(name, [r["positive"] for r in rows], [r["negative"] for r in rows], *SETS[name])


def concept_contrast(word: str) -> ContrastSet:
    """'Tell me about {word}' (once) vs the same template over the baseline words of data/concepts.json."""
    word = word.strip()
    if not word:
        raise InputError("concept:<word> needs a word, e.g. concept:ocean")
    words = json.loads(resources.files("lmscope.data").joinpath("concepts.json").read_text(encoding="utf-8"))
    baselines = [b for b in words["baselines"] if b != word]
    return ContrastSet(f"concept:{word}", [CONCEPT_TEMPLATE.format(word)],
                       [CONCEPT_TEMPLATE.format(b) for b in baselines], word, "baseline words")


def neutral_prompts() -> list[str]:
    return [r["text"] for r in _lines("contrast_neutral.jsonl")]
