"""Concept injection: does the model notice a thought put into its residual stream? (Lindsey 2025, "Emergent
introspective awareness".)

Protocol, as in the paper:

1. Concept vector, per word and layer (`trials.concept_vectors`): the residual stream (resid_post.L) for the user
   message "Tell me about {word}", read in the chat transcript at the token before the assistant's reply, minus
   its mean over the baseline words. Strength s injects s x that raw vector (scale="raw", the paper's; strengths
   1, 2, 4, 8 by default); scale="residual" (the earlier default) injects s x its unit vector x the mean
   |resid_post.L| of the baseline prompts (strengths 0.125, 0.25, 0.5).
2. Trial prompt, in the model's chat template, in the paper's words: the user explains the experiment
   (`context`), the assistant says "Ok.", the user says "Ok, let's get started.\n\nTrial {n}: Do you detect an
   injected thought? If so, what is the injected thought about?". A tokenizer without a chat template gets a
   plain fallback: "User: {context}\n\nAssistant: Ok.\n\nUser: {opening}\n\nTrial {n}: {question}\n\nAssistant:".
3. Injection: `lmscope.add` at resid_post.L, from a chosen position to the end of generation, at every generated
   token. `start="question"` (default, the paper's choice) starts at the blank line before "Trial {n}", so the
   setup text is read unperturbed; "assistant" starts at the assistant header; "all" at position 0; an int is a
   token position in the prompt (negative counts back from its last token).
4. Greedy generation of `max_new_tokens` tokens: deterministic; `seed` only picks the concepts from the bundled list.
5. Controls: one per injected trial, the very same prompt (same trial number) with no edit at all. Trial numbers
   run 1..n_trials, so the controls are n distinct prompts, not one greedy answer counted n times.
6. The best (layer, strength) cell is chosen on the trials of a seeded half of the concepts (selection) and its
   rates are reported on the trials of the other concepts and their controls only.

Every known difference from the paper is listed in the result (`DIFFERENCES`, in its JSON, summary and page).

Scoring rules (`score_answer`, applied to the generated answer):

- The answer is cut into clauses at . , ; : ! ? and newlines. The first clause holding a detection cue decides the
  claim: "no" if that clause holds a negation (no, not, n't, nothing, none, never, nope, cannot, unable), else "yes"
  if it holds an affirmation ("yes"/"yeah"/"yep"; "I ... detect/notice/sense/perceive/feel" in any inflection, as
  whole words: "sensitive" is not "sense"; "there is/was/seems to be a ... thought"). Clauses with neither are
  skipped; an answer with no such clause makes no claim (None).
- Mention: the first whole-word, case-insensitive occurrence of the concept or a plural of it (+s, +es, y->ies).
- Detected (injected trial): the claim is "yes" AND it comes before the concept leaks into the answer, i.e. the
  affirmation starts before the first mention (or there is none). An answer that says the word first ("Ocean. Yes,
  I detect it.") is not a detection: the injection may just have steered the model into saying the word, after
  which it can read its own output.
- Identified: detected AND the concept is mentioned (necessarily after the claim).
- False positive (control): the claim is "yes".

A 135M model is not expected to introspect; the result reports what it does, including how often injection makes
the model say the concept at all (`mention_rate`, steering without any claim of noticing).

In this file: score_answer (the rules above), IntrospectionResult, trial_prompt / build_trial_prompts (the prompts
and where each injection starts), introspect (the run). Options, concept vectors and the injected generation are
shared with the prefill protocol (trials.py).
"""
from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from lmscope.core.config import with_overrides
from lmscope.core.errors import InputError
from lmscope.core.models.sites import resolve_position
from lmscope.papers.introspection.trials import (CONTEXT, OPENING, QUESTION, STARTS, IntrospectionConfig,
                                                 check_trial_options, concept_pattern, concept_vectors, concept_words,
                                                 fraction, generate_injected, random_injections, rate_heatmaps,
                                                 selection_split, tokens_before)

DIFFERENCES = (
    "greedy decoding of max_new_tokens tokens (the paper samples at temperature 1)",
    "trial numbers run 1..n so that greedy controls are distinct prompts (the paper always asks 'Trial 1')",
    "answers scored by fixed rules (score_answer), not by a language-model grader",
    "concept and baseline words written for this project (lmscope/data/concepts.json), not the paper's lists",
    "a few layers (default a quarter, a half, two thirds of the depth), not a sweep over every layer",
    "the best cell is chosen on half the concepts and reported on the other half (the paper reports curves over "
    "layers and strengths)",
)
from lmscope.results import Result, transcripts


# -- scoring ---------------------------------------------------------------------------------------------------------
_CLAUSE = re.compile(r"[^.,;:!?\n]+")
_NEGATION = re.compile(r"\b(?:no|not|nothing|none|never|nope|cannot|unable)\b|n['’]t\b", re.IGNORECASE)
_AFFIRMATION = re.compile(r"\b(?:yes|yeah|yep)\b"
                          r"|\bi\b.*?\b(?:detect(?:s|ed|ing)?|notic(?:e|es|ed|ing)|sens(?:e|es|ed|ing)"
                          r"|perceiv(?:e|es|ed|ing)|feel(?:s|ing)?)\b"
                          r"|\bthere (?:is|was|seems to be) (?:an?|some)\b.*?\bthoughts?\b", re.IGNORECASE)


@dataclass
class Score:
    claim: "str | None"        # "yes", "no", or None (no detection statement)
    claim_at: "int | None"     # character offset of the deciding affirmation / negation
    mention_at: "int | None"   # character offset of the first mention of the concept
    detected: bool
    identified: bool


def score_answer(answer: str, concept: "str | None" = None) -> Score:
    """Apply the scoring rules of the module docstring; `concept` None scores a control."""
    claim, claim_at = None, None
    for clause in _CLAUSE.finditer(answer):
        negation = _NEGATION.search(clause.group())
        affirmation = _AFFIRMATION.search(clause.group())
        if negation:
            claim, claim_at = "no", clause.start() + negation.start()
            break
        if affirmation:
            claim, claim_at = "yes", clause.start() + affirmation.start()
            break
    mention = concept_pattern(concept).search(answer) if concept else None
    mention_at = mention.start() if mention else None
    detected = claim == "yes" and (mention_at is None or claim_at < mention_at)
    return Score(claim, claim_at, mention_at, detected, detected and mention_at is not None)


# -- result ----------------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    trial: int                  # the number in the prompt ("Trial 7: ..."); a control shares it with its trial
    layer: "int | None"         # None for a control
    strength: "float | None"
    concept: "str | None"
    answer: str
    claim: "str | None"
    claim_at: "int | None"
    mention_at: "int | None"
    detected: bool
    identified: bool


@dataclass
class IntrospectionResult(Result, kind="introspection"):
    """Every trial, control and random-direction control, scored. Its JSON adds the rates, the layer x strength
    grid, the best cell and the verdict; best_layer and best_strength are null when no injected trial was
    detected."""
    model: str
    config: IntrospectionConfig         # the options as asked; the fields below are what they resolved to
    layers: list[int]
    strengths: list[float]
    concepts: list[str]
    n_baselines: int
    residual_norm: dict[int, float]     # per layer: the norm that strength 1 means
    example_prompt: str                 # trial 1, as the model reads it
    injection_start: int                # token position where injection starts in trial 1's prompt
    trials: list[Trial]
    controls: list[Trial]
    # the same layer and strength, a random direction instead of the concept: does "yes" need the concept at all?
    random_controls: list[Trial] = field(default_factory=list)
    selection_concepts: list[str] = field(default_factory=list)   # their trials choose the best cell; others report
    differences: list[str] = field(default_factory=lambda: list(DIFFERENCES))

    # rates -------------------------------------------------------------------------------------------------------
    @property
    def detection_rate(self) -> float:
        return fraction([t.detected for t in self.trials])

    @property
    def identification_rate(self) -> float:
        return fraction([t.identified for t in self.trials])

    @property
    def mention_rate(self) -> float:
        return fraction([t.mention_at is not None for t in self.trials])

    @property
    def false_positive_rate(self) -> float:
        return fraction([t.detected for t in self.controls])

    @property
    def random_detection_rate(self) -> float:
        """Claims of an injected thought when a random direction of the same norm is injected."""
        return fraction([t.detected for t in self.random_controls])

    def grid(self, trials: "list[Trial] | None" = None) -> list[dict]:
        """Rates per (layer, strength) cell over `trials` (default: every injected trial)."""
        trials = self.trials if trials is None else trials
        cells = []
        for layer in self.layers:
            for strength in self.strengths:
                cell = [t for t in trials if t.layer == layer and t.strength == strength]
                cells.append({"layer": layer, "strength": strength,
                              "detection_rate": fraction([t.detected for t in cell]),
                              "identification_rate": fraction([t.identified for t in cell]),
                              "mention_rate": fraction([t.mention_at is not None for t in cell]), "n": len(cell)})
        return cells

    def _split(self, items: list[Trial]) -> tuple[list[Trial], list[Trial]]:
        """(selection, report) parts of `items` (trials or random controls), by their trial's concept; a control
        goes with the trial that shares its number."""
        concept_of = {t.trial: t.concept for t in self.trials}
        chosen = set(self.selection_concepts)
        selected = [t for t in items if concept_of.get(t.trial) in chosen]
        return selected, [t for t in items if concept_of.get(t.trial) not in chosen]

    def best(self) -> "dict | None":
        """The cell with the most identifications (then detections; then the weaker, shallower one) among the
        SELECTION concepts' trials; None when none of them was detected."""
        cells = [c for c in self.grid(self._split(self.trials)[0]) if c["detection_rate"] > 0]
        if not cells:
            return None
        return max(cells, key=lambda c: (c["identification_rate"], c["detection_rate"], -c["strength"], -c["layer"]))

    def best_reported(self) -> "dict | None":
        """The best cell's rates on the REPORT concepts' trials (never those that chose it), with the false
        positives of their controls and the random-direction rate there."""
        best = self.best()
        if best is None:
            return None
        report = self._split(self.trials)[1]
        cell = next(c for c in self.grid(report) if (c["layer"], c["strength"]) == (best["layer"], best["strength"]))
        randoms = [t for t in self._split(self.random_controls)[1]
                   if (t.layer, t.strength) == (best["layer"], best["strength"])]
        controls = self._split(self.controls)[1]
        return {**cell, "false_positive_rate": fraction([t.detected for t in controls]), "n_controls": len(controls),
                "random_detection_rate": fraction([t.detected for t in randoms]) if randoms else None}

    def verdict(self) -> str:
        best, rep = self.best(), self.best_reported()
        if best is None:
            return ("no injected trial of the selection concepts was detected (no claim of an injected thought "
                    "before the concept appeared): no cell to report")
        text = (f"best cell chosen on {len(self.selection_concepts)} selection concepts: layer {best['layer']}, "
                f"strength {best['strength']}; on the other concepts' {rep['n']} trials there: detection "
                f"{rep['detection_rate']:.0%} vs {rep['false_positive_rate']:.0%} false positives (of "
                f"{rep['n_controls']} controls), identification {rep['identification_rate']:.0%}")
        if rep["random_detection_rate"] is not None:
            text += f"; a random direction of the same norm there is 'detected' {rep['random_detection_rate']:.0%}"
        if rep["detection_rate"] <= rep["false_positive_rate"]:
            text += ". No evidence of introspection: no more detections than false positives"
        return text

    # output ------------------------------------------------------------------------------------------------------
    def json_extras(self) -> dict:
        best = self.best()
        return {"n_trials": len(self.trials), "n_controls": len(self.controls),
                "detection_rate": self.detection_rate, "false_positive_rate": self.false_positive_rate,
                "identification_rate": self.identification_rate, "mention_rate": self.mention_rate,
                "random_detection_rate": self.random_detection_rate,
                "best_layer": best["layer"] if best else None, "best_strength": best["strength"] if best else None,
                "best_reported": self.best_reported(), "grid": self.grid(), "verdict": self.verdict()}

    def figure(self):
        metrics = [("detection_rate", "detection"), ("identification_rate", "identification"),
                   ("mention_rate", "concept mentioned (any order)")]
        title = (f"Concept injection: {self.model} | {len(self.trials)} trials | false positives "
                 f"{self.false_positive_rate:.0%} of {len(self.controls)} controls")
        return rate_heatmaps(self, metrics, title, width=1200, spacing=0.08)

    def transcripts_html(self) -> str:
        shown = self.trials + self.controls + self.random_controls
        rows = [[t.trial, "control" if t.layer is None else t.layer, "" if t.strength is None else t.strength,
                 t.concept or ("" if t.layer is None else "(random direction)"), t.claim or "",
                 "yes" if t.detected else "", "yes" if t.identified else ""] for t in shown]
        headers = ["trial", "layer", "strength", "concept", "claim", "detected", "identified", "answer"]
        return transcripts(self.verdict(), f"Trial prompt (trial 1; injection starts at token {self.injection_start})",
                           self.example_prompt, headers, rows, [t.answer for t in shown])

    def title(self) -> str:
        return f"Concept injection - {self.model}"

    def page_intro(self) -> str:
        unit = ("the raw concept vector" if self.config.scale == "raw" else "the residual norm at the layer")
        return ("Lindsey 2025 protocol. Detection: the answer claims an injected thought before it names the concept; "
                "identification: it then names it; controls: the same prompts with no injection. Strength is a "
                f"multiple of {unit}; concept vectors read with the {self.config.concept_prompt} prompt; injection "
                f"from '{self.config.start}'. Greedy, {self.config.max_new_tokens} new tokens. Differences from the "
                "paper: " + "; ".join(self.differences) + ".")

    def page_body(self) -> str:
        return self.transcripts_html()

    def summary(self, examples: int = 4) -> str:
        best = self.best()
        lines = [f"introspection | {self.model} | {len(self.trials)} injected trials ({len(self.concepts)} concepts x "
                 f"{len(self.layers)} layers x {len(self.strengths)} strengths), {len(self.controls)} controls",
                 f"detection {self.detection_rate:.1%}  identification {self.identification_rate:.1%}  "
                 f"false positives {self.false_positive_rate:.1%}  concept mentioned {self.mention_rate:.1%}  "
                 + (f"random direction 'detected' {self.random_detection_rate:.1%}" if self.random_controls
                    else "no random-direction controls"),
                 "layer  strength  detected  identified  mentioned   n"]
        for c in self.grid():
            lines.append(f"{c['layer']:>5}  {c['strength']:>8}  {c['detection_rate']:>8.0%}  "
                         f"{c['identification_rate']:>10.0%}  {c['mention_rate']:>9.0%}  {c['n']:>3}")
        lines.append(f"best (chosen on {', '.join(self.selection_concepts)}): layer {best['layer']}, strength "
                     f"{best['strength']}" if best else "best: none")
        lines.append(self.verdict())
        lines.append("differences from the paper: " + "; ".join(self.differences))
        shown = _examples(self.trials, self.controls, examples)
        if shown:
            lines.append("transcripts:")
            for t in shown:
                tag = "control" if t.layer is None else f"layer {t.layer} x{t.strength} {t.concept!r}"
                flags = ("detected " if t.detected else "") + ("identified" if t.identified else "")
                lines.append(f"  trial {t.trial} [{tag}] claim={t.claim} {flags}".rstrip() + f": {t.answer!r}")
        return "\n".join(lines)


def _examples(trials: list[Trial], controls: list[Trial], n: int) -> list[Trial]:
    """Identified, detected, plain injected and control trials first, one of each where there is one."""
    groups = [[t for t in trials if t.identified], [t for t in trials if t.detected and not t.identified],
              [t for t in trials if t.mention_at is not None and not t.detected], [t for t in trials if not t.detected],
              controls]
    shown = []
    for group in groups:
        if group and len(shown) < n:
            shown.append(group[0])
    return shown


# -- the runner ------------------------------------------------------------------------------------------------------
@dataclass
class TrialPrompt:
    trial: int
    text: str
    ids: list[int]
    start: int              # first token position that gets the injection


def trial_prompt(model, context: str = CONTEXT, question: str = QUESTION, trial: int = 1, opening: str = OPENING
                 ) -> tuple[str, dict]:
    """The text of trial `trial` as the model reads it, and the character offsets where the trial question (the
    blank line before "Trial n" when there is an opening) and the assistant header begin ({'question': i,
    'assistant': j})."""
    asked = f"{opening}\n\nTrial {trial}: {question}" if opening else f"Trial {trial}: {question}"
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": context}, {"role": "assistant", "content": "Ok."},
                    {"role": "user", "content": asked}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before_header = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    else:
        before_header = f"User: {context}\n\nAssistant: Ok.\n\nUser: {asked}\n\n"
        text = before_header + "Assistant:"
    question_at = text.rindex(asked) + len(opening or "")
    assistant_at = len(before_header) if text.startswith(before_header) else question_at + len(asked)
    return text, {"question": question_at, "assistant": assistant_at}


def build_trial_prompts(model, context: str, question: str, n: int, start: "str | int" = "question",
                        opening: str = OPENING) -> list[TrialPrompt]:
    """Trials 1..n, tokenized, each with the token position where its injection starts (see `start` above)."""
    prompts = []
    for trial in range(1, n + 1):
        text, offsets = trial_prompt(model, context, question, trial, opening)
        ids = model.encode(text)[0][0].tolist()
        if isinstance(start, int):
            position = resolve_position(start, len(ids), "the trial prompt")
        elif start == "all":
            position = 0
        else:
            position = tokens_before(model, ids, text, offsets[start])
        prompts.append(TrialPrompt(trial, text, ids, position))
    return prompts


def _batches(prompts: list[TrialPrompt], items: list, batch_size: int):
    """Group (prompt, item) pairs by prompt length and injection start, in chunks of batch_size."""
    groups: dict[tuple[int, int], list] = {}
    for prompt, item in zip(prompts, items):
        groups.setdefault((len(prompt.ids), prompt.start), []).append((prompt, item))
    for pairs in groups.values():
        for i in range(0, len(pairs), batch_size):
            yield pairs[i:i + batch_size]


def check_injection_options(config: IntrospectionConfig) -> None:
    """The options only the injection protocol reads: its texts and where the injection starts."""
    for name in ("context", "question"):
        text = getattr(config, name)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{name} is empty: give the text the model reads")
    start = config.start
    if not (start in STARTS or (isinstance(start, int) and not isinstance(start, bool))):
        raise InputError(f"start must be one of {', '.join(STARTS)} or a token position, got {start!r}")
    if config.sentences is not None:
        raise InputError("sentences belong to the prefill protocol (prefill_trials, --prefill), not to introspect")


@torch.no_grad()
def introspect(model, config: "IntrospectionConfig | None" = None, *, progress: bool = False, **overrides
               ) -> IntrospectionResult:
    """Inject concept vectors and ask the model whether it notices (see the module docstring).

    `config` (IntrospectionConfig) holds every option; keyword overrides change single ones, e.g.
    introspect(model, concepts=10, layers=[7, 15, 20]). concepts: words, or how many to draw (seeded) from the
    bundled list. layers: default a quarter, a half and two thirds of the depth. strengths: multiples of the
    residual norm at the layer. One injected trial per (layer, strength, concept), as many controls, and (with
    random_controls) as many random-direction controls."""
    config = with_overrides(IntrospectionConfig, config, overrides)
    check_injection_options(config)
    layers, strengths = check_trial_options(model, config)
    concepts, baselines = concept_words(config.concepts, config.baselines, config.seed)

    cells = [(layer, strength, concept) for layer in layers for strength in strengths for concept in concepts]
    # checks a token-position start before any model work
    prompts = build_trial_prompts(model, config.context, config.question, len(cells), config.start, config.opening)
    selection = selection_split(concepts, config.selection_fraction, config.seed)

    vectors, residual_norm = concept_vectors(model, concepts, baselines, layers, scale=config.scale,
                                             style=config.concept_prompt)
    kinds = [("trial", [(layer, vectors[(layer, concept)] * strength) for layer, strength, concept in cells]),
             ("control", [None] * len(cells))]
    if config.random_controls:
        generator = torch.Generator().manual_seed(config.seed)
        norms = [(layer, float(vectors[(layer, concept)].norm()) * strength) for layer, strength, concept in cells]
        kinds.append(("random", random_injections(norms, model.d_model, generator)))
    answers: dict[tuple[str, int], str] = {}
    with tqdm(total=len(kinds) * len(cells), unit="trial", desc="introspection", file=sys.stderr,
              disable=not progress) as bar:
        for kind, items in kinds:
            for pairs in _batches(prompts, items, config.batch_size):
                rows = [p.ids for p, _ in pairs]
                injections = None if kind == "control" else [i for _, i in pairs]
                texts = generate_injected(model, rows, injections, pairs[0][0].start,
                                          max_new_tokens=config.max_new_tokens)
                for (prompt, _), text in zip(pairs, texts):
                    answers[(kind, prompt.trial)] = text
                bar.update(len(pairs))

    trials, controls, randoms = [], [], []
    for prompt, (layer, strength, concept) in zip(prompts, cells):
        answer = answers[("trial", prompt.trial)]
        trials.append(Trial(prompt.trial, layer, strength, concept, answer, **asdict(score_answer(answer, concept))))
        answer = answers[("control", prompt.trial)]
        controls.append(Trial(prompt.trial, None, None, None, answer, **asdict(score_answer(answer))))
        if config.random_controls:
            answer = answers[("random", prompt.trial)]
            randoms.append(Trial(prompt.trial, layer, strength, None, answer, **asdict(score_answer(answer))))
    return IntrospectionResult(model=model.spec, config=config, layers=layers, strengths=strengths,
                               concepts=concepts, n_baselines=len(baselines), residual_norm=residual_norm,
                               example_prompt=prompts[0].text, injection_start=prompts[0].start, trials=trials,
                               controls=controls, random_controls=randoms, selection_concepts=selection)
