"""Node-level circuits (Gao et al. 2025, "Weight-sparse transformers have interpretable circuits", section on
pruning): learned masks over single channels, mean ablation with means from reference (pretraining) text.

    NODE_KINDS          the node sites of a layer: attn_in / mlp_in (residual channels read by attention / the MLP),
                        q / k / v (attention channels, per head), neurons (MLP neurons), attn_out / mlp_out (residual
                        channels written by attention / the MLP)
    reference_means     per-channel mean of every node site over reference token windows (float64 accumulation)
    NodeMasks           a 0/1 (or soft) weight per node, per site; mask_edits turns it into lmscope.interpolate edits
    prune_nodes         learn hard-concrete masks (the gates of lmscope.circuits.prune) that keep as few nodes as
                        possible with the task loss below a target (0.15 nats in the paper), then binarise
    evaluate_nodes      sufficiency (circuit alone), necessity (circuit ablated), random circuits of the same size
                        per site, zero ablation, the metric as nodes are removed one by one

Task loss: binary cross-entropy of the answer against the contrasting token at the last position,
softplus(-(logit(answer) - logit(wrong))), averaged over prompts (the paper's tasks are binary; it states its
target in nats of task loss). Differences from the paper: the constraint is a Lagrangian with a multiplier raised
by gradient ascent (the paper tunes a penalty); the circuit is the smallest prefix of nodes ranked by gate logit whose
train loss is below the target (binary search), reported on held-out prompts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from lmscope.circuits import deterministic_gates, expected_kept, sample_gates
from lmscope.circuits import task_logits
from lmscope.core.edits import interpolate
from lmscope.core.errors import InputError

NODE_KINDS = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "neurons", "mlp_out")
TARGET_LOSS = 0.15


def node_sites(model, kinds=NODE_KINDS) -> list[str]:
    """Node sites of every layer; with the default kinds, those the model's family has (e.g. a mixture-of-experts
    MLP has no neurons, Falcon no q/k/v sites); a kind asked for by name that the model lacks is an error."""
    bad = [k for k in kinds if k not in NODE_KINDS]
    if bad:
        raise InputError(f"unknown node kind {bad[0]!r}: one of {', '.join(NODE_KINDS)}")
    have = {s.kind for s in model.sites()}
    if tuple(kinds) == NODE_KINDS:
        kinds = [k for k in kinds if k in have]
    elif any(k not in have for k in kinds):
        missing = next(k for k in kinds if k not in have)
        raise InputError(f"{model.spec} ({model.adapter.family}) has no {missing} sites")
    return [f"{kind}.{layer}" for layer in range(model.n_layers) for kind in kinds]


def node_shape(model, site: str) -> tuple[int, ...]:
    return tuple(model.site_shape(site))


@torch.no_grad()
def reference_means(model, windows: list[list[int]], sites: list[str], *, batch_size: int = 16
                    ) -> dict[str, torch.Tensor]:
    """Mean activation per channel of each site over every token of `windows` (token id lists, reference text
    that is NOT the evaluated prompts), accumulated in float64, returned in the model's dtype."""
    if not windows:
        raise InputError("no reference windows to compute means over")
    sums = {s: torch.zeros(node_shape(model, s), dtype=torch.float64, device=model.device) for s in sites}
    count = 0.0
    for start in range(0, len(windows), batch_size):
        run = model.run(windows[start:start + batch_size], read=sites, stop_early=True)
        mask = run.attention_mask.to(torch.float64)
        count += float(mask.sum())
        for s in sites:
            act = run[s].double()
            sums[s] += (act * mask.view(*mask.shape, *([1] * (act.dim() - 2)))).sum((0, 1))
    return {s: (v / count).to(model.dtype) for s, v in sums.items()}


def node_zero_means(model, sites) -> dict[str, torch.Tensor]:
    return {s: torch.zeros(node_shape(model, s), dtype=model.dtype, device=model.device) for s in sites}


@dataclass
class NodeMasks:
    """site -> weight of the site's feature shape; 1 keeps a node bit for bit, 0 replaces it by its mean."""
    masks: dict[str, torch.Tensor]

    @classmethod
    def full(cls, model, sites, value: float = 1.0) -> "NodeMasks":
        return cls({s: torch.full(node_shape(model, s), float(value), dtype=model.dtype) for s in sites})

    def n_nodes(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def n_kept(self) -> int:
        return int(sum(int((m == 1).sum()) for m in self.masks.values()))

    def complement(self) -> "NodeMasks":
        return NodeMasks({s: 1 - m for s, m in self.masks.items()})

    def flat(self) -> torch.Tensor:
        return torch.cat([m.reshape(-1) for m in self.masks.values()])

    @classmethod
    def from_flat(cls, like: "NodeMasks", flat: torch.Tensor) -> "NodeMasks":
        out, i = {}, 0
        for s, m in like.masks.items():
            out[s] = flat[i:i + m.numel()].view_as(m).to(m.dtype)
            i += m.numel()
        return cls(out)

    def kept(self) -> list[tuple[str, tuple[int, ...]]]:
        """(site, index) of every kept node, index into the site's feature shape."""
        return [(s, tuple(int(v) for v in idx)) for s, m in self.masks.items() for idx in (m == 1).nonzero()]

    def to_json(self) -> dict:
        return {s: [list(i) for i in (m == 1).nonzero().tolist()] for s, m in self.masks.items()}


def mask_edits(model, means: dict, masks: NodeMasks) -> list:
    """interpolate edits (weight * act + (1 - weight) * mean) for every site whose mask is not exactly all 1."""
    edits = []
    for site, w in masks.masks.items():
        if not w.requires_grad and bool((w == 1).all()):
            continue
        edits.append(interpolate(site, means[site], w.to(model.device, model.dtype)))
    return edits


def task_loss(task, logits: torch.Tensor) -> torch.Tensor:
    """Per-prompt binary cross-entropy (nats) of the answer against the contrasting token."""
    idx = torch.arange(len(task), device=logits.device)
    answer = torch.tensor(task.answer, device=logits.device)
    wrong = torch.tensor(task.wrong, device=logits.device)
    return F.softplus(-(logits[idx, answer] - logits[idx, wrong]).float())


def masked_logits(model, task, means, masks: NodeMasks, *, which: str = "clean", batch_size: int = 32,
                  grad: bool = False) -> torch.Tensor:
    return task_logits(model, task, mask_edits(model, means, masks), which=which, batch_size=batch_size, grad=grad)


@dataclass
class NodePruneConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.1
    target_loss: float = TARGET_LOSS   # nats of task loss the circuit must stay under (paper: 0.15)
    above_model: "float | None" = None  # if set, the target is instead the model's own train loss + this many nats
    init: float = 3.0                  # initial gate logit (start from the full model)
    lr_lagrange: float = 1.0
    kinds: tuple = NODE_KINDS
    ablation: str = "mean"             # "mean" (reference means) or "zero"
    n_train: "int | None" = None       # default: half the prompts
    seed: int = 0


def _flat_logits(theta: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in theta.values()])


def train_gates(model, train, means, config: NodePruneConfig, target: float, progress: bool = False
                ) -> tuple[dict, list]:
    """Hard-concrete gate logits per site minimising E[kept] / n subject to task loss <= target (Lagrangian)."""
    sites = node_sites(model, config.kinds)
    theta = {s: torch.full(node_shape(model, s), float(config.init), requires_grad=True) for s in sites}
    opt = torch.optim.Adam(theta.values(), lr=config.lr)
    lam = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(config.seed)
    n_nodes = sum(t.numel() for t in theta.values())
    history, frozen = [], [(p, p.requires_grad) for p in model.hf.parameters()]
    bar = _bar(progress, config.steps)
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for step in range(config.steps):
            rows = torch.randperm(len(train), generator=gen)[:config.batch_size].tolist()
            batch = train.subset(rows)
            gates = NodeMasks({s: sample_gates(t, gen) for s, t in theta.items()})
            loss_task = task_loss(batch, masked_logits(model, batch, means, gates, batch_size=len(rows),
                                                       grad=True)).mean()
            kept = sum(expected_kept(t) for t in theta.values()) / n_nodes
            loss = kept + lam.float() * (loss_task - target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value, expected = float(loss_task.detach()), float(kept.detach()) * n_nodes
            lam = (lam + config.lr_lagrange * (value - target)).clamp(min=0)
            history.append({"step": step, "task_loss": value, "expected_kept": expected, "lagrange": float(lam)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", kept=f"{expected:.0f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    return {s: t.detach() for s, t in theta.items()}, history


def _bar(progress, total):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="prune nodes", unit="step")


def top_k_masks(model, theta: dict, k: int) -> NodeMasks:
    """The k nodes of largest gate logit kept (ties: earlier in site order first), every other node ablated."""
    flat = _flat_logits(theta)
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros_like(flat, dtype=model.dtype)
    keep[order[:k]] = 1
    like = NodeMasks({s: t for s, t in theta.items()})
    return NodeMasks.from_flat(like, keep)


@torch.no_grad()
def smallest_circuit(model, train, means, theta: dict, target: float, batch_size: int = 32
                     ) -> tuple[NodeMasks, float, bool]:
    """Binary search over k for the fewest top-k nodes with mean train task loss <= target. Returns the masks, their
    train loss and whether the target was reached (if even every node misses it, every node is kept)."""
    n = sum(t.numel() for t in theta.values())

    def loss_at(k):
        masks = top_k_masks(model, theta, k)
        return float(task_loss(train, masked_logits(model, train, means, masks, batch_size=batch_size)).mean())

    full = loss_at(n)
    if full > target:
        return top_k_masks(model, theta, n), full, False
    lo, hi, best = 0, n, full
    while lo < hi:
        mid = (lo + hi) // 2
        value = loss_at(mid)
        if value <= target:
            hi, best = mid, value
        else:
            lo = mid + 1
    return top_k_masks(model, theta, hi), best, True


@dataclass
class NodeEvaluation:
    """Held-out numbers of a node circuit. Metric: logit difference (answer - wrong); loss: binary CE (nats)."""
    n_nodes_total: int
    n_nodes: int
    nodes_by_kind: dict
    loss_full: float
    loss_empty: float
    loss_circuit: float
    loss_without_circuit: float
    metric_full: float
    metric_empty: float
    metric_circuit: float
    metric_without_circuit: float
    faithfulness: float            # (m_C - m_empty) / (m_full - m_empty), sufficiency
    necessity_drop: float          # (m_full - m_without_C) / (m_full - m_empty)
    accuracy_full: float
    accuracy_circuit: float
    random_faithfulness: list = field(default_factory=list)   # random circuits, same count per site
    zero_ablation: dict = field(default_factory=dict)          # the same circuit with zero instead of mean ablation
    curve: list = field(default_factory=list)                   # nodes removed one by one


def _scores(model, task, means, masks, batch_size):
    logits = masked_logits(model, task, means, masks, batch_size=batch_size)
    return (float(task_loss(task, logits).double().mean()), float(task.metric(logits).double().mean()),
            float(task.accuracy(logits).double().mean()))


def _normalised(m, full, empty):
    return float("nan") if full == empty else (m - empty) / (full - empty)


def random_like(masks: NodeMasks, gen: torch.Generator) -> NodeMasks:
    """As many nodes per site as `masks` keeps, drawn uniformly within each site."""
    out = {}
    for s, m in masks.masks.items():
        k = int((m == 1).sum())
        flat = torch.zeros(m.numel(), dtype=m.dtype)
        flat[torch.randperm(m.numel(), generator=gen)[:k]] = 1
        out[s] = flat.view_as(m)
    return NodeMasks(out)


@torch.no_grad()
def evaluate_nodes(model, task, means, masks: NodeMasks, *, zero_means_: "dict | None" = None, n_random: int = 5,
                   seed: int = 0, batch_size: int = 32, theta: "dict | None" = None, curve_points: int = 24
                   ) -> NodeEvaluation:
    sites = list(masks.masks)
    full_l, full_m, full_a = _scores(model, task, means, NodeMasks.full(model, sites), batch_size)
    empty_l, empty_m, _ = _scores(model, task, means, NodeMasks.full(model, sites, 0.0), batch_size)
    circ_l, circ_m, circ_a = _scores(model, task, means, masks, batch_size)
    wo_l, wo_m, _ = _scores(model, task, means, masks.complement(), batch_size)
    gen = torch.Generator().manual_seed(seed)
    rand = [_normalised(_scores(model, task, means, random_like(masks, gen), batch_size)[1], full_m, empty_m)
            for _ in range(n_random)]
    zero = {}
    if zero_means_ is not None:
        z_full = _scores(model, task, zero_means_, NodeMasks.full(model, sites), batch_size)[1]
        z_empty = _scores(model, task, zero_means_, NodeMasks.full(model, sites, 0.0), batch_size)[1]
        z_l, z_m, _ = _scores(model, task, zero_means_, masks, batch_size)
        zero = {"loss_circuit": z_l, "metric_circuit": z_m, "metric_empty": z_empty,
                "faithfulness": _normalised(z_m, z_full, z_empty)}
    by_kind: dict = {}
    for s, m in masks.masks.items():
        kind = s.split(".")[0]
        by_kind[kind] = by_kind.get(kind, 0) + int((m == 1).sum())
    curve = removal_curve(model, task, means, masks, theta, batch_size, curve_points) if theta else []
    return NodeEvaluation(masks.n_nodes(), masks.n_kept(), by_kind, full_l, empty_l, circ_l, wo_l, full_m, empty_m,
                          circ_m, wo_m, _normalised(circ_m, full_m, empty_m),
                          float("nan") if full_m == empty_m else (full_m - wo_m) / (full_m - empty_m),
                          full_a, circ_a, rand, zero, curve)


def removal_curve(model, task, means, masks: NodeMasks, theta: dict, batch_size: int, points: int) -> list[dict]:
    """Held-out loss and metric as the circuit's nodes are removed one by one, lowest gate logit first (at most
    `points` evaluations, evenly spaced in the number removed)."""
    kept_flat = masks.flat() == 1
    logits = _flat_logits(theta)
    order = [int(i) for i in torch.sort(torch.where(kept_flat, logits, torch.inf), stable=True).indices
             if kept_flat[i]]
    n = len(order)
    steps = sorted({round(i * n / max(1, points - 1)) for i in range(points)} | {0, n}) if n else [0]
    out = []
    for removed in steps:
        flat = kept_flat.to(masks.flat().dtype).clone()
        flat[order[:removed]] = 0
        loss, metric, acc = _scores(model, task, means, NodeMasks.from_flat(masks, flat), batch_size)
        out.append({"removed": removed, "kept": n - removed, "loss": loss, "metric": metric, "accuracy": acc})
    return out


@dataclass
class PruneOutput:
    masks: NodeMasks
    evaluation: NodeEvaluation     # on the held-out prompts
    info: dict                     # training: sizes, loss history, seconds, whether the target was reached
    theta: dict                    # gate logits per site (the node ranking)
    means: dict                    # what an ablated node is replaced with (reference means, or zeros)
    train: object                  # the task's train split ...
    heldout: object                # ... and its held-out split


def prune_nodes(model, task, reference: list[list[int]], config: NodePruneConfig = NodePruneConfig(), *,
                heldout=None, progress: bool = False) -> PruneOutput:
    """Learn a node circuit on a train split of `task` and evaluate it on the held-out split; with `heldout` (a
    task of other prompts, e.g. built from other words) learn on all of `task` and evaluate on `heldout`."""
    if config.ablation not in ("mean", "zero"):
        raise InputError(f"ablation must be 'mean' or 'zero', got {config.ablation!r}")
    if len(task) < (2 if heldout is not None else 4):
        raise InputError(f"pruning needs at least 4 prompts (train and held-out), got {len(task)}")
    if config.steps < 1 or config.batch_size < 1 or not config.target_loss > 0:
        raise InputError("steps, batch_size and target_loss must be positive")
    if config.above_model is not None and not config.above_model > 0:
        raise InputError("above_model must be a positive number of nats")
    started = time.time()
    train, held = (task, heldout) if heldout is not None else task.split(config.n_train or len(task) // 2,
                                                                          seed=config.seed)
    sites = node_sites(model, config.kinds)
    zero = node_zero_means(model, sites)
    means = reference_means(model, reference, sites) if config.ablation == "mean" else zero
    with torch.no_grad():
        model_loss = float(task_loss(train, masked_logits(model, train, means, NodeMasks.full(model, sites),
                                                          batch_size=config.batch_size)).mean())
    target = config.target_loss if config.above_model is None else model_loss + config.above_model
    theta, history = train_gates(model, train, means, config, target, progress)
    masks, train_loss, reached = smallest_circuit(model, train, means, theta, target, config.batch_size)
    evaluation = evaluate_nodes(model, held, means, masks, zero_means_=zero if config.ablation == "mean" else None,
                                seed=config.seed, batch_size=config.batch_size, theta=theta)
    gates_on = int(sum(int((deterministic_gates(t) > 0.5).sum()) for t in theta.values()))
    info = {"n_train": len(train), "n_heldout": len(held), "train_loss_circuit": train_loss,
            "target_reached_on_train": reached, "gates_on": gates_on, "seconds": round(time.time() - started, 1),
            "history": history[:: max(1, len(history) // 50)] + history[-1:], "target_loss": target,
            "target_rule": ("absolute" if config.above_model is None else f"model's train loss + {config.above_model}"),
            "model_train_loss": model_loss,
            "steps": config.steps, "ablation": config.ablation, "kinds": list(config.kinds),
            "n_reference_windows": len(reference)}
    return PruneOutput(masks, evaluation, info, theta, means, train, held)


def nonsense_task(task, seed: int = 0):
    """The control task: each prompt's answer and contrasting token swapped at random (seeded), so nothing in the
    prompt predicts which is right; pruning should find no small circuit under the loss target."""
    gen = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(task), generator=gen) < 0.5
    answer = [w if f else a for a, w, f in zip(task.answer, task.wrong, flip.tolist())]
    wrong = [a if f else w for a, w, f in zip(task.answer, task.wrong, flip.tolist())]
    return replace(task, name=f"{task.name} (random labels)", answer=answer, wrong=wrong, info=dict(task.info))

