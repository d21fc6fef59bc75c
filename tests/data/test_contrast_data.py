"""Bundled contrast sets and the sentiment word lists: sizes, no duplicates, no leaks between lists."""
import json
import re
from importlib import resources

import pytest

from lmscope.data.contrast import SETS, concept_contrast, load_contrast, neutral_prompts
from lmscope.core.errors import InputError
from lmscope.directions.steering_eval import sentiment_score, sentiment_words

SIZES = {"harmful": 128, "sentiment": 64, "formality": 48, "language": 48}


@pytest.mark.parametrize("name", sorted(SETS))
def test_sets_are_paired_unique_and_sized(name):
    s = load_contrast(name)
    assert len(s.positive) == len(s.negative) == SIZES[name]
    assert len(set(s.positive)) == len(s.positive) and len(set(s.negative)) == len(s.negative)
    assert not set(s.positive) & set(s.negative)
    assert all(p.strip() == p and p for p in s.positive + s.negative)


def test_language_set_is_french_on_the_negative_side():
    s = load_contrast("language")
    french = re.compile(r"\b(le|la|les|un|une|des|du|est|sont|nous|je|il|elle|ils|mon|ma|mes|j|l|tu)\b", re.I)
    assert all(french.search(n) for n in s.negative)
    assert not any(french.search(p) for p in s.positive)


def test_sentiment_words_and_scores():
    words = sentiment_words()
    assert len(words["positive"]) >= 100 and len(words["negative"]) >= 100
    assert not words["positive"] & words["negative"]
    assert all(w.isalpha() and w.islower() for w in words["positive"] | words["negative"])
    assert sentiment_score("Good, GOOD and great; but awful.") == 2
    assert sentiment_score("goodness goods") == 0          # whole words only
    raw = json.loads(resources.files("lmscope.data").joinpath("sentiment_words.json").read_text())
    assert len(raw["positive"]) == len(set(raw["positive"]))


def test_neutral_prompts_carry_no_sentiment_words():
    prompts = neutral_prompts()
    assert len(prompts) == len(set(prompts)) == 24
    assert all(sentiment_score(p) == 0 for p in prompts)
    words = sentiment_words()
    assert not any(w in words["positive"] | words["negative"] for p in prompts for w in re.findall(r"[a-z]+",
                                                                                                    p.lower()))


def test_concept_contrast_and_unknown_names():
    s = concept_contrast("ocean")
    assert s.positive == ["Tell me about ocean"] and "Tell me about ocean" not in s.negative
    assert len(s.negative) >= 50 and load_contrast("concept:ocean") == s
    with pytest.raises(InputError, match="unknown contrast set"):
        load_contrast("politeness")
    with pytest.raises(InputError, match="needs a word"):
        load_contrast("concept: ")


def test_refusal_score_phrases():
    from lmscope.directions.steering_eval import refusal_score
    assert refusal_score("I'm sorry, but I can't help with that.") == 1
    assert refusal_score("As an AI language model, ...") == 1
    assert refusal_score("I can\u2019t do that") == 1
    assert refusal_score("Sure! Here is a recipe for bread.") == 0
