"""Weight sparsity as Gao et al. 2025 train it: after every optimiser step each weight matrix keeps only its
top-k entries by magnitude, the kept fraction annealed linearly from 1 to the target over the first part of
training, and every neuron (row: a unit's incoming weights; column: a unit's outgoing weights) keeps at least j.

    kept_fraction(step, steps, target, anneal)  the schedule: 1 at step 0, linear to `target` at anneal*steps
    n_kept(shape, fraction, j)                  entries kept in one matrix: max(ceil(fraction*n), j*(rows+cols)), <= n
    topk_mask(weight, k, j)                     bool mask of exactly k entries, including each row's and each
                                                column's j largest
    sparse_matrices(model)                      the (name, weight) pairs that are sparsified: every 2-D weight,
                                                embeddings, positions and unembedding included
    apply_masks(model, fraction, j)             zero every matrix outside its mask (in place), returns the counts
"""
from __future__ import annotations

import math

import torch
from torch import nn


def kept_fraction(step: int, steps: int, target: float, anneal: float = 0.5) -> float:
    """Fraction of each matrix kept after optimiser step `step` (0-based count of steps done)."""
    if target >= 1.0:
        return 1.0
    end = anneal * steps
    if end <= 0 or step >= end:
        return target
    return 1.0 - (1.0 - target) * step / end


def n_kept(shape: tuple[int, int], fraction: float, j: int) -> int:
    rows, cols = shape
    n = rows * cols
    return min(n, max(math.ceil(fraction * n - 1e-9), j * (rows + cols)))


def topk_mask(weight: torch.Tensor, k: int, j: int) -> torch.Tensor:
    """Exactly k True entries: the j largest |w| of every row and of every column (at most j*(rows+cols) <= k),
    then the largest of the rest."""
    score = weight.detach().abs().float()
    if k >= score.numel():
        return torch.ones_like(score, dtype=torch.bool)
    forced = torch.zeros_like(score, dtype=torch.bool)
    if j > 0:
        forced.scatter_(1, score.topk(min(j, score.shape[1]), dim=1).indices, True)
        forced.scatter_(0, score.topk(min(j, score.shape[0]), dim=0).indices, True)
    score = score.masked_fill(forced, float("inf"))
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    mask[score.flatten().topk(k, sorted=False).indices] = True
    return mask.view_as(score)


def sparse_matrices(model: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.dim() == 2]


@torch.no_grad()
def apply_masks(model: nn.Module, fraction: float, j: int) -> dict[str, int]:
    """Keep each matrix's scheduled top-k (in place); {name: kept count}. fraction 1: nothing changes."""
    counts = {}
    for name, weight in sparse_matrices(model):
        k = n_kept(tuple(weight.shape), fraction, j)
        if k < weight.numel():
            weight.mul_(topk_mask(weight, k, j))
        counts[name] = k
    return counts


def density_report(model: nn.Module) -> dict[str, float]:
    """Nonzero fraction of every sparsified matrix."""
    return {name: float((w != 0).float().mean()) for name, w in sparse_matrices(model)}


def nonzero_params(model: nn.Module) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))
