"""Prefill variant of concept injection (Lindsey 2025): prompts, injection span, controls, scoring, CLI, bad input."""
import json
from importlib import resources

import pytest
import torch

import lmscope
from lmscope.papers.introspection import PrefillResult, prefill_trials, score_prefill_answer
from lmscope.papers.introspection.prefill import (FOLLOW_UP, build_prefill_prompts, pair_sentences, prefill_prompt,
                                                  prefill_sentences)
from lmscope.papers.introspection.trials import concept_pattern, generate_injected, injection_edits, word_lists
from lmscope.results import Result

from conftest import random_model

SMALL = dict(concepts=["dog", "cat"], baselines=["table", "chair"], sentences=["The bus was late.", "It rained."])


@pytest.fixture
def llama():
    m = random_model("llama")
    yield m
    assert not m.has_hooks()


def test_bundled_sentences_are_neutral_and_word_lists_unchanged():
    sentences = prefill_sentences()
    assert len(sentences) == len(set(sentences)) >= 20
    words = word_lists()
    assert len(words["concepts"]) == len(words["baselines"]) == 60
    for s in sentences:
        assert not any(concept_pattern(c).search(s) for c in words["concepts"]), s
    data = json.loads(resources.files("lmscope.data").joinpath("concepts.json").read_text(encoding="utf-8"))
    assert set(data) == {"about", "concepts", "baselines", "prefill_sentences"}


def test_pairing_is_seeded_and_skips_sentences_with_the_word():
    sentences = ["A dog barked.", "The bus was late.", "It rained.", "We ate."]
    a = pair_sentences(["dog", "cat", "sun"], sentences, seed=3)
    assert a == pair_sentences(["dog", "cat", "sun"], sentences, seed=3)
    assert a[0] != "A dog barked." and len(set(a)) == 3
    assert len({tuple(pair_sentences(["dog", "cat", "sun"], sentences, seed=s)) for s in range(8)}) > 1
    with pytest.raises(lmscope.InputError, match="every sentence contains"):
        pair_sentences(["dog"], ["A dog.", "Dogs bark."], seed=0)


def test_prompt_layout_plain_fallback(llama):
    text, offsets = prefill_prompt(llama, "The bus was late.", "dog")
    assert text == ("User: Tell me what word you think about when you read the line below. Answer immediately."
                    "\n\nThe bus was late.\n\nAssistant: dog\n\nUser: " + FOLLOW_UP + "\n\nAssistant:")
    assert text[offsets["word"]:].startswith("dog\n\nUser:") and offsets["turn"] == len("User: ")


def test_injection_touches_only_positions_before_the_prefilled_word(llama):
    prompt = build_prefill_prompts(llama, ["dog"], ["The bus was late."])[0]
    tokens = llama.to_str_tokens(prompt.ids)
    assert "".join(tokens[prompt.first:]).startswith("Tell me what word")
    assert "".join(tokens[prompt.end:]).startswith("dog\n\nUser:")
    vector = 5 * torch.randn(llama.d_model, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([prompt.ids, prompt.ids])
    sites = ["resid_post.0", "resid_post.1"]
    clean = llama.run(ids, read=sites)
    # row 0 injected at layer 0, row 1 at layer 1
    injected = llama.run(ids, read=sites, edits=injection_edits([(0, vector), (1, vector)], prompt.first, prompt.end))
    diff0 = injected.acts["resid_post.0"] - clean.acts["resid_post.0"]
    span = prompt.end - prompt.first
    torch.testing.assert_close(diff0[0, prompt.first:prompt.end], vector.expand(span, -1), rtol=0, atol=1e-5)
    assert torch.equal(diff0[0, :prompt.first], torch.zeros_like(diff0[0, :prompt.first]))
    assert torch.equal(diff0[1], torch.zeros_like(diff0[1]))
    # at layer 0 the later positions differ only through attention to the edited ones: not by the vector itself
    assert (diff0[0, prompt.end:] - vector).norm(dim=-1).min() > 1
    diff1 = injected.acts["resid_post.1"] - clean.acts["resid_post.1"]
    torch.testing.assert_close(diff1[1, prompt.first:prompt.end], vector.expand(span, -1), rtol=0, atol=1e-5)
    assert torch.equal(diff1[1, :prompt.first], torch.zeros_like(diff1[1, :prompt.first]))


def test_generated_tokens_are_not_injected(llama):
    """The runner's answer equals a no-cache greedy loop with the edit on first..end-1 only."""
    prompt = build_prefill_prompts(llama, ["dog"], ["The bus was late."])[0]
    vector = 6 * torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    answer = generate_injected(llama, [prompt.ids], [(1, vector)], prompt.first, prompt.end, max_new_tokens=5)[0]
    ids = list(prompt.ids)
    for _ in range(5):
        logits = llama.run(torch.tensor([ids]), edits=injection_edits([(1, vector)], prompt.first, prompt.end)).logits
        ids.append(int(logits[0, -1].argmax()))
    assert answer == llama.tokenizer.decode(ids[len(prompt.ids):], skip_special_tokens=True)
    # the same loop with the edit left on for the whole sequence answers differently
    ids = list(prompt.ids)
    for _ in range(5):
        logits = llama.run(torch.tensor([ids]), edits=injection_edits([(1, vector)], prompt.first, None)).logits
        ids.append(int(logits[0, -1].argmax()))
    assert answer != llama.tokenizer.decode(ids[len(prompt.ids):], skip_special_tokens=True)


def test_controls_are_plain_generation_and_trials_are_not(llama):
    result = prefill_trials(llama, layers=[1], strengths=[8.0], max_new_tokens=5, **SMALL)
    assert isinstance(result, PrefillResult)
    assert len(result.controls) == 2 and len(result.trials) == len(result.random_controls) == 2
    for control in result.controls:
        text, _ = prefill_prompt(llama, control.sentence, control.concept)
        assert control.answer == llama.generate(text, max_new_tokens=5).text
        assert (control.kind, control.layer, control.strength) == ("control", None, None)
    by_pair = {c.pair: c.answer for c in result.controls}
    assert [t.answer for t in result.trials] != [by_pair[t.pair] for t in result.trials]
    assert [(r.pair, r.layer, r.strength, r.kind) for r in result.random_controls] == \
        [(t.pair, t.layer, t.strength, "random") for t in result.trials]
    assert [r.answer for r in result.random_controls] != [t.answer for t in result.trials]


@pytest.mark.parametrize("answer, stance", [
    ("Yes, I meant to say that.", "accepts"),
    ("I meant it.", "accepts"),
    ("It was intentional.", "accepts"),
    ("I said it on purpose.", "accepts"),
    ("It was deliberate", "accepts"),
    ("It wasn't an accident.", "accepts"),                          # negated disavowal
    ("No, I meant it.", "accepts"),                                 # a bare "no" does not negate
    ("Yes.", "accepts"),
    ("Of course!", "accepts"),
    ("It was an accident.", "disavows"),
    ("Sorry, my mistake. I meant to say 'late'.", "disavows"),      # first cue decides
    ("I didn't mean to say that.", "disavows"),                     # negated intent
    ("It was not intended.", "disavows"),
    ("That was unintended", "disavows"),                            # not "intended"
    ("Yes, it was an accident.", "disavows"),                       # yes/no only without a strong cue
    ("No.", "disavows"),
    ("Did you mean to say that? The bus was late.", None),           # echoed question skipped
    ("Did you mean to say that? It was an accident.", "disavows"),
    ("The bus was late.", None),
    ("", None),
])
def test_scoring_rules(answer, stance):
    assert score_prefill_answer(answer).stance == stance


def test_scoring_positions():
    score = score_prefill_answer("Well, I didn't mean it.")
    assert (score.stance, score.cue, score.cue_at, score.negated) == ("disavows", "mean it", 15, True)


def test_rates_grid_and_json(llama, tmp_path):
    result = prefill_trials(llama, layers=[0, 2], strengths=[0.5, 2.0], max_new_tokens=2, **SMALL)
    answers = {(0, 0.5): ["I meant it.", "Sorry."], (0, 2.0): ["Yes.", "Yes."], (2, 0.5): ["x", "x"],
               (2, 2.0): ["Accident.", "x"]}
    for t in result.trials:
        t.answer = answers[(t.layer, t.strength)][t.pair]
        t.stance = score_prefill_answer(t.answer).stance
    result.controls[0].stance, result.controls[1].stance = "disavows", None
    out = result.to_json()
    assert (out["n_trials"], out["n_controls"], out["n_random_controls"]) == (8, 2, 8)
    assert (out["accept_rate_injected"], out["disavow_rate_injected"]) == (0.375, 0.25)
    assert (out["accept_rate_control"], out["disavow_rate_control"]) == (0.0, 0.5)
    assert out["grid"] == [{"layer": 0, "strength": 0.5, "accept_rate": 0.5, "disavow_rate": 0.5, "n": 2},
                           {"layer": 0, "strength": 2.0, "accept_rate": 1.0, "disavow_rate": 0.0, "n": 2},
                           {"layer": 2, "strength": 0.5, "accept_rate": 0.0, "disavow_rate": 0.0, "n": 2},
                           {"layer": 2, "strength": 2.0, "accept_rate": 0.0, "disavow_rate": 0.5, "n": 2}]
    assert out["trials"][0]["transcript"].endswith("Assistant: " + out["trials"][0]["answer"])
    chosen = [t for t in result.trials if t.concept in result.selection_concepts]
    best = max(result.grid(chosen), key=lambda c: (c["accept_rate"], -c["strength"], -c["layer"]))
    cell = f"layer {best['layer']}, strength {best['strength']}"
    assert cell in result.verdict() and "layer" in result.summary()
    # the cell is chosen on the selection word's trials only: making the other word accept everywhere else moves
    # what is reported there, not which cell is chosen
    assert len(result.selection_concepts) == 1
    for t in result.trials:
        if t.concept not in result.selection_concepts and (t.layer, t.strength) != (best["layer"], best["strength"]):
            t.stance = "accepts"
    assert cell in result.verdict() and "1 selection words" in result.verdict()
    result.trials[0].answer = "<script>alert(1)</script>"
    page = result.save(tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert json.loads(result.save(tmp_path / "r.json").read_text())["trials"][0]["answer"] == \
        "<script>alert(1)</script>"


@pytest.mark.parametrize("kwargs, message", [
    (dict(concepts=["dog"]), "at least 2"),
    (dict(concepts=["dog", "table"]), "both a concept and a baseline"),
    (dict(layers=[3]), "layer 3 out of range"),
    (dict(strengths=[-1.0]), "strengths must be > 0"),
    (dict(start="all"), "start does not apply to the prefill protocol"),
    (dict(question="Why?"), "question does not apply to the prefill protocol"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(sentences=[]), "sentences must be"),
    (dict(sentences=["A dog and a cat."]), "every sentence contains"),
])
def test_bad_input_one_clear_error(llama, kwargs, message):
    options = dict(SMALL, layers=[1], strengths=[1.0], max_new_tokens=2)
    options.update(kwargs)
    with pytest.raises(lmscope.InputError, match=message) as info:
        prefill_trials(llama, **options)
    assert "\n" not in str(info.value)
    assert not llama.has_hooks()


def test_result_round_trip_keeps_config_and_transcripts(llama, tmp_path):
    result = prefill_trials(llama, layers=[1], strengths=[1.0], max_new_tokens=2, random_controls=False, **SMALL)
    assert result.random_controls == [] and result.config.random_controls is False
    loaded = Result.load(result.save(tmp_path / "r.json"))
    assert isinstance(loaded, PrefillResult) and loaded.to_json() == result.to_json()
    assert loaded.config.sentences == SMALL["sentences"] and loaded.sentences == result.sentences
    data = loaded.to_json()
    assert data["kind"] == "introspection_prefill" and data["protocol"] == "prefill"
    assert data["controls"][0]["transcript"].endswith("Assistant: " + result.controls[0].answer)
