"""Function vectors (Todd et al. 2024, arXiv 2310.15213): a few attention heads carry the task of an in-context
prompt; the sum of their outputs, added to a zero-shot prompt, makes the model do the task.

1. Mean head outputs: z.L[last token] (per-head attention output before the output projection), averaged in
   float64 over few-shot prompts of build pairs with correct labels.
2. Causal indirect effect (CIE) of head (L, h): on few-shot prompts whose demonstrations have SHUFFLED outputs,
       CIE = P(answer | z.L head h at the last token replaced by its mean) - P(answer | unpatched),
   averaged over prompts (answer = the first token of the query's true output). Only the last token is patched and
   no earlier position can see it, so each prompt's prefix (every token but the last) is run once and kept in a
   key/value cache; the patched passes run the last token alone, one batch row per (prompt, head). That is the same
   computation as one full forward per head (equal to float round-off, checked by the tests), ~prompt-length times
   cheaper.
3. Function vector = sum over the top heads by mean CIE of mean z_h @ W_O[:, h-slice]^T (what the head writes into
   the residual stream, without the projection's bias).
4. The FV is added to resid_post.L at the last token of zero-shot prompts "query ->"; L is swept, chosen on build
   queries (accuracy, ties broken by the mean probability of the answer), and accuracy is reported on held-out
   queries (icl_vectors: the first-token rule), on all of them and, as in the reference code of Todd et al., on
   those the model answers correctly n_shots-shot (zero-shot and + FV there). References on the same held-out
   queries: zero-shot, few-shot
   (n_shots build demonstrations), a random vector of the FV's norm at the chosen layer, and few-shot prompts with
   shuffled outputs without and with the FV (the paper's other test: does the FV restore the task?).

Gemma is refused: its post-attention norm acts on the sum of the heads, so a head's write is not z_h @ W_O alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from lmscope.core import edits
from lmscope.core.checks import check_count, check_layers
from lmscope.core.config import option, with_overrides
from lmscope.core.errors import InputError
from lmscope.core.metrics import accuracy
from lmscope.core.runs import last_logits, length_groups, mean_activations, on_cache, prefix_cache
from lmscope.icl.prompts import (LayerSweep, at_last, make_prompts, resolve_task, split_pairs, sweep_layers,
                                 token_check)
from lmscope.icl.task_vectors import layer_figure, sweep_task_vectors
from lmscope.results.base import Result
from lmscope.results.html import table


@dataclass
class FvConfig:
    """The options of `function_vector` (and of `lmscope fv`)."""
    n_shots: int = option(10, "demonstrations per few-shot prompt", flag="--shots")
    n_heads: int = option(10, "top heads (by CIE) summed into the function vector", flag="--heads")
    n_mean_prompts: int = option(32, "few-shot prompts for the mean activations", flag="--mean-prompts")
    n_cie_prompts: int = option(20, "shuffled-label prompts for the causal indirect effect", flag="--cie-prompts")
    layers: "list[int] | None" = option(None, "layers the vectors may go to (None: every layer)")
    heldout_fraction: float = option(0.3, "fraction of the pairs held out (reported only)", flag="--heldout")
    seed: int = option(0, "split and prompt sampling")
    with_task_vector: bool = option(True, "also sweep the task vector (Hendel et al. 2023)", flag="--task-vector")


@dataclass
class FunctionVectorResult(Result, kind="function_vector"):
    model: str
    task: str
    n_pairs: int
    n_build: int
    n_heldout: int
    n_shots: int
    n_mean_prompts: int
    n_cie_prompts: int
    seed: int
    cie: list[list[float]]              # [layer][head] mean causal indirect effect (probability)
    top_heads: list[list[int]]          # [[layer, head], ...] by CIE, largest first
    fv_norm: float
    sweep: LayerSweep                   # FV added at resid_post.L
    acc_zero_shot: float                # held-out, no edit
    acc_zero_shot_build: float
    acc_few_shot: float                 # held-out, n_shots build demonstrations
    acc_random_vector: float            # held-out, a random vector of the FV's norm at the chosen layer
    acc_shuffled: float                 # held-out queries after n_shots demonstrations with shuffled outputs
    acc_shuffled_with_fv: float         # the same, FV added at the chosen layer
    token_check: dict
    seconds: dict
    task_vector: "LayerSweep | None" = None
    vector: "torch.Tensor | None" = None   # the FV itself [d_model], model dtype
    config: "FvConfig | None" = None
    # Todd et al.'s filter: held-out queries the model answers correctly n_shots-shot (indices into the held-out
    # queries); the accuracies on them are null when there is none
    heldout_correct_few_shot: list[int] = field(default_factory=list)
    acc_zero_shot_filtered: "float | None" = None
    acc_with_fv_filtered: "float | None" = None

    @property
    def layer(self) -> int:
        return self.sweep.layer

    @property
    def acc_with_fv(self) -> float:
        return self.sweep.acc_heldout

    def json_extras(self) -> dict:
        out = {"layer": self.layer, "acc_with_fv": self.acc_with_fv,
               "top_heads_cie": [self.cie[la][h] for la, h in self.top_heads]}
        if self.task_vector is not None:
            out["acc_with_tv"] = self.task_vector.acc_heldout
        return out

    def figure(self):
        sweeps = [("function vector", self.sweep)] + ([("task vector", self.task_vector)] if self.task_vector
                                                      else [])
        return layer_figure(f"Function vector, {self.task} ({self.model}): zero-shot accuracy with a vector at "
                            f"layer L", sweeps, self.acc_zero_shot, self.acc_few_shot)

    def heads_figure(self):
        lim = max(1e-9, max(abs(v) for row in self.cie for v in row))
        fig = go.Figure(go.Heatmap(z=self.cie, x=[f"head {h}" for h in range(len(self.cie[0]))],
                                   y=[f"layer {la}" for la in range(len(self.cie))], colorscale="RdBu", zmid=0,
                                   zmin=-lim, zmax=lim, colorbar={"title": "CIE"}))
        fig.update_layout(title=f"Causal indirect effect per head ({self.n_cie_prompts} shuffled-label prompts)",
                          height=max(400, 18 * len(self.cie) + 150), width=700)
        return fig

    def figures(self) -> list:
        return [self.figure(), self.heads_figure()]

    def title(self) -> str:
        return f"Function vector - {self.task}"

    def page_intro(self) -> str:
        return self.summary()

    def page_body(self) -> str:
        rows = [["zero-shot", f"{self.acc_zero_shot:.3f}"],
                [f"zero-shot + FV at resid_post.{self.layer}", f"{self.acc_with_fv:.3f}"],
                [f"zero-shot + random vector (same norm) at resid_post.{self.layer}", f"{self.acc_random_vector:.3f}"],
                [f"{self.n_shots}-shot (reference)", f"{self.acc_few_shot:.3f}"],
                [f"{self.n_shots}-shot, shuffled outputs", f"{self.acc_shuffled:.3f}"],
                [f"{self.n_shots}-shot, shuffled outputs + FV at resid_post.{self.layer}",
                 f"{self.acc_shuffled_with_fv:.3f}"]]
        if self.task_vector is not None:
            rows.insert(2, [f"zero-shot, task vector at resid_post.{self.task_vector.layer}",
                            f"{self.task_vector.acc_heldout:.3f}"])
        heads = table(["layer", "head", "CIE"], [[la, h, f"{self.cie[la][h]:+.4f}"] for la, h in self.top_heads])
        rows.append([f"zero-shot / + FV on the {len(self.heldout_correct_few_shot)} held-out queries answered "
                     f"correctly {self.n_shots}-shot (Todd et al.'s filter)", self._filtered_text()])
        return table([f"held-out first-token accuracy ({self.n_heldout} queries)", "accuracy"], rows) + heads

    def _filtered_text(self) -> str:
        if self.acc_with_fv_filtered is None:
            return f"none answered correctly {self.n_shots}-shot"
        return f"{self.acc_zero_shot_filtered:.3f} -> {self.acc_with_fv_filtered:.3f}"

    def summary(self) -> str:
        heads = " ".join(f"{la}.{h}" for la, h in self.top_heads)
        build = self.sweep.build[self.sweep.layers.index(self.layer)]
        lines = [f"function vector | {self.model} | {self.task}: {self.n_build} build / {self.n_heldout} held-out "
                 f"pairs, {self.n_shots} shots, CIE on {self.n_cie_prompts} shuffled-label prompts",
                 f"top heads (layer.head): {heads}; |FV| {self.fv_norm:.3f}",
                 f"held-out first-token accuracy: zero-shot {self.acc_zero_shot:.3f} | + FV at resid_post."
                 f"{self.layer} {self.acc_with_fv:.3f} (layer chosen on build queries, there {build:.3f}) "
                 f"| + random vector {self.acc_random_vector:.3f} | {self.n_shots}-shot {self.acc_few_shot:.3f}",
                 f"on the {len(self.heldout_correct_few_shot)} held-out queries answered correctly {self.n_shots}-shot "
                 f"(Todd et al.'s filter): zero-shot -> + FV {self._filtered_text()}",
                 f"{self.n_shots}-shot with shuffled outputs: {self.acc_shuffled:.3f}, "
                 f"+ FV {self.acc_shuffled_with_fv:.3f}"]
        if self.task_vector is not None:
            lines.append(f"task vector: replacing resid_post.{self.task_vector.layer} -> held-out "
                         f"{self.task_vector.acc_heldout:.3f}")
        tc = self.token_check
        lines.append(f"first-token rule: {tc['n_multi_token']} of {tc['n_pairs']} outputs are several tokens, "
                     f"{tc['n_shared_first_token']} share their first token with another output")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


def head_writes(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """What each head writes into the residual stream: z [heads, d_head] -> [heads, d_model] (no bias)."""
    w_h, _ = model.head_write_weights(layer, "function vectors")      # residual scale included (Granite)
    return torch.einsum("hk,dhk->hd", z, w_h.to(z.dtype))


# rows of one resumed CIE pass (prompts x heads x layers of a group), see causal_indirect_effects; on the default
# model on CPU (4 ten-shot prompts of 43-45 tokens, one a pass, 9 heads a layer) 270 heads took 8.0 s at 1 layer a
# pass, 5.2 at 3, 5.0 at 5, 5.0 at 8, 5.7 at 15 (the cached prefix is copied for every row)
MAX_CIE_ROWS = 64


@torch.no_grad()
def causal_indirect_effects(model, prompts: list[str], answers: list[int], mean_z: torch.Tensor, *,
                            progress: bool = False, resume: bool = True, layers_per_pass: int = 0) -> torch.Tensor:
    """[layers, heads] float64 mean over prompts of P(answer | head's z at the last token := mean_z[layer, head]) -
    P(answer | unpatched); mean_z is [layers, heads, d_head].

    One forward pass per group of layers and length group: the batch holds every prompt once per (layer of the
    group, head), and row (prompt, layer, h) patches head h of that layer only (rows of a batch never see each
    other, so this is one forward per head, batched). A patch at layer L changes nothing below it, so the pass
    resumes from the last token's clean resid_pre at the group's lowest layer (read once in the unpatched pass);
    the last token alone is a few rows, so a pass costs reading the weights more than computing, and several
    layers share one (layers_per_pass; 0: as many as fit in MAX_CIE_ROWS rows). resume=False runs one pass per
    layer through every layer (the same numbers to float round-off, slower).
    """
    check_count("layers_per_pass", layers_per_pass, 0)
    n_layers, n_heads = model.n_layers, model.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    groups = length_groups(model, prompts, batch_size=16)
    bar = tqdm(total=n_layers * n_heads * len(prompts), desc="CIE", unit="head-prompt", disable=not progress)
    try:
        for idx, rows in groups:
            ids = torch.tensor(rows, device=model.device)
            if ids.shape[1] < 2:
                raise InputError("a CIE prompt needs at least two tokens")
            n, length = ids.shape
            answer = torch.tensor([answers[i] for i in idx], device=model.device)
            cache = prefix_cache(model, ids[:, :-1])
            base, starts = _last_token_probs(model, ids[:, -1:], cache, answer, (), read=resume)
            per_pass = 1 if not resume else layers_per_pass or max(1, MAX_CIE_ROWS // (n * n_heads))
            for first in range(0, n_layers, per_pass):
                group = list(range(first, min(n_layers, first + per_pass)))
                copies = len(group) * n_heads          # row p * copies + g * n_heads + h: prompt p, layer group[g]
                copy_of_row = torch.arange(n * copies, device=model.device) % copies
                patch = []
                for g, layer in enumerate(group):
                    for h in range(n_heads):
                        mask = torch.zeros(n * copies, length, dtype=torch.bool, device=model.device)
                        mask[copy_of_row == g * n_heads + h, -1] = True
                        patch.append(edits.replace(f"z.{layer}", mean_z[layer, h].to(model.dtype), heads=[h],
                                                   positions=mask))
                start = (first, starts[first].repeat_interleave(copies, dim=0)) if resume else None
                probs, _ = _last_token_probs(model, ids[:, -1:].repeat_interleave(copies, dim=0), cache,
                                             answer.repeat_interleave(copies), patch, resume=start, rows=copies)
                total[first:first + len(group)] += (probs.view(n, len(group), n_heads)
                                                    - base[:, None, None]).sum(0).cpu()
                bar.update(n * copies)
    finally:
        bar.close()
    return total / len(prompts)


def _last_token_probs(model, last_ids, cache, answer, patch, *, read: bool = False, resume=None, rows: int = 1):
    """P(answer) after running the last token on top of a cached prefix (the cache itself is left unchanged: the
    layers append to the copy they are given), each cache row repeated `rows` times (row b * rows + j), and with
    read=True the last token's resid_pre at every layer."""
    sites = [f"resid_pre.{layer}" for layer in range(model.n_layers)] if read else []
    with model.trace(read=sites, edits=patch, resume=resume) as tr:
        out = model.hf(input_ids=last_ids, **on_cache(model, cache, rows))
    probs = out.logits[:, -1].double().softmax(-1)[torch.arange(len(answer), device=answer.device), answer]
    return probs, [tr[site] for site in sites]


@torch.no_grad()
def function_vector(model, task, config: "FvConfig | None" = None, *, progress: bool = False,
                    **overrides) -> FunctionVectorResult:
    """Function vector of a task (bundled name, pairs file path, or (input, output) pairs); see the module doc.
    Options: an FvConfig, or its fields as keyword overrides (`layers`: where the FV and task vector may go,
    default every layer)."""
    config = with_overrides(FvConfig, config, overrides)
    n_shots, n_heads, n_mean_prompts = config.n_shots, config.n_heads, config.n_mean_prompts
    n_cie_prompts, layers, seed = config.n_cie_prompts, config.layers, config.seed
    heldout_fraction, with_task_vector = config.heldout_fraction, config.with_task_vector
    if model.adapter.nonadditive_heads:
        raise InputError(f"function vectors need each head's write into the residual stream, which is not defined "
                         f"here: {model.adapter.nonadditive_heads} (task vectors work: lmscope.icl.task_vector)")
    task = resolve_task(task)
    layers = check_layers(model, layers)
    check_count("n_mean_prompts", n_mean_prompts)
    check_count("n_cie_prompts", n_cie_prompts)
    check_count("n_heads", n_heads)
    if n_heads > model.n_layers * model.n_heads:
        raise InputError(f"n_heads {n_heads} exceeds the model's {model.n_layers * model.n_heads} heads")
    split = split_pairs(task.pairs, n_shots=n_shots, heldout_fraction=heldout_fraction, seed=seed)
    seconds = {}
    t = time.perf_counter()
    prompts = make_prompts(model, split, n_shots=n_shots, n_clean=n_mean_prompts, n_shuffled=n_cie_prompts,
                           seed=seed)
    sites = ["z.*"] + ([f"resid_post.{layer}" for layer in layers] if with_task_vector else [])
    means = mean_activations(model, prompts.clean, sites)
    mean_z = torch.stack([means[f"z.{layer}"] for layer in range(model.n_layers)])      # [L, H, d_head] float64
    seconds["means"] = time.perf_counter() - t

    t = time.perf_counter()
    cie = causal_indirect_effects(model, prompts.shuffled, prompts.shuffled_answers, mean_z, progress=progress)
    seconds["cie"] = time.perf_counter() - t

    t = time.perf_counter()
    flat = cie.flatten().argsort(descending=True, stable=True)[:n_heads].tolist()
    top = [[i // model.n_heads, i % model.n_heads] for i in flat]
    fv = torch.zeros(model.d_model, dtype=torch.float64)
    for layer, head in top:
        fv += head_writes(model, layer, mean_z[layer])[head].cpu()
    vector = fv.to(model.dtype)
    sweep = sweep_layers(model, prompts, layers, lambda layer: vector, "add")
    zero_logits = last_logits(model, prompts.zero_heldout)
    zero = accuracy(zero_logits, prompts.heldout_answers)
    zero_build = accuracy(last_logits(model, prompts.zero_build), prompts.zero_build_answers)
    few_logits = last_logits(model, prompts.few_heldout)
    few = accuracy(few_logits, prompts.heldout_answers)
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(model.d_model, generator=g, dtype=torch.float64)
    rand = (rand * fv.norm() / rand.norm()).to(model.dtype)
    site = f"resid_post.{sweep.layer}"
    acc_rand = accuracy(last_logits(model, prompts.zero_heldout, at_last(site, rand)), prompts.heldout_answers)
    acc_shuffled = accuracy(last_logits(model, prompts.shuffled_heldout), prompts.heldout_answers)
    acc_shuffled_fv = accuracy(last_logits(model, prompts.shuffled_heldout, at_last(site, vector)),
                               prompts.heldout_answers)
    correct, zero_f, fv_f = _few_shot_filtered(model, prompts, few_logits, zero_logits, site, vector)
    seconds["fv_sweep"] = time.perf_counter() - t

    tv = None
    if with_task_vector:
        t = time.perf_counter()
        tv = sweep_task_vectors(model, prompts, {layer: means[f"resid_post.{layer}"] for layer in layers}, layers)
        seconds["tv_sweep"] = time.perf_counter() - t
    return FunctionVectorResult(model.spec, task.name, len(task.pairs), len(split.build), len(split.heldout), n_shots,
                                n_mean_prompts, n_cie_prompts, seed, cie.tolist(), top, float(fv.norm()), sweep,
                                zero, zero_build, few, acc_rand, acc_shuffled, acc_shuffled_fv,
                                token_check(model, task.pairs), seconds, tv,
                                vector, config, correct, zero_f, fv_f)


def _few_shot_filtered(model, prompts, few_logits, zero_logits, site, vector):
    """Todd et al.'s filter: the held-out queries whose few-shot prediction is right; zero-shot and + FV accuracy on
    exactly those (None, None where there is none)."""
    answers = prompts.heldout_answers
    correct = [i for i, (top, a) in enumerate(zip(few_logits.argmax(-1).tolist(), answers)) if top == a]
    if not correct:
        return correct, None, None
    kept = [answers[i] for i in correct]
    zero = accuracy(zero_logits[correct], kept)
    with_fv = accuracy(last_logits(model, [prompts.zero_heldout[i] for i in correct], at_last(site, vector)), kept)
    return correct, zero, with_fv
