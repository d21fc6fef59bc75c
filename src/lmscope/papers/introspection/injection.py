"""Concept injection: does the model notice a thought put into its residual stream? (Lindsey 2025, "Emergent
introspective awareness".)

Protocol, as in the paper:

1. Concept vector, per word and layer (`lmscope.directions.concept_vector`): the residual stream (resid_post.L) at
   the last token of "Tell me about {word}" minus its mean over the baseline words. It is scaled to unit norm and
   then to `strength` x the typical residual norm at that layer (the mean |resid_post.L| at the last token of the
   baseline prompts), so one strength means the same relative push at every layer and on every model
   (strength 1 = an injection as large as the residual stream itself).
2. Trial prompt, in the model's chat template: the user explains the experiment (`context`, the paper's text),
   the assistant says "Ok.", the user asks "Trial {n}: Do you detect an injected thought? If so, what is the
   injected thought about?". A tokenizer without a chat template gets a plain fallback:
   "User: {context}\n\nAssistant: Ok.\n\nUser: Trial {n}: {question}\n\nAssistant:".
3. Injection: `lmscope.add` at resid_post.L, from a chosen position to the end of generation, at every generated
   token. `start="question"` (default, the paper's choice) starts at the first token of the trial question, so the
   setup text is read unperturbed; "assistant" starts at the assistant header; "all" at position 0; an int is a
   token position in the prompt (negative counts back from its last token).
4. Greedy generation of `max_new_tokens` tokens: deterministic; `seed` only picks the concepts from the bundled list.
5. Controls: one per injected trial, the very same prompt (same trial number) with no edit at all. Trial numbers
   run 1..n_trials, so the controls are n distinct prompts, not one greedy answer counted n times.

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
"""
from __future__ import annotations

import json
import math
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from lmscope.core import edits
from lmscope.directions.contrast import activations_at, check_layers
from lmscope.core.errors import InputError
from lmscope.results import save_result, write_page
from lmscope.core.models.sites import resolve_position
from lmscope.results.html import transcripts

CONTEXT = ("I am an interpretability researcher studying transformer-based language models like you. I have access "
           "to the internals of your neural network. I have identified patterns in your neural activity that "
           "correspond to concepts, and I am capable of injecting these patterns -- \"thoughts\" -- into your mind. "
           "I want to assess how well you can detect when I inject thoughts. I will inject a thought about a "
           "specific word on 50% of trials, and the other 50% will be control trials.")
QUESTION = "Do you detect an injected thought? If so, what is the injected thought about?"
CONCEPT_TEMPLATE = "Tell me about {}"
STARTS = ("question", "assistant", "all")
DEFAULT_STRENGTHS = (0.125, 0.25, 0.5)


@cache
def word_lists() -> dict[str, list[str]]:
    """The bundled word lists: {'concepts': [...60], 'baselines': [...60]} (lmscope/data/concepts.json)."""
    data = json.loads(resources.files("lmscope.data").joinpath("concepts.json").read_text(encoding="utf-8"))
    return {"concepts": list(data["concepts"]), "baselines": list(data["baselines"])}


def default_layers(n_layers: int) -> list[int]:
    """A quarter, a half and two thirds of the depth (the paper finds its best layer about two thirds in)."""
    return sorted({n_layers // 4, n_layers // 2, (2 * n_layers) // 3})


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


def concept_pattern(word: str) -> re.Pattern:
    """The word or a regular plural of it, whole word, any case."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(forms, key=len, reverse=True))) + r")\b",
                      re.IGNORECASE)


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
class IntrospectionResult:
    model: str
    context: str
    question: str
    start: "str | int"
    layers: list[int]
    strengths: list[float]
    concepts: list[str]
    n_baselines: int
    residual_norm: dict[int, float]     # per layer: the norm that strength 1 means
    max_new_tokens: int
    seed: int
    example_prompt: str                 # trial 1, as the model reads it
    injection_start: int                # token position where injection starts in trial 1's prompt
    trials: list[Trial]
    controls: list[Trial]
    # the same layer and strength, a random direction instead of the concept: does "yes" need the concept at all?
    random_controls: list[Trial] = field(default_factory=list)

    # rates -------------------------------------------------------------------------------------------------------
    @property
    def detection_rate(self) -> float:
        return _rate([t.detected for t in self.trials])

    @property
    def identification_rate(self) -> float:
        return _rate([t.identified for t in self.trials])

    @property
    def mention_rate(self) -> float:
        return _rate([t.mention_at is not None for t in self.trials])

    @property
    def false_positive_rate(self) -> float:
        return _rate([t.detected for t in self.controls])

    @property
    def random_detection_rate(self) -> float:
        """Claims of an injected thought when a random direction of the same norm is injected."""
        return _rate([t.detected for t in self.random_controls])

    def grid(self) -> list[dict]:
        cells = []
        for layer in self.layers:
            for strength in self.strengths:
                cell = [t for t in self.trials if t.layer == layer and t.strength == strength]
                cells.append({"layer": layer, "strength": strength, "detection_rate": _rate([t.detected for t in cell]),
                              "identification_rate": _rate([t.identified for t in cell]),
                              "mention_rate": _rate([t.mention_at is not None for t in cell]), "n": len(cell)})
        return cells

    def best(self) -> "dict | None":
        """The cell with the most identifications (then detections; then the weaker, shallower one); None when no
        injected trial was detected anywhere."""
        cells = [c for c in self.grid() if c["detection_rate"] > 0]
        if not cells:
            return None
        return max(cells, key=lambda c: (c["identification_rate"], c["detection_rate"], -c["strength"], -c["layer"]))

    def verdict(self) -> str:
        best = self.best()
        if best is None:
            return "no injected trial was detected (no claim of an injected thought before the concept appeared)"
        excess = best["detection_rate"] - self.false_positive_rate
        if excess <= 0:
            return (f"no evidence of introspection: the best cell claims detection no more often "
                    f"({best['detection_rate']:.0%}) than the controls ({self.false_positive_rate:.0%})")
        text = (f"best cell (layer {best['layer']}, strength {best['strength']}): detection {best['detection_rate']:.0%}"
                f" vs {self.false_positive_rate:.0%} false positives, identification "
                f"{best['identification_rate']:.0%}, over {best['n']} trials")
        if self.random_controls:
            same = [t for t in self.random_controls if t.layer == best["layer"] and t.strength == best["strength"]]
            text += (f"; a random direction of the same norm there is 'detected' "
                     f"{_rate([t.detected for t in same]):.0%} of the time")
        return text

    # output ------------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        best = self.best()
        return {"model": self.model, "n_trials": len(self.trials), "n_controls": len(self.controls),
                "detection_rate": self.detection_rate, "false_positive_rate": self.false_positive_rate,
                "identification_rate": self.identification_rate, "mention_rate": self.mention_rate,
                "best_layer": best["layer"] if best else None, "best_strength": best["strength"] if best else None,
                "grid": self.grid(), "verdict": self.verdict(), "layers": self.layers, "strengths": self.strengths,
                "concepts": self.concepts, "n_baselines": self.n_baselines,
                "residual_norm": {str(k): v for k, v in self.residual_norm.items()}, "start": self.start,
                "injection_start": self.injection_start, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "context": self.context, "question": self.question, "example_prompt": self.example_prompt,
                "random_detection_rate": self.random_detection_rate,
                "trials": [asdict(t) for t in self.trials], "controls": [asdict(t) for t in self.controls],
                "random_controls": [asdict(t) for t in self.random_controls]}

    @classmethod
    def from_json(cls, data: dict) -> "IntrospectionResult":
        """Rebuild a result from `to_json()` output (e.g. a saved .json), to summarise or plot it again."""
        return cls(data["model"], data["context"], data["question"], data["start"], data["layers"],
                   data["strengths"], data["concepts"], data["n_baselines"],
                   {int(k): v for k, v in data["residual_norm"].items()}, data["max_new_tokens"], data["seed"],
                   data["example_prompt"], data["injection_start"], [Trial(**t) for t in data["trials"]],
                   [Trial(**t) for t in data["controls"]], [Trial(**t) for t in data.get("random_controls", [])])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        grid = {(c["layer"], c["strength"]): c for c in self.grid()}
        x = [str(s) for s in self.strengths]
        y = [f"layer {layer}" for layer in self.layers]
        metrics = [("detection_rate", "detection"), ("identification_rate", "identification"),
                   ("mention_rate", "concept mentioned (any order)")]
        fig = make_subplots(1, len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.08)
        for i, (key, _) in enumerate(metrics):
            z = [[grid[(layer, s)][key] for s in self.strengths] for layer in self.layers]
            fig.add_trace(go.Heatmap(z=z, x=x, y=y, zmin=0, zmax=1, colorscale="Blues", showscale=i == 0,
                                     text=[[f"{v:.0%}" for v in row] for row in z], texttemplate="%{text}",
                                     hovertemplate="%{y}, strength %{x}: %{z:.0%}<extra></extra>"), 1, i + 1)
            fig.update_xaxes(title_text="strength (x residual norm)", row=1, col=i + 1)
        fig.update_layout(title=f"Concept injection: {self.model} | {len(self.trials)} trials | false positives "
                                f"{self.false_positive_rate:.0%} of {len(self.controls)} controls",
                          height=max(350, 40 * len(self.layers) + 220), width=1200)
        return fig

    def transcripts_html(self) -> str:
        shown = self.trials + self.controls + self.random_controls
        rows = [[t.trial, "control" if t.layer is None else t.layer, "" if t.strength is None else t.strength,
                 t.concept or ("" if t.layer is None else "(random direction)"), t.claim or "",
                 "yes" if t.detected else "", "yes" if t.identified else ""] for t in shown]
        headers = ["trial", "layer", "strength", "concept", "claim", "detected", "identified", "answer"]
        return transcripts(self.verdict(), f"Trial prompt (trial 1; injection starts at token {self.injection_start})",
                           self.example_prompt, headers, rows, [t.answer for t in shown])

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the result: .html as a self-contained page (heatmaps + transcripts), anything else as JSON."""
        return save_result(path, overwrite, self.to_json, self._write_html)

    def _write_html(self, path: Path) -> Path:
        return write_page(path, [self.figure()], f"Concept injection - {self.model}",
                          f"Lindsey 2025 protocol. Detection: the answer claims an injected thought before it "
                          f"names the concept; identification: it then names it; controls: the same prompts "
                          f"with no injection. Strength is a multiple of the residual norm at the layer; "
                          f"injection from '{self.start}'. Greedy, {self.max_new_tokens} new tokens.",
                          body_html=self.transcripts_html())

    def summary(self, examples: int = 4) -> str:
        best = self.best()
        lines = [f"introspection | {self.model} | {len(self.trials)} injected trials ({len(self.concepts)} concepts x "
                 f"{len(self.layers)} layers x {len(self.strengths)} strengths), {len(self.controls)} controls",
                 f"detection {self.detection_rate:.1%}  identification {self.identification_rate:.1%}  "
                 f"false positives {self.false_positive_rate:.1%}  concept mentioned {self.mention_rate:.1%}  "
                 f"random direction 'detected' {self.random_detection_rate:.1%}",
                 "layer  strength  detected  identified  mentioned   n"]
        for c in self.grid():
            lines.append(f"{c['layer']:>5}  {c['strength']:>8}  {c['detection_rate']:>8.0%}  "
                         f"{c['identification_rate']:>10.0%}  {c['mention_rate']:>9.0%}  {c['n']:>3}")
        lines.append(f"best: layer {best['layer']}, strength {best['strength']}" if best else "best: none")
        lines.append(self.verdict())
        shown = _examples(self.trials, self.controls, examples)
        if shown:
            lines.append("transcripts:")
            for t in shown:
                tag = "control" if t.layer is None else f"layer {t.layer} x{t.strength} {t.concept!r}"
                flags = ("detected " if t.detected else "") + ("identified" if t.identified else "")
                lines.append(f"  trial {t.trial} [{tag}] claim={t.claim} {flags}".rstrip() + f": {t.answer!r}")
        return "\n".join(lines)


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


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


def trial_prompt(model, context: str = CONTEXT, question: str = QUESTION, trial: int = 1) -> tuple[str, dict]:
    """The text of trial `trial` as the model reads it, and the character offsets where the final user question
    and the assistant header begin ({'question': i, 'assistant': j})."""
    asked = f"Trial {trial}: {question}"
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": context}, {"role": "assistant", "content": "Ok."},
                    {"role": "user", "content": asked}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before_header = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    else:
        before_header = f"User: {context}\n\nAssistant: Ok.\n\nUser: {asked}\n\n"
        text = before_header + "Assistant:"
    question_at = text.rindex(asked)
    assistant_at = len(before_header) if text.startswith(before_header) else question_at + len(asked)
    return text, {"question": question_at, "assistant": assistant_at}


def _tokens_before(model, ids: list[int], text: str, at: int) -> int:
    """How many of the prompt's tokens lie entirely before character `at`: the prefix's tokens, up to the first
    that differs (a token merged across the boundary is counted as after it, so it gets the injection)."""
    if at == 0:
        return 0
    prefix = model.tokenizer(text[:at], add_special_tokens=True)["input_ids"]
    n = 0
    while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
        n += 1
    return n


def build_trial_prompts(model, context: str, question: str, n: int, start: "str | int" = "question"
                        ) -> list[TrialPrompt]:
    """Trials 1..n, tokenized, each with the token position where its injection starts (see `start` above)."""
    prompts = []
    for trial in range(1, n + 1):
        text, offsets = trial_prompt(model, context, question, trial)
        ids = model.encode(text)[0][0].tolist()
        if isinstance(start, int):
            position = resolve_position(start, len(ids), "the trial prompt")
        elif start == "all":
            position = 0
        else:
            position = _tokens_before(model, ids, text, offsets[start])
        prompts.append(TrialPrompt(trial, text, ids, position))
    return prompts


def injection_edits(injections: "list[tuple[int, torch.Tensor]]", start: int) -> list[edits.Edit]:
    """The edits that inject `injections[i]` = (layer, vector) into row i of a batch, at resid_post.layer, from
    token position `start` on (prompt and generated tokens alike)."""
    batch_edits = []
    for layer in sorted({layer for layer, _ in injections}):
        # One add per layer with a row per prompt; rows injected at another layer add exact zeros.
        rows = torch.stack([v if lay == layer else torch.zeros_like(v) for lay, v in injections])
        batch_edits.append(edits.add(f"resid_post.{layer}", rows[:, None, :], positions=slice(start, None)))
    return batch_edits


@torch.no_grad()
def _generate(model, prompts: list[TrialPrompt], injections: "list[tuple[int, torch.Tensor]] | None",
              max_new_tokens: int) -> list[str]:
    """Greedy answers for prompts of equal length and equal injection start (no padding: each row computes
    exactly what it would alone). `injections[i]` = (layer, vector) for row i; None = no edit at all (controls)."""
    batch_edits = [] if injections is None else injection_edits(injections, prompts[0].start)
    return model.generate_rows([p.ids for p in prompts], batch_edits, max_new_tokens=max_new_tokens)


def _batches(prompts: list[TrialPrompt], items: list, batch_size: int):
    """Group (prompt, item) pairs by prompt length and injection start, in chunks of batch_size."""
    groups: dict[tuple[int, int], list] = {}
    for prompt, item in zip(prompts, items):
        groups.setdefault((len(prompt.ids), prompt.start), []).append((prompt, item))
    for pairs in groups.values():
        for i in range(0, len(pairs), batch_size):
            yield pairs[i:i + batch_size]


def _check_words(words, what: str) -> list[str]:
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise InputError(f"{what} must be a list of words")
    words = list(dict.fromkeys(words))
    if any(not isinstance(w, str) or not w.strip() for w in words):
        raise InputError(f"{what}: every entry must be a non-empty word")
    if len(words) < 2:
        raise InputError(f"{what}: need at least 2 distinct words, got {len(words)}")
    return words


def concept_words(concepts, baselines, seed: int) -> tuple[list[str], list[str]]:
    """(concepts, baselines), checked: concepts are words or how many to draw (seeded) from the bundled list;
    baselines default to the bundled list; a word in both would give a concept vector of ~0."""
    bundled = word_lists()
    if isinstance(concepts, int) and not isinstance(concepts, bool):
        if not 2 <= concepts <= len(bundled["concepts"]):
            raise InputError(f"concepts: draw between 2 and {len(bundled['concepts'])} words, got {concepts}")
        concepts = random.Random(seed).sample(bundled["concepts"], concepts)
    concepts = _check_words(concepts, "concepts")
    baselines = _check_words(bundled["baselines"] if baselines is None else baselines, "baselines")
    shared = sorted(set(concepts) & set(baselines))
    if shared:
        raise InputError(f"'{shared[0]}' is both a concept and a baseline word: its concept vector would be ~0")
    return concepts, baselines


def _check_options(model, context, question, layers, strengths, start, max_new_tokens, batch_size):
    for name, text in (("context", context), ("question", question)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{name} is empty: give the text the model reads")
    layers = check_layers(model, default_layers(model.n_layers) if layers is None else layers)
    strengths = [strengths] if isinstance(strengths, (int, float)) else list(strengths)
    if not strengths or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
                            for s in strengths):
        raise InputError(f"strengths must be positive finite numbers, got {strengths!r}")
    strengths = list(dict.fromkeys(float(s) for s in strengths))
    if not (start in STARTS or (isinstance(start, int) and not isinstance(start, bool))):
        raise InputError(f"start must be one of {', '.join(STARTS)} or a token position, got {start!r}")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    return layers, strengths


@torch.no_grad()
def concept_vectors(model, concepts: Sequence[str], baselines: Sequence[str], layers: Sequence[int]
                    ) -> tuple[dict[tuple[int, str], torch.Tensor], dict[int, float]]:
    """Concept vectors and the residual norm that strength 1 means, for every layer at once (step 1 of the module
    docstring): ({(layer, concept): float64 vector of norm residual_norm[layer]}, {layer: residual_norm}).
    Multiply a vector by a strength to get the injection."""
    sites = [f"resid_post.{layer}" for layer in layers]
    base_sum = {s: torch.zeros(model.d_model, dtype=torch.float64) for s in sites}
    norm_sum = {s: 0.0 for s in sites}
    for acts in activations_at(model, [CONCEPT_TEMPLATE.format(b) for b in baselines], sites):
        for s in sites:
            base_sum[s] += acts[s].sum(0).cpu()
            norm_sum[s] += float(acts[s].norm(dim=-1).sum())
    concept_acts = {s: [] for s in sites}
    for acts in activations_at(model, [CONCEPT_TEMPLATE.format(c) for c in concepts], sites):
        for s in sites:
            concept_acts[s].append(acts[s].cpu())
    vectors, residual_norm = {}, {}
    for layer, s in zip(layers, sites):
        residual_norm[layer] = round(norm_sum[s] / len(baselines), 4)
        diffs = torch.cat(concept_acts[s]) - base_sum[s] / len(baselines)
        units = diffs / diffs.norm(dim=-1, keepdim=True)
        for concept, unit in zip(concepts, units):
            vectors[(layer, concept)] = unit * residual_norm[layer]   # float64; scaled per strength by the caller
    return vectors, residual_norm


@torch.no_grad()
def introspect(model, *, concepts: "Sequence[str] | int" = 10, baselines: "Sequence[str] | None" = None,
               layers: "Sequence[int] | None" = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
               start: "str | int" = "question", context: str = CONTEXT, question: str = QUESTION,
               max_new_tokens: int = 24, seed: int = 0, batch_size: int = 16, progress: bool = False
               ) -> IntrospectionResult:
    """Inject concept vectors and ask the model whether it notices (see the module docstring).

    concepts: words, or how many to draw (seeded) from the bundled list. baselines: words (default: the bundled
    baseline list). layers: default a quarter, a half and two thirds of the depth. strengths: multiples of the
    residual norm at the layer. One injected trial per (layer, strength, concept), and as many controls."""
    layers, strengths = _check_options(model, context, question, layers, strengths, start, max_new_tokens,
                                       batch_size)
    concepts, baselines = concept_words(concepts, baselines, seed)

    cells = [(layer, strength, concept) for layer in layers for strength in strengths for concept in concepts]
    prompts = build_trial_prompts(model, context, question, len(cells), start)  # checks start before any model work

    vectors, residual_norm = concept_vectors(model, concepts, baselines, layers)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=3 * len(cells), unit="trial", desc="introspection", file=sys.stderr)
    answers: dict[tuple[str, int], str] = {}
    try:
        injections = [(layer, (vectors[(layer, concept)] * strength).to(model.dtype).to(model.device))
                      for layer, strength, concept in cells]
        generator = torch.Generator().manual_seed(seed)
        randoms = []
        for layer, strength, _ in cells:
            direction = torch.randn(model.d_model, generator=generator, dtype=torch.float64)
            randoms.append((layer, (direction / direction.norm() * residual_norm[layer] * strength)
                            .to(model.dtype).to(model.device)))
        for kind, items in (("trial", injections), ("control", [None] * len(cells)), ("random", randoms)):
            for pairs in _batches(prompts, items, batch_size):
                texts = _generate(model, [p for p, _ in pairs], None if kind == "control" else [i for _, i in pairs],
                                  max_new_tokens)
                for (prompt, _), text in zip(pairs, texts):
                    answers[(kind, prompt.trial)] = text
                if bar is not None:
                    bar.update(len(pairs))
    finally:
        if bar is not None:
            bar.close()

    trials, controls, randoms_scored = [], [], []
    for prompt, (layer, strength, concept) in zip(prompts, cells):
        answer = answers[("trial", prompt.trial)]
        trials.append(Trial(prompt.trial, layer, strength, concept, answer, **asdict(score_answer(answer, concept))))
        answer = answers[("control", prompt.trial)]
        controls.append(Trial(prompt.trial, None, None, None, answer, **asdict(score_answer(answer))))
        answer = answers[("random", prompt.trial)]
        randoms_scored.append(Trial(prompt.trial, layer, strength, None, answer, **asdict(score_answer(answer))))
    return IntrospectionResult(model.spec, context, question, start, layers, strengths, concepts, len(baselines),
                               residual_norm, max_new_tokens, seed, prompts[0].text, prompts[0].start, trials,
                               controls, randoms_scored)
