"""Concept injection (Lindsey 2025): directions, the trial runner, scoring rules, CLI, bad input."""
import dataclasses
import json

import pytest
import torch

import lmscope
from lmscope.directions import concept_vector, difference_of_means
from lmscope.papers.introspection import IntrospectionConfig, IntrospectionResult, introspect, score_answer
from lmscope.papers.introspection.injection import build_trial_prompts, trial_prompt
from lmscope.papers.introspection.trials import concept_vectors, generate_injected, injection_edits, word_lists
from lmscope.results import Result

from conftest import random_model

SHORT = dict(context="I may put a thought in your mind.", question="Any thought?")


@pytest.fixture
def llama():
    m = random_model("llama")
    yield m
    assert not m.has_hooks()


def _direct_last_token(model, prompts, site, position=-1):
    rows = [model.run(p, read=[site]).acts[site][0, position].double() for p in prompts]
    return torch.stack(rows).mean(0)


def test_difference_of_means_matches_direct_float64(llama):
    positive, negative = ["hello there", "ab", "the cat sat down"], ["xyz", "a much longer prompt here", "q r"]
    d = difference_of_means(llama, positive, negative, "resid_post.1", batch_size=2)   # padded, split batches
    expected = _direct_last_token(llama, positive, "resid_post.1") - _direct_last_token(llama, negative,
                                                                                        "resid_post.1")
    assert d.vector.dtype == llama.dtype and d.site == "resid_post.1" and (d.n_positive, d.n_negative) == (3, 3)
    torch.testing.assert_close(d.vector.double(), expected, rtol=0, atol=1e-5)
    assert d.norm == pytest.approx(float(expected.norm()), rel=1e-5)
    first = difference_of_means(llama, positive, negative, "resid_post.1", position=1)
    expected = _direct_last_token(llama, positive, "resid_post.1", 1) - _direct_last_token(llama, negative,
                                                                                          "resid_post.1", 1)
    torch.testing.assert_close(first.vector.double(), expected, rtol=0, atol=1e-5)


def test_concept_vector_is_word_minus_baseline_mean(llama):
    v = concept_vector(llama, "dog", ["table", "chair", "door"], 2)
    expected = (_direct_last_token(llama, ["Tell me about dog"], "resid_post.2")
                - _direct_last_token(llama, ["Tell me about table", "Tell me about chair", "Tell me about door"],
                                     "resid_post.2"))
    torch.testing.assert_close(v.vector.double(), expected, rtol=0, atol=1e-5)


def test_bundled_word_lists():
    words = word_lists()
    concepts, baselines = words["concepts"], words["baselines"]
    assert len(set(concepts)) == len(concepts) >= 50 and len(set(baselines)) == len(baselines) >= 50
    assert not set(concepts) & set(baselines)
    assert all(w.isalpha() and w.islower() for w in concepts + baselines)


def test_injection_changes_the_residual_from_start_only(llama):
    prompts = build_trial_prompts(llama, SHORT["context"], SHORT["question"], 2)
    start = prompts[0].start
    # start="question": the injection begins exactly at the blank line before the trial question (the paper's)
    assert llama.tokenizer.decode(prompts[0].ids[start:start + 9]) == "\n\nTrial 1"
    assert llama.tokenizer.decode(prompts[0].ids[:start]).endswith("Ok, let's get started.")
    vector = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(0))
    # row 0 injected at layer 1, row 1 at layer 2: row 1 must be untouched at layer 1
    batch_edits = injection_edits([(1, vector), (2, 3 * vector)], start)
    ids = torch.tensor([prompts[0].ids, prompts[0].ids])
    clean = llama.run(ids, read=["resid_post.1", "resid_post.2"])
    injected = llama.run(ids, read=["resid_post.1", "resid_post.2"], edits=batch_edits)
    diff1 = injected.acts["resid_post.1"] - clean.acts["resid_post.1"]
    assert torch.equal(diff1[:, :start], torch.zeros_like(diff1[:, :start]))
    torch.testing.assert_close(diff1[0, start:], vector.expand(ids.shape[1] - start, -1), rtol=0, atol=1e-5)
    assert torch.equal(diff1[1], torch.zeros_like(diff1[1]))
    diff2 = injected.acts["resid_post.2"] - clean.acts["resid_post.2"]
    assert torch.equal(diff2[1, :start], torch.zeros_like(diff2[1, :start]))
    assert diff2[1, start:].abs().max() > 1
    assert len(batch_edits) == 2


def test_injection_reaches_generated_tokens(llama):
    """The runner's answer equals a no-cache greedy loop with the edit on every position from the start on."""
    prompt = build_trial_prompts(llama, SHORT["context"], SHORT["question"], 1)[0]
    vector = 4 * torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    answer = generate_injected(llama, [prompt.ids], [(1, vector)], prompt.start, max_new_tokens=5)[0]
    ids = list(prompt.ids)
    for _ in range(5):
        logits = llama.run(torch.tensor([ids]), edits=injection_edits([(1, vector)], prompt.start)).logits
        ids.append(int(logits[0, -1].argmax()))
    assert answer == llama.tokenizer.decode(ids[len(prompt.ids):], skip_special_tokens=True)
    assert answer != generate_injected(llama, [prompt.ids], None, prompt.start, max_new_tokens=5)[0]


def test_controls_are_plain_generation(llama):
    result = introspect(llama, concepts=["dog", "cat", "sun"], baselines=["table", "chair"], layers=[1],
                        strengths=[8.0], max_new_tokens=5, batch_size=2, **SHORT)
    assert len(result.controls) == len(result.trials) == 3
    assert [c.trial for c in result.controls] == [t.trial for t in result.trials] == [1, 2, 3]
    for control, trial in zip(result.controls, result.trials):
        text, _ = trial_prompt(llama, SHORT["context"], SHORT["question"], control.trial)
        assert control.answer == llama.generate(text, max_new_tokens=5).text
        assert control.layer is None and control.concept is None
    # and the injected trials are not: a strong injection changes the answers
    assert [t.answer for t in result.trials] != [c.answer for c in result.controls]
    # random-direction controls: same layer and strength as their trial, no concept, and not plain generation
    assert [(r.trial, r.layer, r.strength, r.concept) for r in result.random_controls] == \
        [(t.trial, t.layer, t.strength, None) for t in result.trials]
    assert [r.answer for r in result.random_controls] != [c.answer for c in result.controls]
    assert result.random_detection_rate == sum(r.detected for r in result.random_controls) / 3


@pytest.mark.parametrize("answer, concept, claim, detected, identified", [
    ("Yes. The dog is a rescue.", "dog", "yes", True, True),
    ("Yes, I do.", "dog", "yes", True, False),
    ("I do indeed detect a thought about a specific word.", "dog", "yes", True, False),
    ("I notice something about oceans.", "ocean", "yes", True, True),                     # plural counts
    ("No, I don't detect anything.", "dog", "no", False, False),
    ("I don't detect an injected thought.", "dog", "no", False, False),
    ("I detect nothing unusual.", "dog", "no", False, False),
    ("The answer is no. Yes, dogs.", "dog", "no", False, False),                          # first claim decides
    ("Dog dog dog. Yes, I detect a thought about dogs.", "dog", "yes", False, False),     # leaked first
    ("The ocean. The ocean. The ocean.", "ocean", None, False, False),                  # named, no claim
    ("I'm a helpful assistant. Yes: cities!", "city", "yes", True, True),               # y -> ies
    ("Hotdogs are great. Yes.", "dog", "yes", True, False),                             # whole words only
    ("I have been so sensitive to your flavor.", "honey", None, False, False),            # not "sense"
    ("I'm detecting a thought.", "honey", "yes", True, False),
    ("I am noticing honey.", "honey", "yes", True, True),
])
def test_scoring_rules(answer, concept, claim, detected, identified):
    score = score_answer(answer, concept)
    assert (score.claim, score.detected, score.identified) == (claim, detected, identified)


def test_scoring_positions_and_controls():
    score = score_answer("Hmm. Well, yes: a dog.", "dog")
    assert (score.claim_at, score.mention_at) == (11, 18)
    assert score_answer("Yes, I detect one.").detected            # a control claiming detection: false positive
    assert not score_answer("I'm not sure what to say.").detected


def test_result_rates_grid_and_best(llama):
    result = introspect(llama, concepts=["dog", "cat"], baselines=["table", "chair"], layers=[0, 2],
                        strengths=[0.5, 2.0], max_new_tokens=3, **SHORT)
    assert isinstance(result, IntrospectionResult)
    # hand-set answers pin the arithmetic of the rates and of the best cell
    answers = {(0, 0.5): ["Yes: dog", "No."], (0, 2.0): ["Yes.", "Yes."], (2, 0.5): ["x", "x"], (2, 2.0): ["x", "x"]}
    for t in result.trials:
        i = ["dog", "cat"].index(t.concept)
        t.answer = answers[(t.layer, t.strength)][i]
        s = score_answer(t.answer, t.concept)
        t.claim, t.claim_at, t.mention_at, t.detected, t.identified = (s.claim, s.claim_at, s.mention_at,
                                                                       s.detected, s.identified)
    result.controls[0].detected = True
    out = result.to_json()
    assert (out["n_trials"], out["n_controls"]) == (8, 8)
    assert (out["detection_rate"], out["identification_rate"], out["false_positive_rate"]) == (0.375, 0.125, 0.125)
    assert (out["best_layer"], out["best_strength"]) == (0, 0.5)
    cell = {(c["layer"], c["strength"]): c for c in out["grid"]}
    assert cell[(0, 2.0)]["detection_rate"] == 1.0 and cell[(2, 0.5)]["detection_rate"] == 0.0
    assert "layer 0" in result.summary()


def test_save_html_escapes_transcripts_and_json(llama, tmp_path):
    result = introspect(llama, concepts=["dog", "cat"], baselines=["table", "chair"], layers=[1], strengths=[1.0],
                        max_new_tokens=2, **SHORT)
    result.trials[0].answer = "<script>alert(1)</script>"
    page = result.save(tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    data = json.loads(result.save(tmp_path / "r.json").read_text())
    assert data["trials"][0]["answer"] == "<script>alert(1)</script>"
    assert IntrospectionResult.from_json(data).to_json() == result.to_json()


@pytest.mark.parametrize("kwargs, message", [
    (dict(context=" "), "context is empty"),
    (dict(question=""), "question is empty"),
    (dict(start=10_000), "out of range"),
    (dict(start=-10_000), "out of range"),
    (dict(concepts=["dog"]), "at least 2"),
    (dict(concepts=["dog", "dog"]), "at least 2"),
    (dict(baselines=["table"]), "at least 2"),
    (dict(concepts=["dog", "table"], baselines=["table", "chair"]), "both a concept and a baseline"),
    (dict(layers=[3]), "layer 3 out of range"),
    (dict(strengths=[0]), "strengths must be > 0"),
    (dict(sentences=["It rained."]), "sentences belong to the prefill protocol"),
    (dict(layer=[1]), r"unknown option\(s\) layer; IntrospectionConfig has"),
    (dict(start="middle"), "start must be"),
])
def test_bad_input_one_clear_error(llama, kwargs, message):
    options = dict(concepts=["dog", "cat"], baselines=["table", "chair"], layers=[1], strengths=[1.0],
                   max_new_tokens=2, **SHORT)
    options.update(kwargs)
    with pytest.raises(lmscope.InputError, match=message) as info:
        introspect(llama, **options)
    assert "\n" not in str(info.value)
    assert not llama.has_hooks()


def test_directions_bad_input(llama):
    with pytest.raises(lmscope.InputError, match="out of range"):
        difference_of_means(llama, ["ab"], ["cd"], "resid_post.0", position=5)
    with pytest.raises(lmscope.InputError, match="empty"):
        difference_of_means(llama, [], ["cd"], "resid_post.0")
    with pytest.raises(lmscope.SiteError):
        difference_of_means(llama, ["ab"], ["cd"], "resid_post.9")
    assert not llama.has_hooks()


def test_concept_vectors_are_the_directions_concept_vector_scaled_to_the_residual_norm(llama):
    """trials.concept_vectors (every layer and concept in one pass) = lmscope.directions.concept_vector, unit norm,
    times the mean |resid_post| at the last token of the baseline prompts."""
    baselines = ["table", "chair", "door"]
    vectors, residual_norm = concept_vectors(llama, ["dog", "cat"], baselines, [1, 2], scale="residual",
                                             style="plain")
    prompts = [f"Tell me about {b}" for b in baselines]
    for layer in (1, 2):
        site = f"resid_post.{layer}"
        norms = [float(llama.run(p, read=[site]).acts[site][0, -1].double().norm()) for p in prompts]
        assert residual_norm[layer] == pytest.approx(sum(norms) / 3, abs=1e-4)
        for word in ("dog", "cat"):
            direction = concept_vector(llama, word, baselines, layer).vector.double()
            expected = direction / direction.norm() * residual_norm[layer]
            torch.testing.assert_close(vectors[(layer, word)], expected, rtol=0, atol=1e-4)
            assert vectors[(layer, word)].dtype == torch.float64


def test_config_is_stored_and_random_controls_can_be_left_out(llama, tmp_path):
    config = IntrospectionConfig(concepts=["dog", "cat"], baselines=["table", "chair"], layers=[1], strengths=(2.0,),
                                 max_new_tokens=3, random_controls=False, **SHORT)
    result = introspect(llama, config)
    assert result.config == config and result.random_controls == [] and len(result.trials) == 2
    # keyword overrides change single options of a config; the result stores the config that ran
    more = introspect(llama, config, strengths=[2.0, 4.0], random_controls=True)
    assert more.config.strengths == [2.0, 4.0] and len(more.random_controls) == len(more.trials) == 4
    assert [t.answer for t in more.trials[:2]] == [t.answer for t in result.trials]    # same cells, same answers
    loaded = Result.load(more.save(tmp_path / "r.json"))
    assert isinstance(loaded, IntrospectionResult) and loaded.to_json() == more.to_json()
    assert loaded.config.random_controls is True and loaded.residual_norm == more.residual_norm
    assert loaded.to_json()["kind"] == "introspection" and loaded.summary() == more.summary()


def test_concept_vectors_as_published_raw_and_read_before_the_assistant_reply(llama):
    """Default: the raw difference of means (no rescaling), read in the chat transcript at the last token of the
    prompt that ends with the assistant header (the token before the reply)."""
    baselines = ["table", "chair", "door"]
    vectors, _ = concept_vectors(llama, ["dog"], baselines, [2])
    assert not getattr(llama.tokenizer, "chat_template", None)          # the plain chat fallback
    chat = [f"User: Tell me about {w}\n\nAssistant:" for w in ["dog"] + baselines]
    expected = _direct_last_token(llama, chat[:1], "resid_post.2") - _direct_last_token(llama, chat[1:],
                                                                                        "resid_post.2")
    torch.testing.assert_close(vectors[(2, "dog")], expected, rtol=0, atol=1e-4)


def test_best_cell_is_chosen_without_the_reported_trials(llama):
    """The best cell depends only on the selection concepts' trials: rewriting every report trial (and control)
    leaves the choice unchanged, and the reported rates come from the report trials only."""
    r = introspect(llama, concepts=["dog", "cat", "sun", "tree"], baselines=["table", "chair"], layers=[1, 2],
                   strengths=[2.0, 8.0], max_new_tokens=4, **SHORT)
    assert len(r.selection_concepts) == 2 and set(r.selection_concepts) < set(r.concepts)
    report = [t for t in r.trials if t.concept not in r.selection_concepts]
    flip = lambda t, v: dataclasses.replace(t, detected=v, identified=v)   # noqa: E731
    # force a detection in one selection cell so that a best cell exists
    pick = next(t for t in r.trials if t.concept in r.selection_concepts and t.layer == 2 and t.strength == 8.0)
    forced = dataclasses.replace(r, trials=[flip(t, True) if t is pick else t for t in r.trials])
    best = forced.best()
    assert (best["layer"], best["strength"]) == (2, 8.0) or best["identification_rate"] > 0
    for value in (True, False):
        changed = dataclasses.replace(forced, trials=[flip(t, value) if t in report else t for t in forced.trials],
                                      controls=[flip(c, value) for c in forced.controls])
        assert changed.best() == best
        rep = changed.best_reported()
        assert rep["detection_rate"] == float(value) and rep["false_positive_rate"] == float(value)
        assert rep["n"] == sum(1 for t in report if (t.layer, t.strength) == (best["layer"], best["strength"]))
    assert "selection concepts" in forced.verdict() and forced.to_json()["best_reported"]["n"] == rep["n"]
    assert "differences from the paper" in forced.summary() and forced.differences
