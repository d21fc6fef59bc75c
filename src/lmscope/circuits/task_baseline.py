"""How well the unedited model does a circuit task: the metric and accuracy on the clean and the corrupt prompts."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch

from lmscope.results.base import Result
from lmscope.results.html import table
from lmscope.circuits.tasks import TaskSet, task_logits


@dataclass
class TaskBaseline(Result, kind="circuit_task"):
    model: str
    task: str
    metric_name: str
    n: int
    n_filtered: int
    filtered: dict[str, int]
    clean_mean: float
    clean_std: float
    corrupt_mean: float
    clean_accuracy: float            # fraction with metric > 0 on the clean prompts
    corrupt_accuracy: float          # the same judged on the corrupt prompts (same answer and wrong tokens)
    by_template: dict[int, dict[str, float]]    # template -> {"n", "clean_mean", "clean_accuracy"}
    examples: list[dict] = field(default_factory=list)   # a few prompts with their tokens and metric

    def figure(self):
        keys = sorted(self.by_template)
        fig = go.Figure(go.Bar(x=[f"template {k}" for k in keys],
                               y=[self.by_template[k]["clean_mean"] for k in keys]))
        fig.update_layout(title=f"{self.task}: mean clean {self.metric_name} per template", height=420, width=800)
        return fig

    def title(self) -> str:
        return f"Task baseline - {self.task}"

    def page_intro(self) -> str:
        return self.summary()

    def page_body(self) -> str:
        rows = [[e["clean"], e["corrupt"], e["answer"], e["wrong"], f"{e['metric']:.3f}"] for e in self.examples]
        return table(["clean", "corrupt", "answer", "wrong", self.metric_name], rows)

    def summary(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in self.filtered.items()) or "none"
        lines = [f"task {self.task} | {self.model} | {self.n} prompts (filtered {self.n_filtered}: {drops})",
                 f"{self.metric_name}: clean {self.clean_mean:.4f} (sd {self.clean_std:.4f}), corrupt "
                 f"{self.corrupt_mean:.4f}",
                 f"accuracy (metric > 0): clean {self.clean_accuracy:.3f}, corrupt {self.corrupt_accuracy:.3f}"]
        for e in self.examples[:3]:
            lines.append(f"  {e['clean']!r} -> {e['answer']!r} vs {e['wrong']!r}: {e['metric']:+.3f}")
        return "\n".join(lines)


@torch.no_grad()
def task_baseline(model, task: TaskSet, *, batch_size: int = 32, n_examples: int = 5) -> TaskBaseline:
    clean = task.metric(task_logits(model, task, batch_size=batch_size)).double()
    corrupt = task.metric(task_logits(model, task, which="corrupt", batch_size=batch_size)).double()
    by_template: dict[int, dict[str, float]] = {}
    for t in sorted(set(task.templates)):
        idx = torch.tensor([i for i, x in enumerate(task.templates) if x == t])
        by_template[t] = {"n": len(idx), "clean_mean": float(clean[idx].mean()),
                          "clean_accuracy": float((clean[idx] > 0).double().mean())}
    decode = model.tokenizer.decode
    examples = [{"clean": decode(task.clean[i]), "corrupt": decode(task.corrupt[i]),
                 "answer": decode([task.answer[i]]), "wrong": decode([task.wrong[i]]), "metric": float(clean[i])}
                for i in range(min(n_examples, len(task)))]
    return TaskBaseline(model.spec, task.name, task.metric_name, len(task), task.n_filtered, dict(task.filtered),
                        float(clean.mean()), statistics.pstdev(clean.tolist()) if len(task) > 1 else 0.0,
                        float(corrupt.mean()), float((clean > 0).double().mean()),
                        float((corrupt > 0).double().mean()), by_template, examples)
