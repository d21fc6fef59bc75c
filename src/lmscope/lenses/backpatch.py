"""Back-patching for two-hop queries (Biran et al. 2024, "Hopping too late").

For a composed query ("The capital of the country where the Eiffel Tower is located is"), the residual stream
(resid_post) at a LATER source layer s is written into an EARLIER target layer t < s at the same position (the last
token) and the model generates greedily; the idea is that the first hop is resolved too late for the second hop to
use it, and a second pass through the layers can recover the answer.

The sweep covers (s > t) pairs on a coarse grid of layers. `fixed_fraction` is the share of originally wrong queries
that AT LEAST ONE pair fixes, choosing the pair per query with the answer known: an ORACLE upper bound, not the
accuracy of any fixed intervention ("oracle": true in the JSON). `pair_fixes` counts, per pair, the queries it fixes.

The bundled set (lmscope/data/two_hop.json) was written for this project; only queries whose two single hops the
default model answers alone were kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_layers
from lmscope.core.edits import replace
from lmscope.core.errors import InputError
from lmscope.results import Result


@dataclass
class QueryResult:
    query: str
    answer: str
    clean: str                          # the unpatched generation
    correct: bool
    fixed_by: list[tuple[int, int, str]]  # (source layer, target layer, generation) for each fixing pair
    control_fixed_by: list[tuple[int, int, str]] = field(default_factory=list)  # the same, from another query's state


@dataclass
class BackpatchResult(Result, kind="backpatch"):
    model: str
    layers: list[int]
    n_queries: int
    n_wrong: int
    n_fixed: int
    fixed_fraction: float | None        # null when the model answers every query (no wrong query to fix)
    pair_fixes: dict[str, int]          # "s->t" -> number of wrong queries this pair fixes
    queries: list[QueryResult]
    oracle: bool = True
    control_fixed: int = 0              # wrong queries "fixed" by some pair when the patched state is another query's

    @property
    def control_fixed_fraction(self) -> float | None:
        return self.control_fixed / self.n_wrong if self.n_wrong else None

    def json_extras(self) -> dict:
        return {"control_fixed_fraction": self.control_fixed_fraction,
                "note": "fixed_fraction = share of wrong queries fixed by at least one (source, target) pair chosen "
                        "per query with the answer known: an oracle upper bound. control_fixed_fraction: the same "
                        "search when the patched state comes from another query (the next one in the set), i.e. "
                        "how often any perturbation of that size lands on the answer; both null when no query "
                        "is answered wrongly"}

    def figure(self):
        z = [[self.pair_fixes.get(f"{s}->{t}") if s > t else None for s in self.layers] for t in self.layers]
        fig = go.Figure(go.Heatmap(z=z, x=[f"src {s}" for s in self.layers], y=[f"tgt {t}" for t in self.layers],
                                   colorscale="Blues", colorbar={"title": "queries fixed"},
                                   texttemplate="%{z}"))
        fig.update_layout(title=f"Back-patching: wrong queries fixed per (source, target) pair, of {self.n_wrong}",
                          height=500, width=700)
        return fig

    def title(self) -> str:
        return f"Back-patching - {self.model}"

    def page_intro(self) -> str:
        return self._headline() + " resid_post of the last token at the source layer replaces the target layer's."

    def _headline(self) -> str:
        frac = "n/a" if self.fixed_fraction is None else f"{self.fixed_fraction:.1%}"
        control = "n/a" if self.control_fixed_fraction is None else f"{self.control_fixed_fraction:.1%}"
        return (f"{self.n_queries} two-hop queries, {self.n_wrong} answered wrongly; some back-patching pair fixes "
                f"{self.n_fixed} of them ({frac}, ORACLE upper bound: the pair is chosen per query knowing the "
                f"answer). Control, the state taken from another query: {self.control_fixed} fixed ({control}).")

    def summary(self) -> str:
        lines = [f"back-patching | {self.model} | layers {self.layers}", self._headline()]
        best = sorted(self.pair_fixes.items(), key=lambda kv: -kv[1])[:5]
        if best and best[0][1]:
            lines.append("best single pairs (src->tgt: queries fixed): " +
                         ", ".join(f"{k}: {v}" for k, v in best if v))
        for q in self.queries:
            if not q.correct:
                fix = f"fixed by {len(q.fixed_by)} pairs, e.g. {q.fixed_by[0][0]}->{q.fixed_by[0][1]} " \
                      f"{q.fixed_by[0][2]!r}" if q.fixed_by else "not fixed"
                lines.append(f"  {q.query!r} -> {q.clean!r} (want {q.answer!r}); {fix}")
        return "\n".join(lines)


def two_hop_items() -> list[dict]:
    """The bundled two-hop set."""
    text = resources.files("lmscope.data").joinpath("two_hop.json").read_text(encoding="utf-8")
    return json.loads(text)["items"]


def answer_starts(text: str, answer: str) -> bool:
    return bool(answer.strip()) and text.strip().lower().startswith(answer.strip().lower())


def _n_answer_tokens(model, answer: str) -> int:
    return len(model.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])


@torch.no_grad()
def backpatch(model, items=None, *, layers=None, step: int = 3) -> BackpatchResult:
    """Sweep (source > target) pairs over `layers` (default every `step`-th layer) on each wrongly answered query."""
    items = two_hop_items() if items is None else list(items)
    if not items:
        raise InputError("no two-hop queries given")
    for x in items:
        if not isinstance(x, dict) or not isinstance(x.get("query"), str) or not isinstance(x.get("answer"), str) \
                or not x["answer"].strip():
            raise InputError("each two-hop item needs a 'query' and a non-empty 'answer' (strings)")
    if layers is None:
        check_count("step", step)
        layers = list(range(0, model.n_layers, step))
    layers = check_layers(model, layers)
    if len(layers) < 2:
        raise InputError(f"back-patching needs at least two layers in 0..{model.n_layers - 1}")
    pairs = [(s, t) for s in layers for t in layers if s > t]
    pair_fixes = {f"{s}->{t}": 0 for s, t in pairs}
    queries, control_fixed = [], 0
    donor_acts: dict[int, torch.Tensor] = {}

    def last_states(i: int) -> torch.Tensor:
        """resid_post of query i's last token at every swept layer, [len(layers), d_model]."""
        if i not in donor_acts:
            run = model.run(items[i]["query"], read=[f"resid_post.{s}" for s in layers])
            donor_acts[i] = torch.stack([run.acts[f"resid_post.{s}"][0, -1] for s in layers])
        return donor_acts[i]

    for index, x in enumerate(items):
        n_new = _n_answer_tokens(model, x["answer"]) + 1
        clean = model.generate(x["query"], max_new_tokens=n_new).text
        correct = answer_starts(clean, x["answer"])
        fixed_by, control_by = [], []
        if not correct:
            last = model.encode(x["query"])[0].shape[1] - 1
            own, other = last_states(index), last_states((index + 1) % len(items))
            runs = [(s, t, states, found) for s, t in pairs for states, found in ((own, fixed_by), (other, control_by))]
            # every (pair, donor) is the same query with its own patch: one batch, one edit list per row
            texts = model.generate_batch([x["query"]] * len(runs), [[replace(
                f"resid_post.{t}", states[layers.index(s)], positions=[last])] for s, t, states, _ in runs],
                max_new_tokens=n_new)
            for (s, t, _, found), text in zip(runs, texts):
                if answer_starts(text, x["answer"]):
                    found.append((s, t, text))
            for s, t, _ in fixed_by:
                pair_fixes[f"{s}->{t}"] += 1
            control_fixed += bool(control_by)
        queries.append(QueryResult(x["query"], x["answer"], clean, correct, fixed_by, control_by))
    n_wrong = sum(not q.correct for q in queries)
    n_fixed = sum(bool(q.fixed_by) for q in queries)
    return BackpatchResult(model.spec, layers, len(queries), n_wrong, n_fixed,
                           n_fixed / n_wrong if n_wrong else None, pair_fixes, queries, True, control_fixed)
