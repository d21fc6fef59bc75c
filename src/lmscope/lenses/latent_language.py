"""Latent language (Wendler et al. 2024, "Do Llamas work in English?"): translate between two non-English languages
(French -> Spanish) with a few-shot prompt, and read the last position through the logit lens at every layer:
the probability of the English word's first token vs the target word's first token.

    Français: "chien" - Español: "perro"
    ...
    Français: "livre" - Español: "          <- last position; target 'libro', English 'book'

Words follow an opening quote, so their first token is taken without a leading space. Probabilities are
softmax(model.unembed(resid_post.L)) at the last position, for every layer (the last layer's equals the output),
averaged over words in float64.
"""
from __future__ import annotations

import html
import json
import random
from dataclasses import dataclass
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


def first_token(model, word: str) -> int:
    ids = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"word {word!r} has no tokens")
    return ids[0]


@dataclass
class LatentLanguageResult(Result, kind="latent_language"):
    model: str
    src: str
    dst: str
    n_words: int
    n_shots: int
    p_english: list[float]          # per layer: mean P(first token of the English word) at the last position
    p_target: list[float]           # per layer: mean P(first token of the target-language word)
    final_top1_target: float        # share of words whose output top-1 token is the target word's first token
    example_prompt: str
    words: list[str]                # the English words used

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
                          xaxis_title="layer", yaxis_title="mean probability of the word's first token",
                          height=450, width=900)
        return fig

    def title(self) -> str:
        return f"Latent language - {self.model}"

    def page_intro(self) -> str:
        return ("Mean over words of the logit-lens probability of the first token of the English word and of the "
                "target word, at the last position of the prompt, per layer.")

    def page_body(self) -> str:
        return f"<pre>{html.escape(self.example_prompt)}</pre><p>{html.escape(self.verdict())}</p>"

    def summary(self) -> str:
        lines = [f"latent language | {self.model} | {LANGUAGES[self.src]} -> {LANGUAGES[self.dst]}, {self.n_words} "
                 f"words, {self.n_shots}-shot; output top-1 = target's first token for "
                 f"{self.final_top1_target:.0%} of words",
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
    prompts, en_ids, dst_ids = [], [], []
    for q in range(len(words)):
        shots = rng.sample([i for i in range(len(words)) if i != q], n_shots)
        prompts.append(translation_prompt(words, q, shots, src, dst))
        en_ids.append(first_token(model, words[q]["en"]))
        dst_ids.append(first_token(model, words[q][dst]))
    n = model.n_layers
    p_en = torch.zeros(n, dtype=torch.float64)
    p_dst = torch.zeros(n, dtype=torch.float64)
    top1 = 0
    for b in range(0, len(prompts), batch_size):
        run = model.run(prompts[b:b + batch_size], read="resid_post.*")
        rows = torch.arange(run.input_ids.shape[0])
        e = torch.tensor(en_ids[b:b + batch_size])
        t = torch.tensor(dst_ids[b:b + batch_size])
        for layer in range(n):
            probs = torch.softmax(model.unembed(run.at_last(run.acts[f"resid_post.{layer}"])).float(), -1).cpu()
            p_en[layer] += probs[rows, e].double().sum()
            p_dst[layer] += probs[rows, t].double().sum()
        top1 += int((run.at_last(run.logits).argmax(-1).cpu() == t).sum())
    k = len(prompts)
    return LatentLanguageResult(model.spec, src, dst, k, n_shots, [float(f"{v:.6g}") for v in (p_en / k).tolist()],
                                [float(f"{v:.6g}") for v in (p_dst / k).tolist()], round(top1 / k, 4), prompts[0],
                                [w["en"] for w in words])
