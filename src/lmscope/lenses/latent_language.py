"""Latent language (Wendler et al. 2024, "Do Llamas work in English?"): translate between two non-English languages
(French -> Spanish) with a few-shot prompt, and read the last position through the logit lens at every layer:
the probability of the English word vs the target-language word.

    Français: "chien" - Español: "perro"
    ...
    Français: "livre" - Español: "          <- last position; target 'libro', English 'book'

As in Wendler et al., a word's probability is the sum of the probabilities of every vocabulary token that is a
prefix of the word, with or without a leading space ('b', 'bo', 'book', ' b', ' book', ...: any way the model may
start writing it), and words whose English and target token sets share a token are dropped (their probabilities
could not be told apart). Probabilities are softmax(model.unembed(resid_post.L)) at the last position, for every
layer (the last layer's equals the output), averaged over the kept words in float64.

Known differences from the paper: a 4-shot prompt of our own format (the paper: its own format), a word list
written for the project, French -> Spanish by default; tokens are matched by their decoded text (the paper
matches token strings with the tokenizer's space marker).
"""
from __future__ import annotations

import html
import json
import random
from dataclasses import dataclass, field
from importlib import resources

import plotly.graph_objects as go
import torch

from lmscope.core.errors import InputError
from lmscope.lenses.text import layer_ranges
from lmscope.results import Result

LANGUAGES = {"fr": "Français", "es": "Español", "de": "Deutsch", "it": "Italiano", "en": "English"}


def load_words() -> list[dict]:
    """The bundled word list: {"en", "fr", "es"} per word (see the file's "about")."""
    text = resources.files("lmscope.data").joinpath("translation_words.json").read_text(encoding="utf-8")
    return json.loads(text)["words"]


def translation_prompt(words: list[dict], query: int, shots: list[int], src: str, dst: str) -> str:
    a, b = LANGUAGES[src], LANGUAGES[dst]
    lines = [f'{a}: "{words[i][src]}" - {b}: "{words[i][dst]}"' for i in shots]
    return "\n".join(lines + [f'{a}: "{words[query][src]}" - {b}: "'])


def decoded_vocabulary(model) -> dict[str, list[int]]:
    """Decoded text of every vocabulary token -> the ids that decode to it (a leading space kept)."""
    tok = model.tokenizer
    table: dict[str, list[int]] = {}
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(min(len(tok), model.vocab_size))))):
        if piece is None:
            continue
        text = (" " + piece[1:].replace("\u2581", " ") if piece.startswith("\u2581")      # sentencepiece's space mark
                else tok.convert_tokens_to_string([piece]))
        table.setdefault(text, []).append(i)
    return table


def prefix_tokens(vocabulary: dict[str, list[int]], word: str) -> list[int]:
    """Ids of every token that is a prefix of `word`, with or without a leading space (Wendler et al. 2024)."""
    if not word:
        raise InputError("an empty word has no prefix tokens")
    ids = set()
    for end in range(1, len(word) + 1):
        for text in (word[:end], " " + word[:end]):
            ids.update(vocabulary.get(text, ()))
    return sorted(ids)


@dataclass
class LatentLanguageResult(Result, kind="latent_language"):
    model: str
    src: str
    dst: str
    n_words: int
    n_shots: int
    p_english: list[float]          # per layer: mean P(English word) at the last position (sum over its prefix tokens)
    p_target: list[float]           # per layer: mean P(target-language word), the same way
    final_top1_target: float        # share of words whose output top-1 token is a prefix token of the target word
    example_prompt: str
    words: list[str]                # the English words used
    dropped: list[str] = field(default_factory=list)   # English words whose token sets overlap the target's

    @property
    def english_over_target(self) -> list[int]:
        """Layers where mean P(English) > mean P(target)."""
        return [i for i, (e, t) in enumerate(zip(self.p_english, self.p_target)) if e > t]

    def verdict(self) -> str:
        n = len(self.p_english)
        peak = max(range(n), key=lambda i: self.p_english[i])
        over = self.english_over_target
        s = (f"P(English) peaks at layer {peak} ({self.p_english[peak]:.2e}; output layer {self.p_english[-1]:.2e}); "
             f"P({self.dst}) at the output {self.p_target[-1]:.2e}. ")
        if over:
            s += f"English above {self.dst} at layers {layer_ranges(over)}."
        else:
            s += f"English is never above {self.dst} at any layer."
        return s

    def json_extras(self) -> dict:
        return {"english_over_target": self.english_over_target, "verdict": self.verdict()}

    def figure(self):
        layers = list(range(len(self.p_english)))
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=layers, y=self.p_english, name="English (en)", mode="lines+markers"))
        fig.add_trace(go.Scatter(x=layers, y=self.p_target, name=f"target ({self.dst})", mode="lines+markers"))
        fig.update_layout(title=f"Latent language: {LANGUAGES[self.src]} -> {LANGUAGES[self.dst]}, {self.n_words} "
                                f"words, logit lens at the last position: {self.model}",
                          xaxis_title="layer", yaxis_title="mean probability of the word (its prefix tokens)",
                          height=450, width=900)
        return fig

    def title(self) -> str:
        return f"Latent language - {self.model}"

    def page_intro(self) -> str:
        return ("Mean over words of the logit-lens probability of the English word and of the target word (the sum "
                "over every token that is a prefix of the word, with or without a leading space), at the last "
                f"position of the prompt, per layer; {len(self.dropped)} words whose token sets overlap dropped.")

    def page_body(self) -> str:
        return f"<pre>{html.escape(self.example_prompt)}</pre><p>{html.escape(self.verdict())}</p>"

    def summary(self) -> str:
        lines = [f"latent language | {self.model} | {LANGUAGES[self.src]} -> {LANGUAGES[self.dst]}, {self.n_words} "
                 f"words ({len(self.dropped)} dropped: English and {self.dst} token sets overlap), {self.n_shots}-shot; "
                 f"output top-1 starts the target word for {self.final_top1_target:.0%} of words",
                 "P(word) = sum of P over every token that is a prefix of the word, with or without a leading space",
                 f"layer  P(en)     P({self.dst})"]
        for i, (e, t) in enumerate(zip(self.p_english, self.p_target)):
            lines.append(f"{i:>5}  {e:.2e}  {t:.2e}" + ("   en > " + self.dst if e > t else ""))
        lines.append(self.verdict())
        return "\n".join(lines)


@torch.no_grad()
def latent_language(model, words: list[dict] | None = None, *, src: str = "fr", dst: str = "es", n_shots: int = 4,
                    batch_size: int = 16, seed: int = 0) -> LatentLanguageResult:
    """Mean logit-lens P(English word) and P(target word) per layer, at the last position of few-shot translation
    prompts src -> dst. Each query gets `n_shots` other words as examples (seeded)."""
    words = load_words() if words is None else list(words)
    for lang in (src, dst):
        if lang not in LANGUAGES or lang == "en":
            raise InputError(f"languages must be two of {', '.join(k for k in LANGUAGES if k != 'en')}, got {lang!r}")
    if src == dst:
        raise InputError("source and target language are the same")
    if any(not isinstance(w, dict) or not all(isinstance(w.get(k), str) and w[k] for k in ("en", src, dst))
           for w in words):
        raise InputError(f"every word needs non-empty 'en', {src!r} and {dst!r} strings")
    if not isinstance(n_shots, int) or n_shots < 0 or len(words) < n_shots + 1:
        raise InputError(f"need at least n_shots + 1 words ({n_shots + 1}), got {len(words)}")
    rng = random.Random(seed)
    vocabulary = decoded_vocabulary(model)
    prompts, en_ids, dst_ids, kept, dropped = [], [], [], [], []
    for q in range(len(words)):
        en, tgt = prefix_tokens(vocabulary, words[q]["en"]), prefix_tokens(vocabulary, words[q][dst])
        shots = rng.sample([i for i in range(len(words)) if i != q], n_shots)
        if set(en) & set(tgt) or not en or not tgt:
            dropped.append(words[q]["en"])
            continue
        prompts.append(translation_prompt(words, q, shots, src, dst))
        en_ids.append(en)
        dst_ids.append(tgt)
        kept.append(words[q]["en"])
    if not prompts:
        raise InputError(f"every word's English and {dst!r} token sets overlap: nothing to measure")
    n = model.n_layers
    p_en = torch.zeros(n, dtype=torch.float64)
    p_dst = torch.zeros(n, dtype=torch.float64)
    top1 = 0
    for b in range(0, len(prompts), batch_size):
        run = model.run(prompts[b:b + batch_size], read="resid_post.*")
        e, t = _membership(en_ids[b:b + batch_size], model.vocab_size), _membership(dst_ids[b:b + batch_size],
                                                                                      model.vocab_size)
        for layer in range(n):
            probs = torch.softmax(model.unembed(run.at_last(run.acts[f"resid_post.{layer}"])).float(), -1).cpu()
            p_en[layer] += (probs.double() * e).sum()
            p_dst[layer] += (probs.double() * t).sum()
        top = run.at_last(run.logits).argmax(-1).cpu()
        top1 += int(t[torch.arange(len(top)), top].sum())
    k = len(prompts)
    return LatentLanguageResult(model.spec, src, dst, k, n_shots, [float(f"{v:.6g}") for v in (p_en / k).tolist()],
                                [float(f"{v:.6g}") for v in (p_dst / k).tolist()], round(top1 / k, 4), prompts[0],
                                kept, dropped)


def _membership(token_sets: list[list[int]], vocab_size: int) -> torch.Tensor:
    """[len(token_sets), vocab] float64: 1 where the token is in the row's set."""
    out = torch.zeros(len(token_sets), vocab_size, dtype=torch.float64)
    for row, ids in enumerate(token_sets):
        out[row, ids] = 1.0
    return out
