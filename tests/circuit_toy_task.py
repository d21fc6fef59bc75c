"""A small task on random token ids that follows the circuit task contract (/work/briefs/circuit_tasks.md), so
the pruning and faithfulness tests run on random-init models without the IOI builder."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ToyTask:
    name: str
    clean: list
    corrupt: list
    answer: list
    wrong: list
    templates: list
    metric_name: str = "logit_diff"
    n_filtered: int = 0
    filtered: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clean)

    def metric(self, logits_last: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(len(self.answer), device=logits_last.device)
        a = torch.tensor(self.answer, device=logits_last.device)
        w = torch.tensor(self.wrong, device=logits_last.device)
        return logits_last[idx, a] - logits_last[idx, w]

    def accuracy(self, logits_last):
        return self.metric(logits_last) > 0

    def subset(self, index) -> "ToyTask":
        index = list(index)
        pick = lambda xs: [xs[i] for i in index]  # noqa: E731
        return ToyTask(self.name, pick(self.clean), pick(self.corrupt), pick(self.answer), pick(self.wrong),
                       pick(self.templates), self.metric_name)

    def split(self, n_train: int, seed: int = 0):
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        return self.subset(order[:n_train]), self.subset(order[n_train:])


def toy_task(n: int = 12, seed: int = 0, vocab: int = 256, lengths=(7, 9)) -> ToyTask:
    """n prompts in len(lengths) templates (one length each); corrupt = clean with two tokens changed."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, answer, wrong, templates = [], [], [], [], []
    for i in range(n):
        t = i % len(lengths)
        row = torch.randint(0, vocab, (lengths[t],), generator=g).tolist()
        bad = list(row)
        for j in (1, 3):
            bad[j] = (row[j] + 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))) % vocab
        a, w = torch.randperm(vocab, generator=g)[:2].tolist()
        clean.append(row), corrupt.append(bad), answer.append(a), wrong.append(w), templates.append(t)
    return ToyTask("toy", clean, corrupt, answer, wrong, templates)


def with_signal(task: ToyTask, model) -> ToyTask:
    """The same prompts with answer / wrong = the model's most / least likely next token, so the metric is large
    even on a random-init model (the mask training then has something to keep)."""
    import torch
    ids, mask = model.encode(task.clean)
    with torch.no_grad():
        logits = model.run(task.clean).logits[torch.arange(len(task)), mask.sum(1) - 1]
    return ToyTask(task.name, task.clean, task.corrupt, logits.argmax(-1).tolist(), logits.argmin(-1).tolist(),
                   task.templates)
