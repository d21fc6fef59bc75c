"""What function vectors and task vectors share: tasks split into build / held-out pairs, the prompt format, and
greedy first-token accuracy with a vector put into the residual stream at the last token.

Prompt format (one pair per line; the query ends with the arrow):

    few-shot   "hot -> cold\\nbig -> small\\nfast ->"           zero-shot   "fast ->"

A prediction is right when the model's greedy next token equals the first token of " " + output (leading space
included): the first-token rule. Where an output is several tokens, or two outputs of a task start with the same
token, that rule is looser than the word; `token_check` counts both cases so a result can report them.

The pairs are split once (seeded) into BUILD pairs, from which every vector is made and every choice (layer, heads) is
taken, and HELD-OUT pairs, used only to report accuracy. Few-shot demonstrations always come from the build pairs.

Prompts are run grouped by token length, so no row is padded: the last position is the same (-1) for every row of a
forward pass, and the logits of only that position are computed (`logits_to_keep=1`). A layer sweep edits the last
position only, so the prompts' prefixes run once into a key/value cache and each layer's pass runs the last token.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmscope.core import edits
from lmscope.core.checks import check_count
from lmscope.core.errors import InputError
from lmscope.core.metrics import accuracy, answer_prob
from lmscope.core.runs import length_groups, prefix_cache
from lmscope.data.icl_tasks import IclTask, load_icl_task, load_pairs


@dataclass(frozen=True)
class Split:
    build: tuple[tuple[str, str], ...]
    heldout: tuple[tuple[str, str], ...]


def resolve_task(task) -> IclTask:
    """A bundled task name, an IclTask, or a sequence of (input, output) pairs."""
    if isinstance(task, IclTask):
        return task
    if isinstance(task, str):
        return load_icl_task(task)
    if hasattr(task, "__fspath__"):
        return load_pairs(task)
    try:
        pairs = tuple((str(x), str(y)) for x, y in task)
    except (TypeError, ValueError):
        raise InputError("task must be a bundled task name, an IclTask, a pairs file path or (input, output) pairs"
                         ) from None
    if not pairs or any(not x.strip() or not y.strip() for x, y in pairs):
        raise InputError("task pairs must be a non-empty list of non-empty (input, output) strings")
    return IclTask("custom", pairs)


def split_pairs(pairs: Sequence[tuple[str, str]], *, n_shots: int, heldout_fraction: float = 0.3, seed: int = 0
                ) -> Split:
    """Seeded split; the build pairs must give every build prompt n_shots demonstrations besides its query."""
    check_count("n_shots", n_shots)
    if not 0 < heldout_fraction < 1:
        raise InputError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction!r}")
    n = len(pairs)
    n_heldout = max(1, round(heldout_fraction * n))
    if n - n_heldout < n_shots + 1:
        need = n_shots + 2
        while need - max(1, round(heldout_fraction * need)) < n_shots + 1:
            need += 1
        raise InputError(f"{n} pairs are too few to split: {n_heldout} held out leaves {n - n_heldout} to build "
                         f"from, and each build prompt needs {n_shots} demonstrations plus its query; give at least "
                         f"{need} pairs or fewer shots")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    heldout = tuple(pairs[i] for i in sorted(order[:n_heldout]))
    build = tuple(pairs[i] for i in sorted(order[n_heldout:]))
    return Split(build, heldout)


def few_shot_prompt(demos: Sequence[tuple[str, str]], query: str) -> str:
    return "".join(f"{x} -> {y}\n" for x, y in demos) + f"{query} ->"


def zero_shot_prompt(query: str) -> str:
    return f"{query} ->"


def answer_id(model, output: str) -> int:
    """The first token of ' ' + output: the token a right greedy answer starts with."""
    return model.tokenizer(" " + output, add_special_tokens=False)["input_ids"][0]


def token_check(model, pairs: Sequence[tuple[str, str]]) -> dict:
    """How loose the first-token rule is for this tokenizer: outputs of several tokens, and outputs whose first
    token is shared with another output of the task (first-token match cannot tell those apart)."""
    first: dict[int, list[str]] = {}
    multi = []
    for _, y in pairs:
        ids = model.tokenizer(" " + y, add_special_tokens=False)["input_ids"]
        first.setdefault(ids[0], []).append(y)
        if len(ids) > 1:
            multi.append(y)
    shared = sorted({y for ys in first.values() if len(ys) > 1 for y in ys})
    examples = [f"{y!r} -> {model.to_str_tokens(model.tokenizer(' ' + y, add_special_tokens=False)['input_ids'])}"
                for y in multi[:5]]
    return {"n_pairs": len(pairs), "n_multi_token": len(multi), "n_shared_first_token": len(shared),
            "shared_first_token": shared[:10], "multi_token_examples": examples}


@dataclass
class IclPrompts:
    """Every prompt set an experiment needs, made once from a split (seeded)."""
    split: Split
    n_shots: int
    clean: list[str]                       # few-shot prompts on build pairs (mean activations)
    clean_answers: list[int]
    shuffled: list[str]                    # the same kind with the demonstrations' outputs shuffled (CIE)
    shuffled_answers: list[int]
    zero_build: list[str]                  # zero-shot prompts of the build queries (layer selection)
    zero_build_answers: list[int]
    zero_heldout: list[str]                # zero-shot prompts of the held-out queries (reported)
    heldout_answers: list[int]
    few_heldout: list[str] = field(default_factory=list)   # few-shot prompts of held-out queries (ICL reference)
    shuffled_heldout: list[str] = field(default_factory=list)  # the same with the demonstrations' outputs shuffled


def make_prompts(model, split: Split, *, n_shots: int, n_clean: int, n_shuffled: int, seed: int) -> IclPrompts:
    rng = random.Random(seed + 1)
    build = list(split.build)

    def shuffled(demos):
        outputs = [y for _, y in demos]
        # a derangement where possible, so no demonstration keeps its own label
        for _ in range(100):
            rng.shuffle(outputs)
            if n_shots < 2 or all(o != y for o, (_, y) in zip(outputs, demos)):
                break
        return [(x, o) for (x, _), o in zip(demos, outputs)]

    def build_prompt(shuffle: bool) -> tuple[str, int]:
        q = rng.randrange(len(build))
        demos = rng.sample([p for i, p in enumerate(build) if i != q], n_shots)
        return few_shot_prompt(shuffled(demos) if shuffle else demos, build[q][0]), answer_id(model, build[q][1])

    clean = [build_prompt(False) for _ in range(n_clean)]
    shuffled_build = [build_prompt(True) for _ in range(n_shuffled)]
    few = [few_shot_prompt(rng.sample(build, n_shots), x) for x, _ in split.heldout]
    few_shuffled = [few_shot_prompt(shuffled(rng.sample(build, n_shots)), x) for x, _ in split.heldout]
    return IclPrompts(split, n_shots, [p for p, _ in clean], [a for _, a in clean], [p for p, _ in shuffled_build],
                      [a for _, a in shuffled_build], [zero_shot_prompt(x) for x, _ in build],
                      [answer_id(model, y) for _, y in build], [zero_shot_prompt(x) for x, _ in split.heldout],
                      [answer_id(model, y) for _, y in split.heldout], few, few_shuffled)


@torch.no_grad()
def last_logits_many(model, prompts: Sequence[str], edit_sets: Sequence, batch_size: int = 64
                     ) -> list[torch.Tensor]:
    """last_logits for each entry of `edit_sets` (callables giving edits that touch the LAST position only, or
    None). No earlier position can see an edit at the last one, so each batch's prefix (every token but the last)
    runs once into a key/value cache and each edit set runs the last token alone: the same logits as a full forward
    per edit set, to float round-off."""
    outs = [torch.empty(len(prompts), model.vocab_size) for _ in edit_sets]
    for idx, rows in length_groups(model, prompts, batch_size):
        ids = torch.tensor(rows, device=model.device)
        cache = None
        if ids.shape[1] > 1:
            cache = prefix_cache(model, ids[:, :-1])
        for out, make in zip(outs, edit_sets):
            with model.trace(edits=make() if make else ()):
                if cache is None:
                    logits = model.hf(input_ids=ids, use_cache=False).logits
                else:   # the layers append the last token to the cache they are given: each pass gets a copy
                    logits = model.hf(input_ids=ids[:, -1:], cache=copy.deepcopy(cache), use_cache=True).logits
            out[idx] = logits[:, -1].float().cpu()
    return outs


def at_last(site: str, vector: torch.Tensor, op: str = "add"):
    """An edit of `site` at the last position: add the vector, or replace the activation by it."""
    make = edits.add if op == "add" else edits.replace
    return lambda: [make(site, vector, positions=[-1])]


@dataclass
class LayerSweep:
    """Accuracy of zero-shot prompts with a vector at resid_post.L (last token), per layer (a part of the function-
    and task-vector results, written in their JSON field by field)."""
    layers: list[int]
    build: list[float]       # on build queries: the layer is chosen here
    heldout: list[float]     # on held-out queries: reported, never used for a choice
    layer: int               # the chosen layer: best build accuracy, ties broken by build_prob
    acc_heldout: float       # held-out accuracy at the chosen layer
    build_prob: list[float]  # mean P(answer's first token) on build queries
    heldout_prob: list[float]


def sweep_layers(model, prompts: IclPrompts, layers: list[int], vector_at, op: str) -> LayerSweep:
    """`vector_at(layer)` is the vector put at resid_post.layer ('add' or 'replace')."""
    build, heldout, build_prob, heldout_prob = [], [], [], []
    n = len(prompts.zero_build)
    both = prompts.zero_build + prompts.zero_heldout      # one pass per layer for both sets: the edit is the same
    per_layer = last_logits_many(model, both, [at_last(f"resid_post.{layer}", vector_at(layer), op)
                                               for layer in layers])
    for logits in per_layer:
        build.append(accuracy(logits[:n], prompts.zero_build_answers))
        heldout.append(accuracy(logits[n:], prompts.heldout_answers))
        build_prob.append(answer_prob(logits[:n], prompts.zero_build_answers))
        heldout_prob.append(answer_prob(logits[n:], prompts.heldout_answers))
    # accuracy is often flat (0 at every layer): the answer's probability breaks the ties, on build queries too
    best = max(range(len(layers)), key=lambda i: (build[i], build_prob[i], -i))
    return LayerSweep(layers, build, heldout, layers[best], heldout[best], build_prob, heldout_prob)
