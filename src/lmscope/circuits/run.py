"""One circuit experiment end to end: find a circuit on a train split (learned masks, or the top heads of
patching / EAP / EAP-IG scores), measure it on the held-out split (ablation means from the train split), and make
its circuit file; or evaluate a saved circuit on other prompts (means from a reference set: a seeded half of them,
or prompts given apart; the other half is scored)."""
from __future__ import annotations

import dataclasses
import time

import torch

from lmscope.core.errors import InputError
from lmscope.circuits.attribution import attribute
from lmscope.circuits.circuit_file import CircuitFile
from lmscope.circuits.faithfulness import FaithfulnessResult, evaluate_circuit
from lmscope.circuits.means import ABLATIONS, ablation_means, coverage_notes
from lmscope.circuits.nodes import gates, rank_heads
from lmscope.circuits.patching import activation_patching
from lmscope.circuits.prune import SIZES, PruneConfig, prune



SOURCES = {"mean": "the train prompts", "zero": "zero", "corrupt": "each pair's corrupt prompt"}


def default_budget(model) -> int:
    """20% of the heads (54 of SmolLM2's 270)."""
    return max(1, int(0.2 * model.n_layers * model.n_heads))


def head_scores(model, task, method: str, *, ig_steps: int = 8, batch_size: int = 32) -> torch.Tensor:
    """[n_layers, n_heads] importance of each head on `task` (larger = more important):
    patch: |m(clean) - m(clean with that head's z from the corrupt run)| (noising, all positions);
    eap / eap-ig: |EAP or EAP-IG node score| of the head (lmscope.circuits.attribution)."""
    if method == "patch":
        r = activation_patching(model, task, sites=("z",), direction="noising", batch_size=batch_size)
        raw = torch.tensor(r.raw["z"], dtype=torch.float64)
        return (r.clean_metric - raw).abs()
    if method in ("eap", "eap-ig"):
        r = attribute(model, task, method, steps=ig_steps, batch_size=batch_size)
        return torch.tensor(r.heads, dtype=torch.float64).abs()
    raise InputError(f"unknown method {method!r}: one of prune, patch, eap, eap-ig")


def find_circuit(model, task, config: "PruneConfig | None" = None, *, method: str = "prune", ig_steps: int = 8,
                 progress: bool = False, **overrides) -> tuple[FaithfulnessResult, CircuitFile]:
    """Find a circuit of `task` with `method` (prune, patch, eap, eap-ig) on a train split and measure it on the
    held-out rest. `overrides` replace fields of `config` (e.g. steps=20); the head budget defaults to 20% of the
    heads and is also prune's head target unless config.target_heads is given."""
    try:
        config = dataclasses.replace(config or PruneConfig(), **overrides)
    except TypeError as exc:
        raise InputError(f"find_circuit: {exc}") from None
    budget = default_budget(model) if config.max_heads is None else config.max_heads
    if config.ablation not in ABLATIONS:
        raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {config.ablation!r}")
    if not 0 < budget <= model.n_layers * model.n_heads:
        raise InputError(f"the head budget must be in 1..{model.n_layers * model.n_heads}, got {budget}")
    config = dataclasses.replace(config, max_heads=budget, target_heads=config.target_heads or budget)
    if method == "prune":
        result = prune(model, task, config, progress=progress)
        scores = {"kind": "gate logits", "heads": result.training["head_logits"],
                  "mlps": result.training["mlp_logits"]}
        return result, CircuitFile.from_result(model, result, scores)
    if method not in ("patch", "eap", "eap-ig"):
        raise InputError(f"unknown method {method!r}: one of prune, patch, eap, eap-ig")
    if len(task) < 2:
        raise InputError(f"a circuit needs at least 2 prompts (train and held-out), got {len(task)}")
    n_train, seed, batch_size = config.n_train or len(task) // 2, config.seed, config.batch_size
    train, held = task.split(n_train, seed=seed)
    started = time.time()
    scores = head_scores(model, train, method, ig_steps=ig_steps, batch_size=batch_size)
    seconds = time.time() - started
    ranking = rank_heads(scores)
    heads, mlps_gate = gates(model, ranking[:budget])
    mlps_gate = torch.ones_like(mlps_gate)     # score methods rank heads; every MLP is kept
    means = ablation_means(model, task if config.ablation == "corrupt" else train, config.ablation)
    result = evaluate_circuit(model, held, means, heads, mlps_gate, method=method,
                              ablation=ABLATIONS[config.ablation], n_random=config.n_random, seed=seed,
                              batch_size=batch_size, sizes=sorted(set(SIZES) | {budget}), ranking=ranking)
    result.notes.append(f"{method}: heads ranked by |score| on {len(train)} train prompts; every MLP kept; ablation "
                        f"values from {SOURCES[config.ablation]}")
    result.notes += coverage_notes(means, held)
    result.training = {"n_train": len(train), "n_heldout": len(held), "seconds": round(seconds, 1),
                       "method": method, "budget": budget}
    file = CircuitFile.from_result(model, result, {"kind": f"|{method} score|",
                                                   "heads": [[round(float(v), 6) for v in row] for row in scores]})
    return result, file


def evaluate_saved(model, circuit: CircuitFile, task, *, ablation: str = "mean", n_random: int = 10,
                   seed: int = 0, batch_size: int = 32, reference=None) -> FaithfulnessResult:
    """A saved circuit's faithfulness on `task`; with its saved head scores, also the faithfulness-vs-size curve of
    its ranking. Mean ablation takes its means from `reference` (a TaskSet disjoint from `task`), or, without one,
    from a seeded half of `task`, the other half being scored: the scored prompts never enter the means."""
    if ablation not in ABLATIONS:
        raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    heads, mlps = gates(model, circuit.nodes(model))
    scored, source = task, "no reference (zero or interchange ablation)"
    if ablation == "mean":
        if reference is None:
            if len(task) < 2:
                raise InputError("evaluating with mean ablation needs at least 2 prompts (a reference half and a "
                                 "scored half), or reference=")
            reference, scored = task.split(len(task) // 2, seed=seed)
            source = f"a seeded half of the prompts ({len(reference)}); the other {len(scored)} are scored"
        else:
            shared = {tuple(c) for c in reference.clean} & {tuple(c) for c in task.clean}
            if shared:
                raise InputError(f"{len(shared)} reference prompt(s) are also scored prompts: the means must come "
                                 "from other prompts")
            source = f"{len(reference)} reference prompts given apart"
    means = ablation_means(model, reference if ablation == "mean" else task, ablation)
    ranking = None
    if circuit.scores and isinstance(circuit.scores.get("heads"), list):
        s = torch.tensor(circuit.scores["heads"], dtype=torch.float64)
        if tuple(s.shape) == (model.n_layers, model.n_heads):
            ranking = rank_heads(s)
    result = evaluate_circuit(model, scored, means, heads, mlps, method=f"{circuit.method} (saved, found on "
                              f"{circuit.task})", ablation=ABLATIONS[ablation], n_random=n_random, seed=seed,
                              batch_size=batch_size, sizes=SIZES if ranking else (), ranking=ranking)
    result.notes.append(f"ablation values from {source}")
    result.notes += coverage_notes(means, scored)
    return result
