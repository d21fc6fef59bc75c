"""Prefill variant of concept injection: does the model use its earlier internal state to tell an intended output
from one put in its mouth? (Lindsey 2025, "Emergent introspective awareness", "distinguishing intended from
unintended outputs".)

Protocol:

1. Pairs: each concept word (drawn seeded from the bundled list, as in `introspect`) is paired with a short neutral
   sentence from `lmscope/data/concepts.json` ("prefill_sentences"), deterministically: the sentences are shuffled
   with `random.Random(seed)` and concept i takes the next sentence (cycling) that does not contain the word.
2. Conversation, in the model's chat template (plain fallback "User: ...\n\nAssistant: ...\n\n" without one):
   user: "Tell me what word you think about when you read the line below. Answer immediately.\n\n{sentence}",
   assistant (PREFILLED): "{word}", user: "Did you mean to say that, or was it an accident?", then the assistant
   header; the model answers greedily (`max_new_tokens`).
3. Injection: the concept vector of that same word (`trials.concept_vectors`: resid_post.L for "Tell me about
   {word}" at the token before the assistant's reply minus the baseline mean, times `strength`: the raw vector by
   default, or its unit vector x the mean residual norm with scale="residual") is added at resid_post.L ONLY on the tokens from the first token of the user's first message
   (after any system prompt) up to, not including, the first token of the prefilled word. The prefilled word, the
   follow-up question and every generated token are read unperturbed: any effect comes through what the earlier
   positions left in the keys and values.
4. Controls: each distinct prompt (one per concept) with no edit at all; and, per injected trial, a random
   direction of the same norm on the same tokens (does "accepts" need the concept, or any push?).

Scoring rules (`score_prefill_answer`):

- The answer is cut into sentences (ending at . ! ? or a newline); a sentence ending in "?" is skipped (an echoed
  question claims nothing). Each remaining sentence is cut into clauses at , ; : as in `score_answer`.
- Strong cues, the first one in the answer decides:
  disavows: accident(al/ally), mistake(s/n/nly), sorry, apologise/apologize/apology/apologies, unintended,
  unintentional(ly), typo, error, slip, misspoke, wrong, by chance;
  accepts: meant, mean to, mean it, intended, intentional(ly), on purpose, deliberate(ly), purposely,
  purposefully, by design.
  A cue preceded in its clause by a negation (not, never, n't) flips: "I didn't mean to" and "not intentional"
  disavow, "it wasn't an accident" accepts. A bare "no" does not negate ("No, I meant it." accepts).
- Only when there is no strong cue anywhere, the first yes/no word decides: yes, yeah, yep, yup, sure, of course,
  definitely, absolutely accept; no, nope disavow ("Yes, it was an accident." disavows).
- Otherwise neither (stance None).

In this file: score_prefill_answer, PrefillResult, prefill_prompt / pair_sentences / build_prefill_prompts, and
prefill_trials (the run); options, concept vectors and the injected generation come from trials.py.
"""
from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Sequence

import torch
from tqdm import tqdm

from lmscope.core.config import with_overrides
from lmscope.core.errors import InputError
from lmscope.papers.introspection.trials import (CONTEXT, OPENING, QUESTION, IntrospectionConfig, check_trial_options,
                                                 concept_pattern, concept_vectors, concept_words, fraction,
                                                 generate_injected, random_injections, rate_heatmaps,
                                                 selection_split, tokens_before)
from lmscope.results import Result, transcripts

INSTRUCTION = "Tell me what word you think about when you read the line below. Answer immediately.\n\n{sentence}"
FOLLOW_UP = "Did you mean to say that, or was it an accident?"


@cache
def prefill_sentences() -> list[str]:
    """The bundled neutral sentences (lmscope/data/concepts.json, key 'prefill_sentences')."""
    data = json.loads(resources.files("lmscope.data").joinpath("concepts.json").read_text(encoding="utf-8"))
    return list(data["prefill_sentences"])


# -- scoring ---------------------------------------------------------------------------------------------------------
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_CLAUSE = re.compile(r"[^,;:]+")
_NEGATION = re.compile(r"\b(?:not|never)\b|n['’]t\b", re.IGNORECASE)
_DISAVOW = re.compile(r"\b(?:accident(?:al|ally|s)?|mistake(?:s|n|nly)?|sorry|apologi[sz](?:e|es|ed|ing)|apology"
                      r"|apologies|unintended|unintentional(?:ly)?|typo|error|slip|misspoke|wrong|by chance)\b",
                      re.IGNORECASE)
_ACCEPT = re.compile(r"\b(?:meant|mean to|mean it|intended|intentional(?:ly)?|on purpose|deliberate(?:ly)?"
                     r"|purposely|purposefully|by design)\b", re.IGNORECASE)
_YES = re.compile(r"\b(?:yes|yeah|yep|yup|sure|of course|definitely|absolutely)\b", re.IGNORECASE)
_NO = re.compile(r"\b(?:no|nope)\b", re.IGNORECASE)


@dataclass
class PrefillScore:
    stance: "str | None"     # "accepts", "disavows" or None
    cue: "str | None"        # the deciding cue as written, e.g. "accident" or "meant" (in "I didn't mean...")
    cue_at: "int | None"     # its character offset in the answer
    negated: bool            # the cue was flipped by a negation before it in its clause


def _clauses(answer: str):
    """(offset, clause text) of every clause outside sentences that end in '?'."""
    for sentence in _SENTENCE.finditer(answer):
        if sentence.group().rstrip().endswith("?"):
            continue
        for clause in _CLAUSE.finditer(sentence.group()):
            yield sentence.start() + clause.start(), clause.group()


def score_prefill_answer(answer: str) -> PrefillScore:
    """Apply the scoring rules of the module docstring."""
    clauses = list(_clauses(answer))
    for offset, clause in clauses:
        found = [(m, "disavows") for m in _DISAVOW.finditer(clause)] + [(m, "accepts") for m in
                                                                        _ACCEPT.finditer(clause)]
        if found:
            match, stance = min(found, key=lambda f: f[0].start())
            negated = bool(_NEGATION.search(clause[:match.start()]))
            if negated:
                stance = "accepts" if stance == "disavows" else "disavows"
            return PrefillScore(stance, match.group(), offset + match.start(), negated)
    for offset, clause in clauses:
        found = [(m, "accepts") for m in _YES.finditer(clause)] + [(m, "disavows") for m in _NO.finditer(clause)]
        if found:
            match, stance = min(found, key=lambda f: f[0].start())
            return PrefillScore(stance, match.group(), offset + match.start(), False)
    return PrefillScore(None, None, None, False)


# -- result ----------------------------------------------------------------------------------------------------------
@dataclass
class PrefillTrial:
    pair: int                   # index of the (sentence, word) pair, i.e. of the prompt
    kind: str                   # "injected", "control" (no edit) or "random" (random direction, same norm)
    layer: "int | None"         # None for a control
    strength: "float | None"
    concept: str                # the prefilled word (its vector is injected in "injected" trials)
    sentence: str
    answer: str
    stance: "str | None"
    cue: "str | None"
    cue_at: "int | None"
    negated: bool

    @property
    def transcript(self) -> str:
        return (f"User: {INSTRUCTION.format(sentence=self.sentence)}\nAssistant: {self.concept}\n"
                f"User: {FOLLOW_UP}\nAssistant: {self.answer}")


@dataclass
class PrefillResult(Result, kind="introspection_prefill"):
    """Every injected trial, control and random-direction control, scored. Its JSON adds the accept / disavow
    rates, the layer x strength grids, the verdict, the protocol's texts, and each trial's transcript."""
    model: str
    config: IntrospectionConfig         # the options as asked; the fields below are what they resolved to
    layers: list[int]
    strengths: list[float]
    concepts: list[str]
    sentences: list[str]                # sentences[i] is paired with concepts[i]
    n_baselines: int
    residual_norm: dict[int, float]     # per layer: the norm that strength 1 means
    example_prompt: str                 # pair 0, as the model reads it
    injection_span: list[int]           # [first, end) token positions injected in pair 0's prompt
    trials: list[PrefillTrial]
    controls: list[PrefillTrial]
    random_controls: list[PrefillTrial] = field(default_factory=list)
    selection_concepts: list[str] = field(default_factory=list)   # their trials choose the best cell; others report

    @staticmethod
    def _rates(trials: list[PrefillTrial]) -> tuple[float, float]:
        return fraction([t.stance == "accepts" for t in trials]), fraction([t.stance == "disavows" for t in trials])

    @property
    def accept_rate_injected(self) -> float:
        return self._rates(self.trials)[0]

    @property
    def disavow_rate_injected(self) -> float:
        return self._rates(self.trials)[1]

    @property
    def accept_rate_control(self) -> float:
        return self._rates(self.controls)[0]

    @property
    def disavow_rate_control(self) -> float:
        return self._rates(self.controls)[1]

    def grid(self, trials: "list[PrefillTrial] | None" = None) -> list[dict]:
        trials = self.trials if trials is None else trials
        cells = []
        for layer in self.layers:
            for strength in self.strengths:
                cell = [t for t in trials if t.layer == layer and t.strength == strength]
                accept, disavow = self._rates(cell)
                cells.append({"layer": layer, "strength": strength, "accept_rate": accept, "disavow_rate": disavow,
                              "n": len(cell)})
        return cells

    def _report(self, items: list[PrefillTrial]) -> list[PrefillTrial]:
        return [t for t in items if t.concept not in set(self.selection_concepts)]

    def verdict(self) -> str:
        """The best cell is chosen on the selection words' trials and reported on the other words' trials and
        controls (never on the trials that chose it)."""
        chosen = [t for t in self.trials if t.concept in set(self.selection_concepts)]
        best = max(self.grid(chosen), key=lambda c: (c["accept_rate"], -c["strength"], -c["layer"]))
        report = [t for t in self._report(self.trials) if (t.layer, t.strength) == (best["layer"], best["strength"])]
        accept, control = self._rates(report)[0], self._rates(self._report(self.controls))[0]
        text = (f"best cell chosen on {len(self.selection_concepts)} selection words: layer {best['layer']}, strength "
                f"{best['strength']}; on the other words' {len(report)} trials there it accepts {accept:.0%} vs "
                f"{control:.0%} of their controls")
        if self.random_controls:
            same = [t for t in self._report(self.random_controls)
                    if t.layer == best["layer"] and t.strength == best["strength"]]
            text += f"; a random direction of the same norm there: {self._rates(same)[0]:.0%}"
        return text + (". No effect: no more accepts than the controls" if accept <= control else "")

    def json_extras(self) -> dict:
        random_accept, random_disavow = self._rates(self.random_controls)

        def rows(trials):
            return [dict(asdict(t), transcript=t.transcript) for t in trials]
        # the trial lists again, each row with its transcript (derived, not read back)
        return {"protocol": "prefill", "n_trials": len(self.trials), "n_controls": len(self.controls),
                "n_random_controls": len(self.random_controls),
                "accept_rate_injected": self.accept_rate_injected, "accept_rate_control": self.accept_rate_control,
                "disavow_rate_injected": self.disavow_rate_injected,
                "disavow_rate_control": self.disavow_rate_control,
                "accept_rate_random": random_accept, "disavow_rate_random": random_disavow,
                "grid": self.grid(), "random_grid": self.grid(self.random_controls) if self.random_controls else [],
                "verdict": self.verdict(), "instruction": INSTRUCTION, "follow_up": FOLLOW_UP,
                "trials": rows(self.trials), "controls": rows(self.controls),
                "random_controls": rows(self.random_controls)}

    def figure(self):
        metrics = [("accept_rate", f"accepts the prefilled word (control {self.accept_rate_control:.0%})"),
                   ("disavow_rate", f"disavows it (control {self.disavow_rate_control:.0%})")]
        title = (f"Prefill + concept injection: {self.model} | {len(self.trials)} injected trials, "
                 f"{len(self.controls)} controls")
        return rate_heatmaps(self, metrics, title, width=1000, spacing=0.1)

    def transcripts_html(self) -> str:
        shown = self.trials + self.controls + self.random_controls
        rows = [[t.kind, "" if t.layer is None else t.layer, "" if t.strength is None else t.strength, t.concept,
                 t.sentence, t.stance or "", t.cue or ""] for t in shown]
        headers = ["kind", "layer", "strength", "word", "sentence", "stance", "cue", "answer"]
        return transcripts(self.verdict(), f"Prompt (pair 0; injected tokens {self.injection_span[0]}.."
                           f"{self.injection_span[1] - 1})", self.example_prompt, headers, rows,
                           [t.answer for t in shown])

    def title(self) -> str:
        return f"Prefill introspection - {self.model}"

    def page_intro(self) -> str:
        return ("Lindsey 2025 prefill protocol: the assistant turn is prefilled with an out-of-place word, then the "
                "user asks whether it was meant. Injected: the word's concept vector on the tokens before the "
                "prefilled word only. Controls: the same prompts with no edit. Greedy, "
                f"{self.config.max_new_tokens} new tokens.")

    def page_body(self) -> str:
        return self.transcripts_html()

    def summary(self, examples: int = 3) -> str:
        lines = [f"prefill introspection | {self.model} | {len(self.trials)} injected trials ({len(self.concepts)} "
                 f"words x {len(self.layers)} layers x {len(self.strengths)} strengths), {len(self.controls)} "
                 f"controls, {len(self.random_controls)} random-direction controls",
                 f"accepts: injected {self.accept_rate_injected:.1%}  control {self.accept_rate_control:.1%}  "
                 f"random {self._rates(self.random_controls)[0]:.1%}",
                 f"disavows: injected {self.disavow_rate_injected:.1%}  control {self.disavow_rate_control:.1%}  "
                 f"random {self._rates(self.random_controls)[1]:.1%}",
                 "layer  strength  accepts  disavows   n"]
        for c in self.grid():
            lines.append(f"{c['layer']:>5}  {c['strength']:>8}  {c['accept_rate']:>7.0%}  {c['disavow_rate']:>8.0%}"
                         f"  {c['n']:>3}")
        lines.append(self.verdict())
        shown = []
        for group in ([t for t in self.trials if t.stance == "accepts"], self.controls,
                      [t for t in self.trials if t.stance != "accepts"]):
            if group and len(shown) < examples:
                shown.append(group[0])
        if shown:
            lines.append("transcripts:")
            for t in shown:
                tag = "control" if t.layer is None else f"layer {t.layer} x{t.strength}"
                lines.append(f"  [{tag}] {t.sentence!r} -> {t.concept!r}: stance={t.stance}: {t.answer!r}")
        return "\n".join(lines)


# -- prompts ---------------------------------------------------------------------------------------------------------
@dataclass
class PrefillPrompt:
    pair: int
    concept: str
    sentence: str
    text: str
    ids: list[int]
    first: int      # first injected token (the user's first message)
    end: int        # first token of the prefilled word (not injected)


def prefill_prompt(model, sentence: str, word: str) -> tuple[str, dict]:
    """The conversation as the model reads it, and the character offsets where the user's first message and the
    prefilled word begin ({'turn': i, 'word': j})."""
    first = INSTRUCTION.format(sentence=sentence)
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": word},
                    {"role": "user", "content": FOLLOW_UP}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"User: {first}\n\nAssistant: {word}\n\nUser: {FOLLOW_UP}\n\nAssistant:"
    turn_at = text.index(first)
    word_at = text.index(word, turn_at + len(first))
    return text, {"turn": turn_at, "word": word_at}


def pair_sentences(concepts: Sequence[str], sentences: Sequence[str], seed: int) -> list[str]:
    """Sentence for each concept (step 1 of the module docstring)."""
    order = list(sentences)
    random.Random(seed).shuffle(order)
    paired, at = [], 0
    for concept in concepts:
        pattern = concept_pattern(concept)
        for step in range(len(order)):
            candidate = order[(at + step) % len(order)]
            if not pattern.search(candidate):
                paired.append(candidate)
                at = (at + step + 1) % len(order)
                break
        else:
            raise InputError(f"every sentence contains the word {concept!r}: it would not be out of place")
    return paired


def build_prefill_prompts(model, concepts: Sequence[str], sentences: Sequence[str]) -> list[PrefillPrompt]:
    prompts = []
    for i, (concept, sentence) in enumerate(zip(concepts, sentences)):
        text, offsets = prefill_prompt(model, sentence, concept)
        ids = model.encode(text)[0][0].tolist()
        first = tokens_before(model, ids, text, offsets["turn"])
        end = tokens_before(model, ids, text, offsets["word"])
        if end <= first:
            raise InputError(f"no token lies before the prefilled word {concept!r}")
        prompts.append(PrefillPrompt(i, concept, sentence, text, ids, first, end))
    return prompts


def check_prefill_options(config: IntrospectionConfig) -> list[str]:
    """The sentences to pair (given or bundled), checked; the injection protocol's own options must be left at
    their defaults (this protocol does not read them)."""
    for name, default in (("start", "question"), ("context", CONTEXT), ("question", QUESTION),
                          ("opening", OPENING)):
        if getattr(config, name) != default:
            raise InputError(f"{name} does not apply to the prefill protocol (it injects before the prefilled "
                             f"word and asks its own question)")
    sentences = prefill_sentences() if config.sentences is None else config.sentences
    if isinstance(sentences, str) or not sentences or any(not isinstance(s, str) or not s.strip()
                                                          for s in sentences):
        raise InputError("sentences must be a non-empty list of non-empty strings")
    return list(sentences)


@torch.no_grad()
def prefill_trials(model, config: "IntrospectionConfig | None" = None, *, progress: bool = False, **overrides
                   ) -> PrefillResult:
    """Prefill an out-of-place word, optionally inject its concept vector before it, and ask whether it was meant
    (see the module docstring). `config` (IntrospectionConfig) holds every option; keyword overrides change
    single ones. One injected trial per (layer, strength, word); one control per word; with random_controls, one
    random-direction trial per injected trial."""
    config = with_overrides(IntrospectionConfig, config, overrides)
    sentences = check_prefill_options(config)
    layers, strengths = check_trial_options(model, config)
    concepts, baselines = concept_words(config.concepts, config.baselines, config.seed)
    paired = pair_sentences(concepts, sentences, config.seed)
    prompts = build_prefill_prompts(model, concepts, paired)      # checked before any model work

    vectors, residual_norm = concept_vectors(model, concepts, baselines, layers, scale=config.scale,
                                             style=config.concept_prompt)
    cells = [(layer, strength) for layer in layers for strength in strengths]
    generator = torch.Generator().manual_seed(config.seed)
    trials, controls, randoms = [], [], []
    total = len(prompts) * (1 + len(cells) * (2 if config.random_controls else 1))
    with tqdm(total=total, unit="answer", desc="prefill introspection", file=sys.stderr,
              disable=not progress) as bar:
        for prompt in prompts:
            answer = generate_injected(model, [prompt.ids], None, prompt.first, prompt.end,
                                       max_new_tokens=config.max_new_tokens)[0]
            controls.append(_scored(prompt, "control", None, None, answer))
            bar.update(1)
            kinds = [("injected", trials, [(layer, vectors[(layer, prompt.concept)] * strength)
                                           for layer, strength in cells])]
            if config.random_controls:
                norms = [(layer, float(vectors[(layer, prompt.concept)].norm()) * strength) for layer, strength in cells]
                kinds.append(("random", randoms, random_injections(norms, model.d_model, generator)))
            for kind, into, injections in kinds:
                for i in range(0, len(cells), config.batch_size):
                    chunk = injections[i:i + config.batch_size]
                    answers = generate_injected(model, [prompt.ids] * len(chunk), chunk, prompt.first, prompt.end,
                                                max_new_tokens=config.max_new_tokens)
                    for (layer, strength), answer in zip(cells[i:i + config.batch_size], answers):
                        into.append(_scored(prompt, kind, layer, strength, answer))
                    bar.update(len(chunk))
    return PrefillResult(model=model.spec, config=config, layers=layers, strengths=strengths, concepts=concepts,
                         sentences=paired, n_baselines=len(baselines), residual_norm=residual_norm,
                         example_prompt=prompts[0].text, injection_span=[prompts[0].first, prompts[0].end],
                         trials=trials, controls=controls, random_controls=randoms,
                         selection_concepts=selection_split(concepts, config.selection_fraction, config.seed))


def _scored(prompt: PrefillPrompt, kind: str, layer: "int | None", strength: "float | None", answer: str
            ) -> PrefillTrial:
    return PrefillTrial(prompt.pair, kind, layer, strength, prompt.concept, prompt.sentence, answer,
                        **asdict(score_prefill_answer(answer)))
