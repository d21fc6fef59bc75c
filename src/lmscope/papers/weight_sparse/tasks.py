"""Binary next-token Python tasks in the spirit of Gao et al. 2025, as lmscope circuit TaskSets (clean / corrupt
prompt pairs of equal token length, the answer and the contrasting token, metric logit_diff), so patching,
attribution and pruning run on them unchanged. The corrupt prompt is the minimal change that makes the wrong token
the right one.

    single_double_quote    (paper) a string opened with " closes with ", opened with ' closes with '
                           x = "value  -> "     corrupt  x = 'value  -> '
    bracket_counting       (paper, adapted) after an inner list closes, is a bracket still open?
                           x = [[1, 2]  -> ]    corrupt  x = [-1, 2]  -> newline  (our tokenizer has no ]] token)
    set_or_string          (paper) a set grows with .add, a string with +=
                           x = set() / for y in ys: / x  -> .    corrupt  x = str() ...  -> +=
    paren_or_bracket       (ours) close what was opened: f(a, b -> )    corrupt  f[a, b -> ]
    none_is_or_eq          (ours) a None default is compared with `is`, a number with `==`
                           def f(x=None): / if x  -> is      corrupt  def f(x=0): / if x  -> ==
    indent_after_colon     (ours) a line ending in ':' opens a deeper block
                           if x:  -> newline + 8 spaces   corrupt  y = x  -> newline + 4 spaces (the answer
                           token is the newline and all but the last space; the tokenizer splits so)

Held-out split: names and words are divided by a hash into a train half and a test half; a task built with
split="test" uses only test-half names, so accuracy is measured on prompts whose words were not used to choose
anything. Every example is checked against the tokenizer: equal clean/corrupt length, the answer and the wrong
text each exactly one token following the prompt; what is dropped is counted by reason.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.circuits import TaskSet, load_circuit_task
from lmscope.core.errors import InputError, LmscopeError
from lmscope.papers.weight_sparse.checkpoints import open_model
from lmscope.results import Result

NAMES = ("x", "y", "n", "i", "data", "value", "name", "result", "items", "key", "path", "line", "text", "obj", "args",
         "node", "size", "count", "index", "item", "buf", "msg", "out", "res", "total", "parts", "start", "end",
         "offset", "mode", "flags", "level", "prefix", "target", "source", "limit", "width", "state", "info", "tmp",
         "val", "word", "char", "entry", "block", "field", "attr", "module", "files", "lines")
WORDS = ("hello", "error", "name", "value", "utf", "default", "test", "data", "file", "none", "true", "false", "ascii",
         "strict", "replace", "ignore", "main", "self", "type", "list", "string", "path", "key", "line", "text", "code",
         "mode", "read", "write", "open", "close", "start", "stop", "done", "ok", "fail", "warning", "info", "debug")
FUNCS = ("foo", "bar", "get", "run", "load", "parse", "check", "make", "read", "write", "send", "open", "update",
         "process", "handle", "build", "format", "convert", "compute", "len", "max", "min", "sorted", "list", "str")


def _half(word: str) -> str:
    return "train" if hashlib.sha256(word.encode()).digest()[0] % 2 == 0 else "test"


@dataclass(frozen=True)
class Template:
    clean: str      # format string; the prompt, ending just before the answer
    corrupt: str
    answer: str     # exactly one token, after the clean prompt
    wrong: str      # exactly one token, after the corrupt prompt
    suffix: str = "\n"   # what follows the answer when checking how the tokenizer splits it


def _quote(q: str, o: str) -> list[Template]:
    return [Template(f"{{a}} = {q}{{w}}", f"{{a}} = {o}{{w}}", q, o),
            Template(f"    return {q}{{w}}", f"    return {o}{{w}}", q, o),
            Template(f"    {{a}} = {q}{{w}} + {q}{{w2}}", f"    {{a}} = {o}{{w}} + {o}{{w2}}", q, o),
            Template(f"print({q}{{w}}", f"print({o}{{w}}", q + ")", o + ")")]


TASKS: dict[str, list[Template]] = {
    "single_double_quote": _quote('"', "'") + _quote("'", '"'),
    "bracket_counting": [Template("{a} = [[{n}, {m}]", "{a} = [-{n}, {m}]", "]", "\n", ""),
                         Template("    {a} = [[{n}, {m}], [{k}]", "    {a} = [-{n}, {m}], [{k}]", "]", "\n", "")],
    "set_or_string": [Template("{a} = set()\nfor {b} in {c}:\n    {a}", "{a} = str()\nfor {b} in {c}:\n    {a}", ".",
                               " +=", " {b}\n"),
                      Template("    {a} = set()\n    for {b} in {c}:\n        {a}",
                               "    {a} = str()\n    for {b} in {c}:\n        {a}", ".", " +=", " {b}\n")],
    "paren_or_bracket": [Template("{a} = {f}({b}, {c}", "{a} = {f}[{b}, {c}", ")", "]"),
                         Template("    return {f}({b}, {c}", "    return {f}[{b}, {c}", ")", "]")],
    "none_is_or_eq": [Template("def {f}({a}=None):\n    if {a}", "def {f}({a}=0):\n    if {a}", " is", " ==",
                               " None:\n"),
                      Template("def {f}(self, {a}=None):\n        if {a}", "def {f}(self, {a}=1):\n        if {a}",
                               " is", " ==", " None:\n")],
    # the tokenizer splits "\n        return" as "\n" + 7 spaces, " return": the answer is the first of those
    "indent_after_colon": [Template("def {f}({a}):\n    if {a}:", "def {f}({a}):\n    {b} = {a}",
                                    "\n       ", "\n   ", " return {a}\n"),
                           Template("def {f}({a}):\n    for {b} in {a}:", "def {f}({a}):\n    {b} = {c}({a})",
                                    "\n       ", "\n   ", " return {b}\n")],
}
SPARSE_TASKS = tuple(TASKS)


_HALVES = {split: {kind: [w for w in words if _half(w) == split] for kind, words in
                   (("names", NAMES), ("words", WORDS), ("funcs", FUNCS))} for split in ("train", "test")}


def _fill(rng: random.Random, split: str) -> dict:
    half = _HALVES[split]
    a, b, c = rng.sample(half["names"], 3)
    return {"a": a, "b": b, "c": c, "w": rng.choice(half["words"]), "w2": rng.choice(half["words"]),
            "f": rng.choice(half["funcs"]), "n": rng.randrange(100), "m": rng.randrange(100), "k": rng.randrange(100)}


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _single(tok, text: str) -> "int | None":
    ids = _ids(tok, text)
    return ids[0] if len(ids) == 1 else None


def _follows(tok, prompt_ids: list[int], prompt: str, answer: str, suffix: str) -> "int | None":
    """The answer's token id if prompt + answer + suffix splits as prompt_ids, [answer], ...; else None."""
    full = _ids(tok, prompt + answer + suffix)
    want = _single(tok, answer)
    if want is None or full[:len(prompt_ids)] != prompt_ids or len(full) <= len(prompt_ids):
        return None
    return want if full[len(prompt_ids)] == want else None


def build_task(tokenizer, name: str, n: int = 200, split: str = "test", seed: int = 0):
    """A TaskSet of up to n distinct examples of task `name` drawn from the `split` half of the words."""
    if name not in TASKS:
        raise InputError(f"unknown sparse task '{name}'; choose one of {', '.join(SPARSE_TASKS)}")
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    rng, rows, filtered, seen = random.Random(f"{name}/{split}/{seed}"), [], {}, set()
    templates = TASKS[name]
    for tries in range(50 * n):
        if len(rows) >= n or (tries >= 200 and not rows):  # 200 draws and not one usable: the tokenizer cannot
            break
        t_id = rng.randrange(len(templates))
        t, slots = templates[t_id], _fill(rng, split)
        clean, corrupt = t.clean.format(**slots), t.corrupt.format(**slots)
        reason = _check(tokenizer, t, slots, clean, corrupt, seen)
        if isinstance(reason, str):
            filtered[reason] = filtered.get(reason, 0) + 1
            continue
        rows.append((*reason, t_id))
    if not rows:
        raise InputError(f"task '{name}': no usable examples for this tokenizer "
                         f"({', '.join(f'{k}: {v}' for k, v in filtered.items())})")
    c, k, a, w, tids = (list(x) for x in zip(*rows))
    return TaskSet(name, c, k, a, w, "logit_diff", sum(filtered.values()), filtered, tids,
                   info={"split": split, "seed": seed, "source": "lmscope.papers.weight_sparse.tasks"})


def both_ways(task):
    """Each pair as two prompts: the clean prompt with its answer, and the corrupt prompt with the other token as its
    answer (its pair the clean prompt), so both answers are equally common and a model that always says one token
    gets accuracy 0.5 and binary cross-entropy ~log 2. Circuits are pruned and scored on these: on the clean prompts
    alone (one answer for most tasks) the empty circuit of a model that always says that token is 'faithful'."""
    return TaskSet(task.name, task.clean + task.corrupt, task.corrupt + task.clean, task.answer + task.wrong,
                   task.wrong + task.answer, task.metric_name, task.n_filtered, task.filtered,
                   task.templates + task.templates, info={**task.info, "both_ways": True})


def circuit_task_builder(name: str, n: int, seed: int):
    """model -> (task to prune on, held-out task or None). The Python tasks of lmscope.papers.weight_sparse.tasks
    come as a train-words task and a test-words task of n prompts each (n // 2 pairs, both ways: tasks.both_ways);
    lmscope's built-in circuit tasks as one task, which pruning splits."""
    if name in SPARSE_TASKS:
        half = max(1, n // 2)
        return lambda model: (both_ways(build_task(model.tokenizer, name, n=half, split="train", seed=seed)),
                              both_ways(build_task(model.tokenizer, name, n=half, split="test", seed=seed)))
    return lambda model: (load_circuit_task(model, name, n=n, seed=seed), None)


def _check(tok, t: Template, slots: dict, clean: str, corrupt: str, seen: set):
    if (clean, corrupt) in seen:
        return "duplicate"
    c, k = _ids(tok, clean), _ids(tok, corrupt)
    if len(c) != len(k):
        return "unequal length"
    suffix = t.suffix.format(**slots)
    answer = _follows(tok, c, clean, t.answer, suffix)
    wrong = _follows(tok, k, corrupt, t.wrong, suffix)
    if answer is None or wrong is None:
        return "answer not one token after the prompt"
    if answer == wrong:
        return "answer and wrong are the same token"
    seen.add((clean, corrupt))
    return c, k, answer, wrong


@torch.no_grad()
def _last_logits(model, rows: list[list[int]], batch: int = 64) -> torch.Tensor:
    out = []
    for s in range(0, len(rows), batch):
        chunk = rows[s:s + batch]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        out.append(logits[torch.arange(len(chunk)), mask.sum(1) - 1].float())
    return torch.cat(out)


def task_accuracy(model, task) -> dict:
    """Balanced accuracy: on clean prompts logit(answer) > logit(wrong), on corrupt prompts the reverse (a model
    that always says one token scores 0.5). Also the mean clean logit difference."""
    model.eval()
    clean, corrupt = _last_logits(model, task.clean), _last_logits(model, task.corrupt)
    d_clean, d_corrupt = task.metric(clean), task.metric(corrupt)
    acc_clean, acc_corrupt = float((d_clean > 0).float().mean()), float((d_corrupt < 0).float().mean())
    return {"accuracy": (acc_clean + acc_corrupt) / 2, "accuracy_clean": acc_clean, "accuracy_corrupt": acc_corrupt,
            "logit_diff_clean": float(d_clean.mean()), "logit_diff_corrupt": float(d_corrupt.mean()),
            "n": len(task), "filtered": task.filtered}


def task_accuracies(model, tokenizer, names=None, n: int = 200) -> dict:
    """{task: accuracy dict} on each task's held-out (test-half) prompts; a task with no usable examples for this
    tokenizer gets {"error": why}."""
    out, ctx = {}, model.config.max_position_embeddings
    for name in names or SPARSE_TASKS:
        try:
            task = build_task(tokenizer, name, n, split="test")
            fits = [i for i, c in enumerate(task.clean) if len(c) <= ctx]
            if not fits:
                raise InputError(f"task '{name}': every prompt is longer than the model's context ({ctx})")
            out[name] = task_accuracy(model, task.subset(fits))
        except LmscopeError as exc:
            if names:
                raise
            out[name] = {"error": str(exc)}
    return out


@dataclass
class TaskAccuracyResult(Result, kind="sparse_task_accuracy"):
    folder: str
    tasks: dict
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"task accuracy of {self.folder} (held-out prompts; balanced over clean and corrupt, chance 0.5)"]
        for name, v in self.tasks.items():
            lines.append(f"  {name:22s} " + (f"{v['accuracy']:.3f}  (clean {v['accuracy_clean']:.3f}, corrupt "
                                                f"{v['accuracy_corrupt']:.3f}, n={v['n']})" if "accuracy" in v
                                                else v["error"]))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        names = [k for k, v in self.tasks.items() if "accuracy" in v]
        values = [self.tasks[k]["accuracy"] for k in names]
        fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.2f}" for v in values], textposition="outside"))
        fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance 0.5", annotation_position="top right")
        fig.update_layout(title=f"task accuracy (held-out prompts, balanced over clean and corrupt): {self.folder}",
                          yaxis={"range": [0, 1.08], "title": "accuracy"}, height=400, width=850)
        return fig


def evaluate_tasks(folder: str, names=None, n: int = 200) -> TaskAccuracyResult:
    model = open_model(folder)
    return TaskAccuracyResult(str(folder), task_accuracies(model.hf, model.tokenizer, names, n),
                              {"model_type": model.hf.config.model_type})
