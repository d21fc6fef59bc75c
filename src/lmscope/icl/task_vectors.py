"""Task vectors (Hendel et al. 2023, arXiv 2310.15916): in-context learning compresses the demonstrations into one
hidden state.

    tv_L = mean over few-shot build prompts (demonstrations + query) of resid_post.L at the last token
    patched run: the zero-shot prompt "query ->" with resid_post.L at its last token REPLACED by tv_L

Averaging over prompts with different queries keeps what the prompts share (the task) and washes out the query
(the paper uses one dummy query instead). The layer is swept; it is chosen on build queries, accuracy is reported
on held-out queries (first-token rule, see icl_vectors).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_layers
from lmscope.core.metrics import accuracy
from lmscope.core.runs import last_logits, mean_activations
from lmscope.icl.prompts import LayerSweep, make_prompts, resolve_task, split_pairs, sweep_layers, token_check
from lmscope.results.base import Result


def sweep_task_vectors(model, prompts, resid_means: dict[int, torch.Tensor], layers: list[int]) -> LayerSweep:
    return sweep_layers(model, prompts, layers, lambda layer: resid_means[layer].to(model.dtype), "replace")


@dataclass
class TaskVectorResult(Result, kind="task_vector"):
    model: str
    task: str
    n_build: int
    n_heldout: int
    n_shots: int
    n_mean_prompts: int
    seed: int
    acc_zero_shot: float
    acc_few_shot: float
    sweep: LayerSweep
    token_check: dict
    seconds: float

    def json_extras(self) -> dict:
        return {"layer": self.sweep.layer, "acc_with_tv": self.sweep.acc_heldout}

    def figure(self):
        return layer_figure(f"Task vector, {self.task} ({self.model})", [("task vector", self.sweep)],
                            self.acc_zero_shot, self.acc_few_shot)

    def title(self) -> str:
        return f"Task vector - {self.task}"

    def page_intro(self) -> str:
        return self.summary()

    def summary(self) -> str:
        s = self.sweep
        return (f"task vector | {self.model} | {self.task}: {self.n_build} build / {self.n_heldout} held-out pairs, "
                f"{self.n_shots} shots\nheld-out first-token accuracy: zero-shot {self.acc_zero_shot:.3f}, with the "
                f"task vector at resid_post.{s.layer} {s.acc_heldout:.3f} (layer chosen on build queries), "
                f"{self.n_shots}-shot {self.acc_few_shot:.3f}")


def layer_figure(title: str, sweeps: list[tuple[str, LayerSweep]], zero: float, few: float):
    """Accuracy by layer for each vector (build and held-out), with zero-shot and few-shot as reference lines."""
    fig = go.Figure()
    for name, s in sweeps:
        fig.add_trace(go.Scatter(x=s.layers, y=s.heldout, mode="lines+markers", name=f"{name}: held-out"))
        fig.add_trace(go.Scatter(x=s.layers, y=s.build, mode="lines", line={"dash": "dot"},
                                 name=f"{name}: build (chooses the layer)"))
    for name, s in sweeps:
        fig.add_trace(go.Scatter(x=s.layers, y=s.heldout_prob, mode="lines", line={"dash": "dash"},
                                 name=f"{name}: held-out mean P(answer)"))
    fig.add_hline(y=zero, line_dash="dash", line_color="grey", annotation_text=f"zero-shot {zero:.2f}")
    fig.add_hline(y=few, line_dash="dash", line_color="green", annotation_text=f"few-shot {few:.2f}")
    fig.update_layout(title=title, xaxis_title="layer L (vector at resid_post.L, last token)",
                      yaxis_title="first-token accuracy / P(answer)", yaxis_range=[0, 1.02], width=900, height=500)
    return fig


@torch.no_grad()
def task_vector(model, task, *, n_shots: int = 10, n_mean_prompts: int = 32, layers=None,
                heldout_fraction: float = 0.3, seed: int = 0) -> TaskVectorResult:
    """Task vectors of a task (bundled name, pairs file path, or (input, output) pairs), swept over layers."""
    start = time.perf_counter()
    task = resolve_task(task)
    layers = check_layers(model, layers)
    check_count("n_mean_prompts", n_mean_prompts)
    split = split_pairs(task.pairs, n_shots=n_shots, heldout_fraction=heldout_fraction, seed=seed)
    prompts = make_prompts(model, split, n_shots=n_shots, n_clean=n_mean_prompts, n_shuffled=0, seed=seed)
    means = mean_activations(model, prompts.clean, [f"resid_post.{layer}" for layer in layers])
    sweep = sweep_task_vectors(model, prompts, {layer: means[f"resid_post.{layer}"] for layer in layers}, layers)
    zero = accuracy(last_logits(model, prompts.zero_heldout), prompts.heldout_answers)
    few = accuracy(last_logits(model, prompts.few_heldout), prompts.heldout_answers)
    return TaskVectorResult(model.spec, task.name, len(split.build), len(split.heldout), n_shots, n_mean_prompts,
                            seed, zero, few, sweep, token_check(model, task.pairs), time.perf_counter() - start)
