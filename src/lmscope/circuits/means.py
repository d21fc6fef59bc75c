"""What a pruned node is replaced with: mean activations of every node over a REFERENCE set of a task's prompts, zero,
or (interchange ablation, Bhaskar et al. 2024's Edge Pruning) the node's activation on the corrupt prompt of the same
pair.

Which activations: per-head outputs (z.L, before the output projection) and MLP outputs (mlp_out.L), over the real
tokens of the task's clean AND corrupt prompts (both halves of the distribution), accumulated in float64.
Which positions: one mean per (group, token position), a group being the prompts that share a template id and a
token length (a built-in task's template fixes both; a pairs file has one template, so its prompts group by length).
Prompts of a group have their token roles at the same places (names, years), so a pruned node still gets the right
position's average. A group of fewer than `min_group` prompts would be averaged mostly over itself; its prompts use
the pooled group instead: every prompt of the task, per absolute position, over the prompts long enough to have it.
The reference set is never the set that is scored: finding a circuit takes the means from its train split, and
evaluating a saved circuit from a seeded half of the given prompts, scoring the other half (lmscope.circuits.run).
Evaluated prompts whose (template, length) group is not in the reference set use the pooled group; positions past
the longest reference prompt get zero (`coverage` counts both, and results say so).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmscope.core.errors import InputError

ABLATIONS = {"mean": "mean over the reference (train) prompts, per template-and-length group and position, clean+corrupt",
             "zero": "zero",
             "corrupt": "interchange: the node's activation on the corrupt prompt of the same pair (Edge Pruning)"}


@dataclass
class TaskMeans:
    z: torch.Tensor          # [groups, positions, n_layers, n_heads, d_head], model dtype
    mlp: torch.Tensor        # [groups, positions, n_layers, d_model]
    counts: torch.Tensor     # [groups, positions]: activations averaged (clean and corrupt prompts together)
    group_of: dict           # (template id, token length) -> group index; any other prompt -> 0, the pooled group
    by_template: bool

    @property
    def positions(self) -> int:
        return self.z.shape[1]

    def groups_for(self, task, rows) -> list[int]:
        """The mean group of each of the task's `rows`."""
        if not self.by_template:
            return [0] * len(rows)
        keys = group_keys(task)
        return [self.group_of.get(keys[r], 0) for r in rows]

    def values(self, groups: list[int], seq: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [batch, seq, heads, d_head], mlp [batch, seq, d_model]) for rows of the given groups, padded with zeros
        past the longest prompt (those positions are padding, never read)."""
        g = torch.tensor(groups, device=self.z.device)
        n = min(seq, self.positions)
        z, mlp = self.z[g, :n, layer], self.mlp[g, :n, layer]
        if seq > n:
            z = torch.cat([z, z.new_zeros(z.shape[0], seq - n, *z.shape[2:])], 1)
            mlp = torch.cat([mlp, mlp.new_zeros(mlp.shape[0], seq - n, *mlp.shape[2:])], 1)
        return z, mlp


def group_keys(task) -> list[tuple[int, int]]:
    """(template id, token length) per prompt; template 0 throughout when the task has no template per prompt."""
    t = getattr(task, "templates", None)
    t = list(t) if t is not None and len(t) == len(task) else [0] * len(task)
    return [(t[i], len(task.clean[i])) for i in range(len(task))]


@torch.no_grad()
def task_means(model, task, *, by_template: bool = True, min_group: int = 4, batch_size: int = 32) -> TaskMeans:
    """Mean z.L and mlp_out.L of every layer over the clean and corrupt prompts of `task` (see the module doc)."""
    if len(task) == 0:
        raise InputError("no prompts to compute means over")
    keys = group_keys(task)
    sizes: dict = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    big = sorted(k for k, c in sizes.items() if c >= min_group) if by_template else []
    group_of = {k: i + 1 for i, k in enumerate(big)}      # 0 is the pooled group
    rows_group = [group_of.get(k, 0) for k in keys]
    longest = max(max(len(c) for c in task.clean), max(len(c) for c in task.corrupt))
    n, heads, dh, d = model.n_layers, model.n_heads, model.d_head, model.d_model
    dev, n_groups = model.device, 1 + len(big)
    z_sum = torch.zeros(n_groups, longest, n, heads, dh, dtype=torch.float64, device=dev)
    mlp_sum = torch.zeros(n_groups, longest, n, d, dtype=torch.float64, device=dev)
    counts = torch.zeros(n_groups, longest, dtype=torch.float64, device=dev)
    read = [f"z.{layer}" for layer in range(n)] + [f"mlp_out.{layer}" for layer in range(n)]
    for start in range(0, len(task), batch_size):
        rows = list(range(start, min(start + batch_size, len(task))))
        g = torch.tensor([rows_group[r] for r in rows], device=dev)
        grouped = g != 0                  # these rows count in their own group AND in the pooled one
        for side in (task.clean, task.corrupt):
            run = model.run([side[r] for r in rows], read=read, stop_early=True)
            mask = run.attention_mask.to(torch.float64)               # [b, seq]: real tokens only
            seq = mask.shape[1]
            z = torch.stack([run.acts[f"z.{layer}"] for layer in range(n)], 2).double()      # [b, s, L, H, dh]
            mlp = torch.stack([run.acts[f"mlp_out.{layer}"] for layer in range(n)], 2).double()
            for sums, x in ((z_sum, z * mask[:, :, None, None, None]), (mlp_sum, mlp * mask[:, :, None, None]),
                            (counts, mask)):
                sums[:, :seq].index_add_(0, g, x)
                sums[0, :seq] += x[grouped].sum(0)
    safe = counts.clamp(min=1)
    z_mean = (z_sum / safe[:, :, None, None, None]).to(model.dtype)
    mlp_mean = (mlp_sum / safe[:, :, None, None]).to(model.dtype)
    return TaskMeans(z_mean, mlp_mean, counts, group_of, by_template)


def zero_means(model, task) -> TaskMeans:
    """Zero 'means': zero ablation through the same machinery (reported separately from mean ablation)."""
    longest = max(max(len(c) for c in task.clean), max(len(c) for c in task.corrupt))
    n = model.n_layers
    z = torch.zeros(1, longest, n, model.n_heads, model.d_head, dtype=model.dtype, device=model.device)
    mlp = torch.zeros(1, longest, n, model.d_model, dtype=model.dtype, device=model.device)
    return TaskMeans(z, mlp, torch.zeros(1, longest), {}, False)


class CorruptActivations:
    """Interchange ablation: every node's activation on each pair's corrupt prompt, looked up by the corrupt prompt's
    token ids (so any subset or split of the task finds its rows). Same interface as TaskMeans."""

    def __init__(self, model, task, *, batch_size: int = 32):
        n = model.n_layers
        read = [f"z.{layer}" for layer in range(n)] + [f"mlp_out.{layer}" for layer in range(n)]
        self.rows: dict[tuple, int] = {}
        self.z, self.mlp = [], []
        with torch.no_grad():
            for start in range(0, len(task), batch_size):
                ids = task.corrupt[start:start + batch_size]
                run = model.run(ids, read=read, stop_early=True)
                for i, row in enumerate(ids):
                    self.rows.setdefault(tuple(row), len(self.z))
                    k = len(row)     # right padding: the first len(row) positions are the prompt's
                    self.z.append(torch.stack([run.acts[f"z.{layer}"][i, :k] for layer in range(n)], 1))
                    self.mlp.append(torch.stack([run.acts[f"mlp_out.{layer}"][i, :k] for layer in range(n)], 1))

    def groups_for(self, task, rows) -> list[int]:
        try:
            return [self.rows[tuple(task.corrupt[r])] for r in rows]
        except KeyError:
            raise InputError("interchange ablation: a prompt's corrupt counterpart was not run") from None

    def values(self, groups: list[int], seq: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [batch, seq, heads, d_head], mlp [batch, seq, d_model]): each row's corrupt activations, zero-padded."""
        z = torch.zeros(len(groups), seq, *self.z[0].shape[2:], dtype=self.z[0].dtype, device=self.z[0].device)
        mlp = torch.zeros(len(groups), seq, self.mlp[0].shape[-1], dtype=self.mlp[0].dtype, device=self.z[0].device)
        for i, g in enumerate(groups):
            k = min(seq, self.z[g].shape[0])
            z[i, :k], mlp[i, :k] = self.z[g][:k, layer], self.mlp[g][:k, layer]
        return z, mlp


def coverage(means, task) -> tuple[int, int]:
    """(prompts of `task` that fall back to the pooled group, prompts longer than every reference prompt) under
    task means; (0, 0) for zero and interchange ablation."""
    if not isinstance(means, TaskMeans) or not means.counts.any():
        return 0, 0
    pooled = sum(1 for g, k in zip(means.groups_for(task, range(len(task))), group_keys(task))
                 if g == 0 and means.by_template)
    longer = sum(1 for c in task.clean if len(c) > means.positions or not bool(means.counts[0, len(c) - 1] > 0))
    return pooled, longer


def ablation_means(model, reference, ablation: str):
    """The values pruned nodes take under `ablation` (the keys of ABLATIONS): 'mean' = the task means of the
    `reference` prompts (never the prompts that are scored), 'zero', or 'corrupt' = interchange ablation (the
    corrupt activations of `reference`, which must then hold the scored pairs themselves)."""
    if ablation not in ABLATIONS:
        raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    if ablation == "corrupt":
        return CorruptActivations(model, reference)
    return task_means(model, reference) if ablation == "mean" else zero_means(model, reference)


def coverage_notes(means, task) -> list[str]:
    """One line for a result when some scored prompts are not covered by the reference set's groups (see coverage)."""
    pooled, longer = coverage(means, task)
    if not (pooled or longer):
        return []
    return [f"of {len(task)} scored prompts, {pooled} have no (template, length) group in the reference set (pooled "
            f"means used) and {longer} reach positions no reference prompt has (zero there)"]
