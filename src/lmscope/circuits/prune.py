"""Pruning to a small faithful circuit with learned masks (Louizos et al. 2018 hard-concrete gates, as in Bhaskar
et al. 2024's edge pruning, here over nodes: attention heads and MLP layers).

Every node has a gate logit theta. A training step samples stretched hard-concrete gates z in [0, 1] (exactly 0 or
1 with positive probability), runs the task's clean prompts with each node mixed as z * act + (1 - z) * a, a being
the node's value under the ablation (lmscope.circuits.means: the task means of the TRAIN split, zero, or
interchange: its activation on the same pair's corrupt prompt), and minimises a fit term plus a size term:

    loss "metric" (default)  mean over prompts ((m_C - m_M) / (mean m_M - mean m_empty))^2
    loss "kl"                mean over prompts of KL(P_model || P_circuit) of the next token at the last position
                             (core.metrics.kl_reference_edited), Bhaskar et al.'s loss

where m_M is the model's own per-prompt metric. The Edge Pruning protocol of Bhaskar et al. 2024 is
ablation="corrupt" with loss="kl" (`EDGE_PRUNING`); differences that remain: nodes (heads and MLPs), not edges;
the head target and the MLP lambda below instead of their edge sparsity target; one learning rate for every gate. The size term uses the gates' expected L0 norm E[kept]: with a head
target (the usual way) it is Bhaskar et al.'s Lagrangian l1 (s - t) + l2 (s - t)^2 on the expected fraction of heads
kept s, the target fraction t going linearly from 1 to target / n_heads over the first half of training and the
multipliers l1, l2 raised by gradient ascent, plus lambda * E[MLPs kept] / n_layers for the MLP gates; without a
target it is lambda * E[nodes kept] / n_nodes. The model's weights are frozen.

After training, the circuit's heads are the `target_heads` heads of highest logit when a target was set (the size
asked for; how many heads the gates themselves left on is reported as `gates_on`), otherwise those whose
deterministic gate is > 0.5, at most `max_heads` either way; its MLPs are those whose deterministic gate is > 0.5.
The heads ranked by logit give the faithfulness-vs-size curve. Training uses a train split only;
everything reported is measured on the held-out split with exact 0/1 gates.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from lmscope.core.config import option
from lmscope.core.errors import InputError
from lmscope.core.metrics import KL_REFERENCE_EDITED, kl_reference_edited
from lmscope.circuits.faithfulness import FaithfulnessResult, evaluate_circuit, gated_logits
from lmscope.circuits.means import ABLATIONS, ablation_means, coverage_notes
from lmscope.circuits.nodes import head_gates, rank_heads

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1   # hard-concrete temperature and stretch (Louizos et al.)
SIZES = (0, 5, 10, 20, 30, 40, 54, 80, 135)   # 0: the circuit's MLPs alone


@dataclass
class PruneConfig:
    """How a circuit is found (prune; the shared fields also for patch / eap / eap-ig) and checked. One field per
    `lmscope circuit` flag."""
    steps: int = option(100, "prune: optimiser steps")
    batch_size: int = option(32, "prompts per forward pass")
    lr: float = option(0.3, "prune: learning rate of the gate logits")
    lam: float = option(1.0, "prune: weight of the expected fraction of nodes kept (MLPs only, with a head target)")
    init: float = option(2.0, "prune: initial gate logit (deterministic gate 1: start from the full model)")
    target_heads: "int | None" = option(None, "prune: expected heads kept at the end (Lagrangian); none: lambda "
                                              "penalty only (lmscope circuit: the head budget)")
    lr_lagrange: float = option(1.0, "prune: gradient-ascent step of the Lagrange multipliers")
    mlps: bool = option(True, "prune: learn MLP gates too (--no-mlps: every MLP kept)")
    ablation: str = option("mean", "pruned nodes get the train split's mean (by group and position), zero, or the "
                                   "corrupt prompt's activation (interchange, Edge Pruning)",
                           choices=("mean", "zero", "corrupt"))
    loss: str = option("metric", "prune: fit the task metric's normalised error, or kl = KL(model || circuit) at "
                                 "the last token (Edge Pruning)", choices=("metric", "kl"))
    max_heads: "int | None" = option(None, "head budget: prune keeps at most this many, patch / eap / eap-ig keep "
                                           "exactly this many (lmscope circuit: 20%% of the heads when not given)",
                                     flag="--heads")
    n_train: "int | None" = option(None, "prompts to learn / score on (none: half); the rest are held out for "
                                         "every number reported", flag="--train")
    seed: int = option(0, "seed of the split, the gate noise, the random circuits and a built-in task's prompts")
    n_random: int = option(10, "random circuits of the same size", flag="--random-draws")


def sample_gates(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(theta.shape, generator=gen, dtype=theta.dtype).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + theta) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def deterministic_gates(theta: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(theta) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def expected_kept(theta: torch.Tensor) -> torch.Tensor:
    """P(gate != 0), summed: the expected L0 norm."""
    return torch.sigmoid(theta - BETA * math.log(-GAMMA / ZETA)).sum()


EDGE_PRUNING = {"ablation": "corrupt", "loss": "kl"}   # Bhaskar et al. 2024's protocol: PruneConfig(**EDGE_PRUNING)


def _check(config: PruneConfig, task) -> None:
    if config.ablation not in ABLATIONS:
        raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {config.ablation!r}")
    if config.loss not in ("metric", "kl"):
        raise InputError(f"loss must be 'metric' or 'kl', got {config.loss!r}")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError("steps and batch_size must be positive")
    if len(task) < 4:
        raise InputError(f"pruning needs at least 4 prompts (train and held-out), got {len(task)}")
    if config.n_train is not None and not 1 <= config.n_train < len(task):
        raise InputError(f"n_train must leave held-out prompts: 1..{len(task) - 1}, got {config.n_train}")
    if config.max_heads is not None and config.max_heads < 0:
        raise InputError("max_heads must be >= 0")
    if config.target_heads is not None and config.target_heads < 1:
        raise InputError("target_heads must be >= 1")


def prune(model, task, config: "PruneConfig | None" = None, *, progress: bool = False) -> FaithfulnessResult:
    """Learn node masks on a train split of `task`; evaluate the circuit on the held-out split (see module doc)."""
    config = config or PruneConfig()
    _check(config, task)
    n_train = config.n_train or len(task) // 2
    train, held = task.split(n_train, seed=config.seed)
    # means from the train split only; interchange ablation reads each scored pair's own corrupt prompt
    means = ablation_means(model, task if config.ablation == "corrupt" else train, config.ablation)
    ablation = ABLATIONS[config.ablation]
    started = time.time()
    with torch.no_grad():
        ones_h = torch.ones(model.n_layers, model.n_heads, dtype=model.dtype)
        ones_m = torch.ones(model.n_layers, dtype=model.dtype)
        logits_full = gated_logits(model, train, means, ones_h, ones_m, batch_size=config.batch_size)
        m_full = train.metric(logits_full)
        m_empty = train.metric(gated_logits(model, train, means, 0 * ones_h, 0 * ones_m,
                                           batch_size=config.batch_size))
    scale = float(m_full.double().mean() - m_empty.double().mean())
    if abs(scale) < 1e-6:
        raise InputError(f"on {task.name} the model and the fully ablated model score the same "
                         f"({float(m_full.double().mean()):.4f}): nothing to keep")
    # gate logits stay float32 whatever the model's dtype (Adam on bfloat16 logits would stall); gates are cast
    theta_h = torch.full((model.n_layers, model.n_heads), float(config.init), requires_grad=True)
    theta_m = torch.full((model.n_layers,), float(config.init), requires_grad=config.mlps)
    params = [theta_h] + ([theta_m] if config.mlps else [])
    opt = torch.optim.Adam(params, lr=config.lr)
    lagrange = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ascent = torch.optim.SGD([lagrange], lr=config.lr_lagrange, maximize=True)
    n_heads = theta_h.numel()
    gen = torch.Generator().manual_seed(config.seed)
    n_nodes = theta_h.numel() + (theta_m.numel() if config.mlps else 0)
    history = []
    frozen = [(p, p.requires_grad) for p in model.hf.parameters()]
    bar = None
    if progress:
        bar = tqdm(total=config.steps, desc="prune", unit="step")
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for step in range(config.steps):
            rows = torch.randperm(len(train), generator=gen)[:config.batch_size].tolist()
            gh = sample_gates(theta_h, gen)
            gm = sample_gates(theta_m, gen) if config.mlps else ones_m
            batch = train.subset(rows)
            logits = gated_logits(model, batch, means, gh, gm, batch_size=len(rows), grad=True)
            if config.loss == "kl":
                fit = kl_reference_edited(logits_full[rows].to(logits.device), logits).mean()
            else:
                metric, target = batch.metric(logits), m_full[rows]
                fit = (((metric.float() - target.to(metric.device).float()) / scale) ** 2).mean()
            kept_h = expected_kept(theta_h)
            kept_m = expected_kept(theta_m) if config.mlps else torch.zeros(())
            if config.target_heads is None:
                size = config.lam * (kept_h + kept_m) / n_nodes
                goal = float("nan")
            else:
                goal = 1 - (1 - config.target_heads / n_heads) * min(1.0, (step + 1) / max(1, config.steps // 2))
                gap = kept_h.double() / n_heads - goal
                size = lagrange[0] * gap + lagrange[1] * gap ** 2 + config.lam * kept_m / model.n_layers
            loss = fit + size
            opt.zero_grad()
            ascent.zero_grad()
            loss.backward()
            opt.step()
            ascent.step()
            history.append({"step": step, "loss": float(loss.detach()), "fit": float(fit.detach()),
                            "expected_heads": float(kept_h.detach()), "expected_mlps": float(kept_m.detach()),
                            "target_fraction": goal, "lagrange": [float(x) for x in lagrange.detach()]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fit=f"{history[-1]['fit']:.3f}", heads=f"{history[-1]['expected_heads']:.0f}",
                                mlps=f"{history[-1]['expected_mlps']:.0f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    seconds = time.time() - started
    theta_h, theta_m = theta_h.detach(), theta_m.detach()
    heads = (deterministic_gates(theta_h) > 0.5).to(model.dtype)
    gates_on = int(heads.sum())
    mlps = (deterministic_gates(theta_m) > 0.5).to(model.dtype) if config.mlps else ones_m
    ranking = rank_heads(theta_h)
    size = gates_on if config.target_heads is None else config.target_heads
    size = size if config.max_heads is None else min(size, config.max_heads)
    if size != gates_on:
        heads = head_gates(heads, ranking[:size])
    sizes = sorted(set(SIZES) | {int(heads.sum())})
    result = evaluate_circuit(model, held, means, heads, mlps, method="prune", ablation=ablation,
                              n_random=config.n_random, seed=config.seed, batch_size=config.batch_size,
                              sizes=sizes, ranking=ranking)
    source = "each pair's corrupt prompt" if config.ablation == "corrupt" else f"the {len(train)} train prompts"
    fit = f"KL(model || circuit) = {KL_REFERENCE_EDITED} at the last token" if config.loss == "kl" else \
        "the normalised metric error"
    result.notes.append(f"ablated nodes take their values from {source}; the gates were fitted to {fit}")
    result.notes += coverage_notes(means, held)
    result.training = {**asdict(config), "n_train": len(train), "n_heldout": len(held),
                       "seconds": round(seconds, 1), "gates_on": gates_on,
                       "train_metric_full": float(m_full.double().mean()),
                       "train_metric_empty": float(m_empty.double().mean()),
                       "history": history[:: max(1, len(history) // 50)] + history[-1:],
                       "head_logits": [[round(float(v), 4) for v in row] for row in theta_h],
                       "mlp_logits": [round(float(v), 4) for v in theta_m]}
    return result
