"""Number-agreement prompts written for this project: the next token must be the singular or the plural form.

Two kinds, 150 minimal pairs in all (each pair id has one singular and one plural item, `correct` and `wrong`
swapped):

- "subject-verb": a subject noun phrase, mostly with an attractor noun of the other number in a prepositional
  phrase or relative clause ("The keys to the cabinet" -> " are" / " is"); verbs is/are, was/were, has/have,
  does/do and present-tense lexical verbs.
- "determiner-noun": a determiner or quantifier, then the noun ("Could you pass me those" -> " cups" / " cup").

`correct` and `wrong` keep their leading space and are single tokens for the default model's tokenizer (the tests
check it), so a margin is one logit difference at the last prompt position. Used to measure how ablations of
"knowledge neurons" (Niu et al. 2024) change the model's choice of grammatical number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from lmscope.core.errors import InputError

KINDS = ("subject-verb", "determiner-noun")
_FILE = "number_agreement.jsonl"


@dataclass(frozen=True)
class AgreementPrompt:
    prompt: str     # ends without a space; the next token decides the number
    correct: str    # the form that agrees, with its leading space (one token)
    wrong: str      # the other form, with its leading space (one token)
    number: str     # "singular" or "plural": the number `correct` has
    kind: str       # "subject-verb" or "determiner-noun"
    pair: int       # shared with the minimal-pair partner of the other number


@cache
def _load_all() -> tuple[AgreementPrompt, ...]:
    text = resources.files("lmscope.data").joinpath(_FILE).read_text(encoding="utf-8")
    return tuple(AgreementPrompt(**json.loads(line)) for line in text.splitlines() if line.strip())


def load_number_agreement(kind: str | None = None) -> list[AgreementPrompt]:
    """All prompts in file order (pair partners adjacent), or only those of one kind."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown number-agreement kind {kind!r}; choose one of {', '.join(KINDS)} (or None)")
    return [p for p in _load_all() if kind is None or p.kind == kind]
