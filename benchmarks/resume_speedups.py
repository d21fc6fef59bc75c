"""Knowledge neurons, LRE and the function-vector CIE: the resumed path (each pass starts at the edited layer, on a
cached prefix) against the plain path (every pass from the embedding), timed in the same run, and their numbers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/resume_speedups.py [--model smollm2] [--rounds 2]
        [--only kn,lre,fv,lre-whole]

Rounds interleave the two paths and alternate which goes first, so drifts in machine speed hit both alike; the
ratio (plain / resumed) is printed per round, with the largest difference between the two paths' results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmscope
from lmscope.data.number_agreement import load_number_agreement
from lmscope.icl.function_vectors import causal_indirect_effects
from lmscope.icl.prompts import make_prompts, resolve_task, split_pairs
from lmscope.lenses.lre import jacobians, load_relation, lre, relation_prompt
from lmscope.neurons import integrated_gradients


def compare(name, plain, fast, rounds, diff):
    """Run plain() and fast() `rounds` times each, interleaved; print and return the ratios and the difference."""
    ratios, times = [], {"plain": [], "resumed": []}
    out = {}
    for r in range(rounds):
        order = [("plain", plain), ("resumed", fast)]
        for label, fn in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            out[label] = fn()
            times[label].append(time.perf_counter() - start)
        ratios.append(times["plain"][-1] / times["resumed"][-1])
        print(f"{name} round {r}: plain {times['plain'][-1]:.1f} s, resumed {times['resumed'][-1]:.1f} s, "
              f"ratio {ratios[-1]:.2f}", flush=True)
    row = {"experiment": name, "plain_s": [round(t, 2) for t in times["plain"]],
           "resumed_s": [round(t, 2) for t in times["resumed"]], "ratios": [round(x, 2) for x in ratios],
           "median_ratio": round(statistics.median(ratios), 2), **diff(out["plain"], out["resumed"])}
    print(json.dumps(row), flush=True)
    return row


def knowledge_neurons(model, rounds):
    plural = [it for it in load_number_agreement() if it.number == "plural"][::9][:2]

    def run(resume):
        return torch.stack([integrated_gradients(model, it.prompt, it.correct, steps=10, resume=resume)
                            for it in plural])

    def diff(a, b):
        return {"max_abs_diff": float((a - b).abs().max()), "max_abs_attribution": float(a.abs().max()),
                "same_top20": a.flatten().topk(20).indices.tolist() == b.flatten().topk(20).indices.tolist()}
    return compare("knowledge neurons: IG, 2 prompts x 30 layers x 10 steps", lambda: run(False), lambda: run(True),
                   rounds, diff)


def lre_jacobians(model, rounds):
    rel = load_relation("country_capital")
    prompts = [relation_prompt(model, rel, rel.pairs[:3], s) for s, _ in rel.pairs[3:5]]

    def run(resume):
        return torch.stack([j[0] for ids, pos in prompts for j in jacobians(model, ids, pos, (6, 12),
                                                                            resume=resume).values()])

    def diff(a, b):
        return {"max_abs_diff": float((a - b).abs().max()), "max_abs_jacobian": float(a.abs().max())}
    return compare("LRE: Jacobians, 2 prompts x layers 6, 12", lambda: run(False), lambda: run(True), rounds, diff)


def lre_whole(model, rounds):
    rel = load_relation("country_capital")
    opts = dict(layers=[6, 12], n_train=4)

    def diff(a, b):
        a, b = a.to_json(), b.to_json()
        keys = ("layer", "beta", "rank", "faithfulness", "causality", "majority_baseline", "n_test", "n_causal_pairs")
        def scores(r):
            return [(f["loo_faithfulness"], f["loo_causality"], f["best_rank"]) for f in r["layers"]]
        probs = [(p, q) for fa, fb in zip(a["layers"], b["layers"])
                 for p, q in zip(fa["loo_object_prob"].values(), fb["loo_object_prob"].values())]
        return {"plain": {k: a[k] for k in keys}, "resumed": {k: b[k] for k in keys},
                "same_loo_scores": scores(a) == scores(b), "same_test_rows": a["test"] == b["test"],
                "max_loo_object_prob_diff": max(abs(p - q) for p, q in probs),
                "loo_object_prob": [p for p, _ in probs]}
    return compare("LRE: lre country_capital --layer 6,12 --train 4", lambda: lre(model, rel, resume=False, **opts),
                   lambda: lre(model, rel, **opts), rounds, diff)


def fv_cie(model, rounds):
    task = resolve_task("present_past")
    split = split_pairs(task.pairs, n_shots=10, heldout_fraction=0.3, seed=0)
    p = make_prompts(model, split, n_shots=10, n_clean=1, n_shuffled=4, seed=0)
    mean_z = torch.randn(model.n_layers, model.n_heads, model.d_head, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)

    def run(resume):
        return causal_indirect_effects(model, p.shuffled, p.shuffled_answers, mean_z, resume=resume)

    def diff(a, b):
        return {"max_abs_diff": float((a - b).abs().max()), "max_abs_cie": float(a.abs().max())}
    return compare("function vectors: CIE, 4 shuffled 10-shot prompts x 270 heads", lambda: run(False),
                   lambda: run(True), rounds, diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="kn,lre,fv,lre-whole")
    args = parser.parse_args()
    model = lmscope.load(args.model)
    todo = {"kn": knowledge_neurons, "lre": lre_jacobians, "fv": fv_cie, "lre-whole": lre_whole}
    rows = [todo[name](model, args.rounds) for name in args.only.split(",")]
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "rounds": args.rounds,
                      "results": rows}))


if __name__ == "__main__":
    main()
