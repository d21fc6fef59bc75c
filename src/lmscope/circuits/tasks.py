"""Circuit tasks: clean / corrupt prompt pairs of equal token length, the answer, the contrasting token, a metric.

Built-in tasks (templates and word lists in lmscope/data, written for this project, checked against the model's
tokenizer every time a task is built):

  ioi            "When Mary and John went to the store, John gave a drink to" -> " Mary" (Wang et al. 2023).
                 Both name orders (ABBA: the indirect object first; BABA: the subject first). Two corruptions:
                 corruption="s2" (default): only the repeated subject S2 is replaced by a third name (the EAP-IG
                 repository's IOI corruption, Hanna et al. 2024; NOT Wang et al.'s ABC): the first clause is
                 unchanged, so IO and S are still in the prompt but nothing is repeated.
                 corruption="abc" (Wang et al. 2023's ABC distribution): all three names (A, B and S2) are
                 resampled, three distinct names other than IO and S, so no name of the clean prompt is left.
                 Single-token names, so positions line up either way. Metric logit_diff = logit(IO) - logit(S).
  greater-than   "The war lasted from the year 1732 to the year 17" (Hanna et al. 2023); corrupt year "1701".
                 The metric is read at the FIRST token after the prompt. Every two-digit continuation 00..99 is
                 tokenized after the prompt; a first token is "larger" when every continuation starting with it is
                 a year after YY, "smaller" when every one is before YY (a token that also starts YY itself, or
                 years on both sides, is in neither set).
                 Metric prob_diff = P(larger) - P(smaller). With a tokenizer that splits digits (SmolLM2), the
                 first token is the tens digit: larger = tens digits above YY's, smaller = below, YY's own tens
                 digit in neither; start years whose tens digit is 0 or 9 leave one side empty and are filtered.
  quote-type     a Python string opened with ' or " ("    name = 'hello world") must close with the same quote;
                 corrupt opens with the other quote. Metric logit_diff (same quote - other quote).
  bracket-depth  a list opened with "[[" or "[" must close with "]]" or "]"; corrupt opens with the other depth.
                 Metric logit_diff (right closing - other closing).

The answer and wrong tokens are the first token of the continuation as the model's tokenizer splits prompt +
continuation. A path instead reads a jsonl file of {"clean", "corrupt", "answer", "wrong"} (strings; answer and
wrong are the exact continuations, e.g. " Mary", each one token). Nothing is dropped silently: every example left out
at build is counted by reason in `filtered`; an empty file or nothing left raises InputError.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import torch

from lmscope.core.checks import read_text_file
from lmscope.core.edits import Edit
from lmscope.core.errors import InputError
from lmscope.core.runs import on_cache, position_kwargs

BUILTIN = ("ioi", "greater-than", "quote-type", "bracket-depth")


@dataclass
class TaskSet:
    name: str
    clean: list[list[int]]              # token ids per prompt (BOS included if the model adds one)
    corrupt: list[list[int]]            # same token length as clean[i]
    answer: list[int]                   # first token id of the correct continuation
    wrong: list[int]                    # first token id of the contrasting continuation
    metric_name: str                    # "logit_diff" or "prob_diff"
    n_filtered: int                     # examples dropped at build ...
    filtered: dict[str, int]            # ... by reason
    templates: list[int]                # template id per prompt
    # prob_diff only: per prompt, the tokens whose probability counts for (answer_sets) and against (wrong_sets)
    answer_sets: "list[list[int]] | None" = None
    wrong_sets: "list[list[int]] | None" = None
    info: dict = field(default_factory=dict)   # how the set was built (names kept, tokenizer notes, seed ...)

    def __post_init__(self):
        n = len(self.clean)
        lists = {"corrupt": self.corrupt, "answer": self.answer, "wrong": self.wrong, "templates": self.templates}
        if self.metric_name == "prob_diff":
            lists.update(answer_sets=self.answer_sets or [], wrong_sets=self.wrong_sets or [])
        elif self.metric_name != "logit_diff":
            raise InputError(f"unknown task metric '{self.metric_name}' (logit_diff or prob_diff)")
        for what, values in lists.items():
            if len(values) != n:
                raise InputError(f"task '{self.name}': {len(values)} {what} for {n} clean prompts")
        for i, (c, k) in enumerate(zip(self.clean, self.corrupt)):
            if len(c) != len(k) or not c:
                raise InputError(f"task '{self.name}': prompt {i} has clean length {len(c)} and corrupt length "
                                 f"{len(k)}; they must be equal and non-empty")

    def __len__(self) -> int:
        return len(self.clean)

    # -- metric ---------------------------------------------------------------------------------------------------
    def metric(self, logits_last: torch.Tensor, rows=None) -> torch.Tensor:
        """Logits at each prompt's last real token [n, vocab] -> the metric per prompt [n] (differentiable).
        `rows` (indices into the task) says which prompts the logits belong to; default: all, in order."""
        rows = self._rows(logits_last, rows)
        if self.metric_name == "logit_diff":
            idx = torch.arange(len(rows), device=logits_last.device)
            answer = torch.tensor([self.answer[r] for r in rows], device=logits_last.device)
            wrong = torch.tensor([self.wrong[r] for r in rows], device=logits_last.device)
            return logits_last[idx, answer] - logits_last[idx, wrong]
        probs = logits_last.float().softmax(-1)
        return (_mass(probs, [self.answer_sets[r] for r in rows])
                - _mass(probs, [self.wrong_sets[r] for r in rows])).to(logits_last.dtype)

    def accuracy(self, logits_last: torch.Tensor, rows=None) -> torch.Tensor:
        """[n] bool: logit(answer) > logit(wrong) (logit_diff), or more mass on the answer side (prob_diff)."""
        return self.metric(logits_last, rows) > 0

    def _rows(self, logits_last, rows) -> list[int]:
        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        if logits_last.dim() != 2 or logits_last.shape[0] != len(rows):
            raise InputError(f"task '{self.name}': metric takes logits [n, vocab] for {len(rows)} prompts, got "
                             f"{tuple(logits_last.shape)}")
        return rows

    # -- selections -----------------------------------------------------------------------------------------------
    def subset(self, index) -> "TaskSet":
        """A task of the prompts at `index` (ints, or a boolean mask / tensor); filter counts are kept."""
        if isinstance(index, torch.Tensor):
            index = index.nonzero().flatten().tolist() if index.dtype == torch.bool else index.tolist()
        index = [int(i) for i in index]
        if not index or any(not 0 <= i < len(self) for i in index):
            raise InputError(f"task '{self.name}': subset needs indices in 0..{len(self) - 1}")

        def pick(values):
            return None if values is None else [values[i] for i in index]
        return replace(self, clean=pick(self.clean), corrupt=pick(self.corrupt), answer=pick(self.answer),
                       wrong=pick(self.wrong), templates=pick(self.templates), answer_sets=pick(self.answer_sets),
                       wrong_sets=pick(self.wrong_sets), info=dict(self.info))

    def split(self, n_train: int, seed: int = 0) -> tuple["TaskSet", "TaskSet"]:
        """Disjoint train / test tasks: a seeded permutation, the first n_train prompts for training."""
        if not isinstance(n_train, int) or not 0 < n_train < len(self):
            raise InputError(f"task '{self.name}': n_train must be in 1..{len(self) - 1}, got {n_train!r}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        return self.subset(sorted(order[:n_train])), self.subset(sorted(order[n_train:]))

    def largest_group(self) -> list[int]:
        """Rows of the largest group of prompts sharing a template and a token length (so positions align)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (t, c) in enumerate(zip(self.templates, self.clean)):
            groups.setdefault((t, len(c)), []).append(i)
        return max(groups.values(), key=lambda g: (len(g), -g[0]))

    def batches(self, model, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]:
        """(clean_ids, corrupt_ids, attention_mask, rows) per batch, right-padded by model.encode; rows index the
        task. Clean and corrupt rows have equal lengths, so one mask serves both."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            rows = list(range(start, min(start + batch_size, len(self))))
            clean, mask = model.encode([self.clean[r] for r in rows])
            corrupt, _ = model.encode([self.corrupt[r] for r in rows])
            yield clean, corrupt, mask, rows

    def describe(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in self.filtered.items()) or "none"
        return f"task {self.name}: {len(self)} prompts, metric {self.metric_name}; filtered {self.n_filtered} ({drops})"


def _mass(probs: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sets)
    idx = torch.tensor([s + [s[0]] * (width - len(s)) for s in sets], device=probs.device)
    keep = torch.tensor([[1.0] * len(s) + [0.0] * (width - len(s)) for s in sets], device=probs.device)
    return (probs.gather(1, idx) * keep).sum(1)


# ---------------------------------------------------------------------------------------------------------------
# Running a task

def task_last_logits(model, ids: torch.Tensor, mask: torch.Tensor, edits=(), read=(), *, grad: bool = False,
                     prefix=None, copies: int = 1, positions: "torch.Tensor | None" = None):
    """Logits at each row's last real token [batch, vocab] and the sites read, from one forward pass with edits.
    The pass stops after the last block and unembeds only the last real tokens (through the model's own final
    norm and head), unless an edit or a read needs the final norm or the logits.
    prefix: the KV cache of the first positions of the rows (core.runs.prefix_cache; ids' rows being `copies`
    copies of the cache's rows, as ids.repeat): only the positions after it run, so the sites read hold those.
    positions: each token's position id [batch, seq] where rows are padded inside (align_changes); None: the
    model's own (0, 1, ... after any cache)."""
    touched = [e.site for e in edits if isinstance(e, Edit)] + [r for r in read if isinstance(r, str)]
    late = any(site.kind in ("final_norm", "logits") for site in model.sites(touched)) if touched else False
    last_block = f"resid_post.{model.n_layers - 1}"
    reads = list(read) + ([] if late else [last_block])
    start = 0 if prefix is None else prefix.get_seq_length()
    with torch.set_grad_enabled(grad):
        with model.trace(reads, edits, stop_early=not late, grad=grad) as tr:
            out = model.hf(input_ids=ids[:, start:], attention_mask=mask, **position_kwargs(positions, start),
                           **on_cache(model, prefix, copies=copies))
        acts = tr.acts()
        last = last_real(mask, start)
        rows = torch.arange(len(last), device=last.device)
        logits = out.logits[rows, last] if late else model.unembed(acts[last_block][rows, last])
    return logits, acts


def last_real(mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Each row's last real token [batch], as a column counted from `start` (the columns before it in a KV
    cache); the padding may be on the right or inside the rows (align_changes)."""
    return mask.shape[1] - 1 - mask.flip(1).argmax(1) - start


def first_change(clean: torch.Tensor, corrupt: torch.Tensor, mask: torch.Tensor) -> int:
    """The first position where any prompt of the batch differs, kept below every prompt's last real token: the
    positions before it hold the same activations in the clean and the corrupt run (the models are causal)."""
    differs = (clean != corrupt).any(0).nonzero()
    first = int(differs[0]) if len(differs) else clean.shape[1]
    return max(0, min(first, int(mask.sum(1).min()) - 1))


def by_first_change(task: TaskSet) -> TaskSet:
    """The task's prompts ordered by the position where clean and corrupt first differ, then by length, so that
    the prompts of a batch share a prefix nearly as long as their own (and need little padding). For methods whose
    numbers are sums over prompts, where the order is free."""
    def key(i: int) -> tuple[int, int]:
        clean, corrupt = task.clean[i], task.corrupt[i]
        return next((p for p, (a, b) in enumerate(zip(clean, corrupt)) if a != b), len(clean)), len(clean)
    return task.subset(sorted(range(len(task)), key=key))


def align_changes(clean: torch.Tensor, corrupt: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", int]:
    """A right-padded batch laid out so that the tokens where clean and corrupt are the same (each row's tokens
    before its own first change, kept below its last real token) come first, in columns 0..start-1, and can run
    once into a KV cache, while every later pass runs the columns from `start` on. Returns (clean, corrupt, mask,
    positions, start). When the rows' first changes differ, each row gets start - f_i padding columns before its
    tokens (start: the largest f_i) and positions (each row's own position ids, padding 0), so that the columns
    after `start` hold only the tokens after each row's own first change; when that would not shorten them (the
    row that changes first is also the longest), the batch is returned as it is, positions None and start its
    first_change."""
    lengths = mask.sum(1)
    differs = (clean != corrupt) & mask.bool()
    firsts = torch.where(differs.any(1), differs.int().argmax(1), lengths)
    firsts = torch.minimum(firsts, lengths - 1).clamp(min=0)
    start, after = int(firsts.max()), int((lengths - firsts).max())
    if after >= clean.shape[1] - int(firsts.min()):
        return clean, corrupt, mask, None, int(firsts.min())
    column = torch.arange(clean.shape[1], device=clean.device)[None] + (start - firsts)[:, None]   # new column
    real = mask.bool()
    rows = torch.arange(len(clean), device=clean.device)[:, None].expand_as(column)
    out = []
    for ids in (clean, corrupt, mask):
        moved = torch.zeros(len(clean), start + after, dtype=ids.dtype, device=ids.device)
        moved[rows[real], column[real]] = ids[real]
        out.append(moved)
    positions = ((out[2].cumsum(1) - 1).clamp(min=0) * out[2]).long()
    return out[0], out[1], out[2], positions, start


def task_logits(model, task: TaskSet, edits=(), *, which: str = "clean", batch_size: int = 32,
                grad: bool = False) -> torch.Tensor:
    """Logits at each prompt's last real token [n, vocab], under optional lmscope edits. `edits` is a list applied
    to every batch, or a function rows -> edits for values that differ per prompt (e.g. another run's
    activations, [len(rows), seq, ...])."""
    if which not in ("clean", "corrupt"):
        raise InputError(f"which must be 'clean' or 'corrupt', got {which!r}")
    outs = []
    for clean, corrupt, mask, rows in task.batches(model, batch_size):
        batch_edits = edits(rows) if callable(edits) else list(edits)
        logits, _ = task_last_logits(model, clean if which == "clean" else corrupt, mask, batch_edits, grad=grad)
        outs.append(logits)
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------------------------
# Building tasks

@cache
def _data(name: str) -> dict:
    return json.loads(resources.files("lmscope.data").joinpath(name).read_text(encoding="utf-8"))


class _Builder:
    """Collects examples, checking each against the tokenizer and counting what it drops."""

    def __init__(self, model, name: str, metric: str):
        if model.tokenizer is None:
            raise InputError(f"{model.spec} has no tokenizer: tasks are built from text")
        self.model, self.name, self.metric = model, name, metric
        self.tok = model.tokenizer
        self.rows: dict[str, list] = {k: [] for k in ("clean", "corrupt", "answer", "wrong", "templates",
                                                      "answer_sets", "wrong_sets")}
        self.filtered: dict[str, int] = {}
        self.seen: set[tuple] = set()

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def next_token(self, prompt: str, prompt_ids: list[int], continuation: str) -> "int | None":
        """First token of `continuation` after `prompt`, as the tokenizer splits the whole text; None when the
        prompt's own tokens change (the continuation merges into the prompt's last token)."""
        full = self.encode(prompt + continuation)
        if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            return None
        return full[len(prompt_ids)]

    def drop(self, reason: str) -> None:
        self.filtered[reason] = self.filtered.get(reason, 0) + 1

    def add(self, clean: str, corrupt: str, answer: str, wrong: str, template: int,
            single_token: bool = False, ids: "tuple[int, int] | None" = None, sets=None) -> bool:
        """Check one example and keep it; False (and a count) when it is dropped. `ids` gives the answer and
        wrong token ids when the caller worked them out; `sets` the (answer_sets, wrong_sets) entries."""
        if (clean, corrupt) in self.seen:
            self.drop("duplicate")
            return False
        c, k = self.encode(clean), self.encode(corrupt)
        if not c or not k:
            self.drop("empty prompt")
            return False
        if len(c) != len(k):
            self.drop("unequal length")
            return False
        found = []
        for what, text in (() if ids else (("answer", answer), ("wrong", wrong))):
            if single_token and len(self.tok(text, add_special_tokens=False)["input_ids"]) != 1:
                self.drop(f"multi-token {what}")
                return False
            t = self.next_token(clean, c, text)
            if t is None:
                self.drop(f"{what} merges with the prompt")
                return False
            found.append(t)
        ids = ids or found
        if ids[0] == ids[1]:
            self.drop("answer and wrong share their first token")
            return False
        self.seen.add((clean, corrupt))
        for key, value in zip(("clean", "corrupt", "answer", "wrong", "templates"), (c, k, ids[0], ids[1], template)):
            self.rows[key].append(value)
        if sets is not None:
            self.rows["answer_sets"].append(list(sets[0]))
            self.rows["wrong_sets"].append(list(sets[1]))
        return True

    def build(self, info: dict) -> TaskSet:
        if not self.rows["clean"]:
            drops = ", ".join(f"{k}: {v}" for k, v in self.filtered.items()) or "no examples"
            raise InputError(f"task '{self.name}': no usable examples for {self.model.spec} ({drops})")
        sets = self.rows["answer_sets"] if self.metric == "prob_diff" else None
        wsets = self.rows["wrong_sets"] if self.metric == "prob_diff" else None
        return TaskSet(self.name, self.rows["clean"], self.rows["corrupt"], self.rows["answer"], self.rows["wrong"],
                       self.metric, sum(self.filtered.values()), dict(self.filtered), self.rows["templates"],
                       sets, wsets, info)


def _allowed(templates, count: int) -> list[int]:
    """Template ids to draw from: all, or the ones asked for (checked)."""
    if templates is None:
        return list(range(count))
    ids = [templates] if isinstance(templates, int) else list(templates)
    if not ids or any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < count for t in ids):
        raise InputError(f"templates must be ids in 0..{count - 1}, got {templates!r}")
    return ids


def _check_n(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")


def _sample(builder: _Builder, n: int, draw: Callable[[], None]) -> None:
    """Draw candidates until n are kept; give up after 50 n draws (the counts say why)."""
    tries = 0
    while len(builder.rows["clean"]) < n and tries < 50 * n:
        tries += 1
        draw()


IOI_CORRUPTIONS = {"s2": "S2 replaced by a third name (the EAP-IG repository's corruption; not ABC)",
                   "abc": "ABC (Wang et al. 2023): A, B and S2 all resampled, three new distinct names"}


def ioi_task(model, n: int = 200, seed: int = 0, templates=None, corruption: str = "s2") -> TaskSet:
    _check_n(n)
    if corruption not in IOI_CORRUPTIONS:
        raise InputError(f"IOI corruption must be one of {', '.join(IOI_CORRUPTIONS)}, got {corruption!r}")
    names = _data("ioi_names.json")["names"]
    texts = _data("ioi_templates.json")["templates"]
    allowed = _allowed(templates, len(texts))
    b = _Builder(model, "ioi" if corruption == "s2" else f"ioi-{corruption}", "logit_diff")
    tok = model.tokenizer
    single = {name: len(tok(" " + name, add_special_tokens=False)["input_ids"]) == 1 for name in names}
    rng = random.Random(seed)

    def draw():
        t = rng.choice(allowed)
        io, s, c = rng.sample(names, 3)
        if not (single[io] and single[s] and single[c]):
            b.drop("multi-token name")
            return
        a, bb = (io, s) if rng.random() < 0.5 else (s, io)   # ABBA or BABA
        fill = dict(A=" " + a, B=" " + bb)
        if corruption == "s2":
            corrupt = texts[t].format(S=" " + c, **fill)
        else:
            x, y = rng.sample([name for name in names if name not in (io, s, c)], 2)
            if not (single[x] and single[y]):
                b.drop("multi-token name")
                return
            corrupt = texts[t].format(A=" " + x, B=" " + y, S=" " + c)
        b.add(texts[t].format(S=" " + s, **fill), corrupt, " " + io, " " + s, t)
    _sample(b, n, draw)
    return b.build({"names": len(names), "single-token names": sum(single.values()),
                    "multi-token names": sorted(k for k, v in single.items() if not v), "templates": texts,
                    "corrupt": IOI_CORRUPTIONS[corruption], "corruption": corruption, "seed": seed})


def greater_than_task(model, n: int = 200, seed: int = 0, templates=None) -> TaskSet:
    _check_n(n)
    data = _data("greater_than.json")
    texts, nouns, centuries = data["templates"], data["nouns"], data["centuries"]
    allowed = _allowed(templates, len(texts))
    b = _Builder(model, "greater-than", "prob_diff")
    tok = model.tokenizer
    single = {w: len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in nouns}
    rng = random.Random(seed)
    years = [f"{y:02d}" for y in range(100)]

    def draw():
        t, noun, cent, yy = rng.choice(allowed), rng.choice(nouns), rng.choice(centuries), rng.randint(2, 98)
        if not single[noun]:
            b.drop("multi-token noun")
            return
        clean = texts[t].format(noun=" " + noun, C=cent, YY=f"{yy:02d}")
        corrupt = texts[t].format(noun=" " + noun, C=cent, YY="01")
        prompt_ids = b.encode(clean)
        firsts = [b.next_token(clean, prompt_ids, y) for y in years]
        if any(f is None for f in firsts):
            b.drop("year merges with the prompt")
            return
        after, before = set(), set()
        for y, f in enumerate(firsts):   # YY itself counts on both sides: its first token is in neither set
            if y >= yy:
                after.add(f)
            if y <= yy:
                before.add(f)
        larger, smaller = sorted(after - before), sorted(before - after)
        if not larger or not smaller:
            b.drop("no larger or no smaller first token")
            return
        # answer / wrong: the first tokens of the nearest year on each side that is all larger / all smaller
        answer = next(f for y, f in enumerate(firsts) if y > yy and f in larger)
        wrong = next(f for y, f in reversed(list(enumerate(firsts))) if y < yy and f in smaller)
        b.add(clean, corrupt, "", "", t, ids=(answer, wrong), sets=(larger, smaller))
    _sample(b, n, draw)
    return b.build({"nouns": len(nouns), "single-token nouns": sum(single.values()), "corrupt year": "01",
                    "metric": "P(first tokens of later years) - P(first tokens of earlier years)", "seed": seed})


def quote_type_task(model, n: int = 200, seed: int = 0, templates=None) -> TaskSet:
    _check_n(n)
    data = _data("code_tasks.json")
    b = _Builder(model, "quote-type", "logit_diff")
    rng = random.Random(seed)
    texts = data["quote_templates"]
    allowed = _allowed(templates, len(texts))

    def draw():
        t = rng.choice(allowed)
        prompt, rest = texts[t]
        q, other = ("'", '"') if rng.random() < 0.5 else ('"', "'")
        fill = dict(var=rng.choice(data["vars"]), text=rng.choice(data["texts"]))
        b.add(prompt.format(q=q, **fill), prompt.format(q=other, **fill), q + rest, other + rest, t)
    _sample(b, n, draw)
    return b.build({"templates": [p for p, _ in texts], "seed": seed,
                    "corrupt": "the string opened with the other quote"})


def bracket_depth_task(model, n: int = 200, seed: int = 0, templates=None) -> TaskSet:
    _check_n(n)
    data = _data("code_tasks.json")
    b = _Builder(model, "bracket-depth", "logit_diff")
    rng = random.Random(seed)
    texts = data["bracket_templates"]
    allowed = _allowed(templates, len(texts))

    def draw():
        t = rng.choice(allowed)
        prompt, rest = texts[t]
        (o, close), (o2, close2) = (("[[", "]]"), ("[", "]"))[::1 if rng.random() < 0.5 else -1]
        fill = dict(var=rng.choice(data["vars"]), items=rng.choice(data["items"]))
        b.add(prompt.format(open=o, **fill), prompt.format(open=o2, **fill), close + rest, close2 + rest, t)
    _sample(b, n, draw)
    return b.build({"templates": [p for p, _ in texts], "seed": seed,
                    "corrupt": "the list opened at the other depth ([[ vs [)"})


def pairs_task(model, path: "str | Path") -> TaskSet:
    """A task from a jsonl file of {"clean", "corrupt", "answer", "wrong"} (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pair file {path} does not exist")
    b = _Builder(model, path.name, "logit_diff")
    n_lines = 0
    for number, line in enumerate(read_text_file(path, "pair file").splitlines(), 1):
        if not line.strip():
            continue
        n_lines += 1
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or any(not isinstance(item.get(k), str) or not item.get(k)
                                             for k in ("clean", "corrupt", "answer", "wrong")):
            raise InputError(f"{path}:{number}: each line needs non-empty strings \"clean\", \"corrupt\", "
                             f"\"answer\" and \"wrong\"")
        b.add(item["clean"], item["corrupt"], item["answer"], item["wrong"], 0, single_token=True)
    if n_lines == 0:
        raise InputError(f"pair file {path} is empty")
    return b.build({"file": str(path), "lines": n_lines})


_BUILDERS = {"ioi": ioi_task, "greater-than": greater_than_task, "quote-type": quote_type_task,
             "bracket-depth": bracket_depth_task}


def load_circuit_task(model, name_or_path: str, *, n: int = 200, seed: int = 0, templates=None,
                      corruption: "str | None" = None) -> TaskSet:
    """A built-in task by name (n prompts, seeded; `templates` limits them to these template ids), or a jsonl
    file of pairs (all of its lines). `corruption`: IOI only, "s2" (default) or "abc" (IOI_CORRUPTIONS)."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise InputError(f"a task is one of {', '.join(BUILTIN)} or a jsonl path")
    key = str(name_or_path).strip().lower().replace("_", "-")
    if corruption is not None and key != "ioi":
        raise InputError(f"corruption= applies to the ioi task only, not to {name_or_path!r}")
    if key == "ioi" and corruption is not None:
        return ioi_task(model, n=n, seed=seed, templates=templates, corruption=corruption)
    if key in _BUILDERS:
        return _BUILDERS[key](model, n=n, seed=seed, templates=templates)
    if templates is not None:
        raise InputError("templates= applies to the built-in tasks, not to a pair file")
    if Path(name_or_path).suffix == ".jsonl" or Path(name_or_path).exists():
        return pairs_task(model, name_or_path)
    raise InputError(f"unknown task '{name_or_path}': one of {', '.join(BUILTIN)}, or a .jsonl file of "
                     f"{{\"clean\", \"corrupt\", \"answer\", \"wrong\"}} pairs")
