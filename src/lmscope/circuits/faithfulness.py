"""Faithfulness of a circuit: how much of the model's task metric the circuit alone carries.

    faithfulness  F(C) = (m(C) - m(empty)) / (m(M) - m(empty))
m(M): the model (every node kept); m(empty): every node ablated; m(C): only C kept, every other node ablated
(sufficiency); m(M without C): only C ablated (necessity), reported as the normalised drop
    necessity_drop = (m(M) - m(M without C)) / (m(M) - m(empty)).
The baseline: random circuits with as many heads as C (drawn uniformly, seeded) and the same MLPs as C.
m is the task's metric averaged over its prompts (float64). Ablation = replacement by the task means of
lmscope.circuits.means (or zero ablation, reported as such).
When m(M) and m(empty) are equal or nearly (|gap| <= UNDEFINED_GAP x max(1, |m(M)|, |m(empty)|), one tolerance),
every normalised number is undefined: null in the JSON, "undefined" in the summary, and the result says why.
"""
from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch

from lmscope.core.errors import InputError
from lmscope.results.base import Result
from lmscope.results.html import table
from lmscope.circuits.nodes import gate_edits, head_gates


def gated_logits(model, task, means, heads, mlps, rows=None, *, which: str = "clean", batch_size: int = 32,
                 grad: bool = False) -> torch.Tensor:
    """Logits [n, vocab] at each prompt's last real token with every node gated: heads [n_layers, n_heads] and mlps
    [n_layers] weights in [0, 1] (1 kept, 0 ablated to the mean). With grad=True the gates may require grad."""
    if which not in ("clean", "corrupt"):
        raise InputError(f"which must be 'clean' or 'corrupt', got {which!r}")
    side = task.clean if which == "clean" else task.corrupt
    rows = list(range(len(task))) if rows is None else list(rows)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids = [side[r] for r in chunk]
        seq = max(len(r) for r in ids)
        last = torch.tensor([len(r) - 1 for r in ids], device=model.device)
        keep = torch.unique(last)   # the lm_head runs only where some prompt ends
        edits = gate_edits(model, means, heads, mlps, means.groups_for(task, chunk), seq)
        run = model.run(ids, edits=edits, grad=grad, forward_kwargs={"logits_to_keep": keep})
        out.append(run.logits[torch.arange(len(chunk), device=model.device), torch.searchsorted(keep, last)])
    return torch.cat(out)


def gated_metric(model, task, means, heads, mlps, **kwargs) -> torch.Tensor:
    """Per-prompt task metric [n] under the gates (see gated_logits)."""
    return task.metric(gated_logits(model, task, means, heads, mlps, **kwargs))


UNDEFINED_GAP = 1e-4   # relative: a smaller gap between the model and the empty circuit normalises nothing


def gap_is_undefined(m_full: float, m_empty: float) -> bool:
    """True when m(M) - m(empty) is too small (or not finite) to normalise by: the one tolerance of this module."""
    gap = m_full - m_empty
    return not math.isfinite(gap) or abs(gap) <= UNDEFINED_GAP * max(1.0, abs(m_full), abs(m_empty))


def normalised(m_c: float, m_full: float, m_empty: float) -> float:
    """(m_c - m_empty) / (m_full - m_empty); NaN (null in the JSON) where the gap is undefined."""
    return float("nan") if gap_is_undefined(m_full, m_empty) else (m_c - m_empty) / (m_full - m_empty)


def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "undefined"


@dataclass
class FaithfulnessResult(Result, kind="circuit_faithfulness"):
    task: str
    model: str
    method: str
    ablation: str                  # lmscope.circuits.means.ABLATIONS: mean (by group and position) or zero
    n_prompts: int
    heads: list[list[int]]         # [[layer, head], ...] kept
    mlps: list[int]
    heads_total: int
    mlps_total: int
    metric_name: str
    metric_full: float
    metric_empty: float
    metric_circuit: float
    metric_without_circuit: float
    faithfulness: float
    necessity_drop: float
    random_faithfulness: float     # mean over draws
    random_std: float
    random_draws: list[float]
    accuracy_full: float
    accuracy_circuit: float
    curve: list[dict] = field(default_factory=list)   # [{"heads": k, "faithfulness": F, ...}], held-out prompts
    notes: list[str] = field(default_factory=list)
    undefined_reason: str = ""     # why faithfulness, necessity_drop and the random baseline are null (if they are)
    training: dict = field(default_factory=dict)      # prune: sizes, steps, lambda, loss history, seconds

    @property
    def heads_kept(self) -> int:
        return len(self.heads)

    def json_extras(self) -> dict:
        return {"heads_kept": self.heads_kept}

    def summary(self) -> str:
        lines = [f"circuit | {self.model} | task {self.task} | method {self.method} | {self.n_prompts} prompts | "
                 f"ablation: {self.ablation}",
                 f"circuit: {self.heads_kept}/{self.heads_total} heads, {len(self.mlps)}/{self.mlps_total} MLPs",
                 f"{self.metric_name}: model {self.metric_full:.4f}  empty {self.metric_empty:.4f}  "
                 f"circuit {self.metric_circuit:.4f}  model without circuit {self.metric_without_circuit:.4f}",
                 f"faithfulness {_fmt(self.faithfulness)}  |  random circuits of the same size "
                 f"{_fmt(self.random_faithfulness)} +- {_fmt(self.random_std)} ({len(self.random_draws)} draws)  |  "
                 f"necessity drop {_fmt(self.necessity_drop)}",
                 f"accuracy: model {self.accuracy_full:.3f}, circuit {self.accuracy_circuit:.3f}"]
        if self.curve:
            lines.append(f"faithfulness vs size (top-k heads by score, with the circuit's {len(self.mlps)} MLPs):")
            for p in self.curve:
                lines.append(f"  {p['heads']:>4} heads  F = {_fmt(p['faithfulness'])}")
        if self.training:
            t = self.training
            lines.append(f"found on {t.get('n_train')} train prompts, every number above on {t.get('n_heldout')} "
                         f"held-out prompts; {t.get('seconds', 0):.0f} s"
                         + (f"; {t['steps']} steps, head target {t.get('target_heads')}, gates left "
                            f"{t.get('gates_on')} heads on" if "steps" in t else ""))
        lines += self.notes + ([f"undefined: {self.undefined_reason}"] if self.undefined_reason else [])
        return "\n".join(lines)

    def figure(self):
        fig = go.Figure()
        if self.curve:
            fig.add_trace(go.Scatter(x=[p["heads"] for p in self.curve], y=[p["faithfulness"] for p in self.curve],
                                     mode="lines+markers", name="top-k heads"))
        fig.add_trace(go.Scatter(x=[self.heads_kept], y=[self.faithfulness], mode="markers", name="circuit",
                                 marker={"size": 14, "symbol": "star"}))
        fig.add_trace(go.Scatter(x=[self.heads_kept] * len(self.random_draws), y=self.random_draws, mode="markers",
                                 name="random, same size", marker={"color": "grey"}))
        fig.update_layout(title=f"Faithfulness vs circuit size - {self.task} ({self.method})",
                          xaxis_title=f"heads kept (of {self.heads_total})", yaxis_title="normalised faithfulness",
                          width=800, height=450)
        return fig

    def title(self) -> str:
        return f"Circuit faithfulness - {self.task}"

    def page_intro(self) -> str:
        return f"{self.model}, method {self.method}, {self.n_prompts} prompts."

    def page_body(self) -> str:
        rows = [[run, f"{value:.4f}"] for run, value in (
            ("model", self.metric_full), ("empty", self.metric_empty), ("circuit", self.metric_circuit),
            ("model without circuit", self.metric_without_circuit))]
        return f"<pre>{html.escape(self.summary())}</pre>" + table(["run", self.metric_name], rows)


def _mean(x: torch.Tensor) -> float:
    return float(x.double().mean())


@torch.no_grad()
def evaluate_circuit(model, task, means, heads, mlps, *, method: str = "given", ablation: str = "mean",
                     n_random: int = 10, seed: int = 0, batch_size: int = 32, sizes=(), ranking=None
                     ) -> FaithfulnessResult:
    """Sufficiency, necessity and the random baseline of the circuit given as 0/1 gates, on `task`'s prompts.
    `ranking`: heads [(layer, head), ...] best first, for the faithfulness-vs-size curve at each k in `sizes`."""
    heads, mlps = heads.to(model.dtype), mlps.to(model.dtype)
    for gate in (heads, mlps):
        if not bool(((gate == 0) | (gate == 1)).all()):
            raise InputError("a circuit's gates must be exactly 0 or 1")
    ones_h, ones_m = torch.ones_like(heads), torch.ones_like(mlps)

    def metric(h, m):
        logits = gated_logits(model, task, means, h, m, batch_size=batch_size)
        return task.metric(logits), task.accuracy(logits)

    full, acc_full = metric(ones_h, ones_m)
    empty, _ = metric(torch.zeros_like(heads), torch.zeros_like(mlps))
    m_full, m_empty = _mean(full), _mean(empty)
    circ, acc_c = metric(heads, mlps)
    without, _ = metric(ones_h - heads, ones_m - mlps)
    m_c, m_wo = _mean(circ), _mean(without)
    gen = torch.Generator().manual_seed(seed)
    k = int(heads.sum())
    draws = []
    for _ in range(n_random):
        pick = torch.randperm(heads.numel(), generator=gen)[:k]
        rand = torch.zeros(heads.numel(), dtype=model.dtype)
        rand[pick] = 1
        draws.append(normalised(_mean(metric(rand.view_as(heads), mlps)[0]), m_full, m_empty))
    curve = []
    if ranking is not None:
        for size in sizes:
            if size > len(ranking):
                continue
            h = head_gates(heads, ranking[:size])
            curve.append({"heads": int(size),
                          "faithfulness": normalised(_mean(metric(h, mlps)[0]), m_full, m_empty)})
    undefined = gap_is_undefined(m_full, m_empty)
    reason = (f"the model ({m_full:.6g}) and the empty circuit ({m_empty:.6g}) score the same within "
              f"{UNDEFINED_GAP:g} (relative): there is no effect to normalise by" if undefined else "")
    nan = float("nan")
    corruption = getattr(task, "info", {}).get("corrupt")     # built-in tasks say how their corrupt prompts differ
    return FaithfulnessResult(
        task=task.name, model=model.spec, method=method, ablation=ablation, n_prompts=len(task),
        heads=[[int(a), int(b)] for a, b in (heads == 1).nonzero().tolist()],
        mlps=[int(x) for x in (mlps == 1).nonzero().flatten().tolist()], heads_total=heads.numel(),
        mlps_total=mlps.numel(), metric_name=task.metric_name, metric_full=m_full, metric_empty=m_empty,
        metric_circuit=m_c, metric_without_circuit=m_wo, faithfulness=normalised(m_c, m_full, m_empty),
        necessity_drop=nan if undefined else (m_full - m_wo) / (m_full - m_empty),
        random_faithfulness=statistics.fmean(draws) if draws and not undefined else nan,
        random_std=nan if undefined or not draws else statistics.pstdev(draws) if len(draws) > 1 else 0.0,
        random_draws=draws,
        accuracy_full=float(acc_full.double().mean()), accuracy_circuit=float(acc_c.double().mean()),
        curve=curve, notes=[f"corruption: {corruption}"] if corruption else [],
        undefined_reason=reason)
