"""Tracing overhead against the peers: reading every layer's residual stream during one forward, as a ratio to a
bare Hugging Face forward on the same inputs, and whether the logits stay bit for bit those of the bare forward.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trace_overhead.py [--model smollm2] [--rounds 30]
        [--shapes 1x16,1x512,4x128] [--peers hooks,lmscope,nnsight,tl_bridge] [--device cuda] [--json FILE]

Contenders (each reads resid_post of every layer, the output of every decoder block):
    hooks      raw torch forward hooks on the blocks, registered and removed around the forward
    lmscope    `with model.trace(read=["resid_post.*"])`
    nnsight    `NNsight(model.hf).trace(...)` with `.output.save()` on every block (the same HF model object)
    tl_bridge  TransformerLens 3's TransformerBridge over a copy of the HF model, `run_with_cache` with a
               names filter (the bridge switches its copy to eager attention: that cost is part of its ratio)
Each round times a bare forward and every contender once, in an order rotated from round to round, so that a
drift in machine speed hits all alike; each contender's per-round ratio is its time over the bare forward of the
same round. Reported: the median ratio with a 95% bootstrap interval over rounds, median milliseconds, and
exactness (torch.equal of the logits to the bare forward's, and the largest absolute difference). A peer that is
not installed (the optional `bench` extra) is reported as missing.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import time

import torch

from bench_model import bench_model, n_params

TEXT = ("The history of the city begins with a small settlement on the river, where traders met to exchange grain, "
        "salt and cloth. Over the centuries the market grew into a town, the town into a city, and the city into "
        "the capital of a province whose roads and canals carried goods to every corner of the country. ") * 12


def bootstrap_ci(values, n=2000, seed=0) -> tuple[float, float]:
    """95% percentile interval of the median, resampling rounds."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def contenders(model, names):
    """name -> function(ids) -> logits (each reads every block's output); missing peers -> reason."""
    hf, blocks = model.hf, [model.block_module(i) for i in range(model.n_layers)]
    out, missing = {}, {}

    def bare(ids):
        return hf(input_ids=ids, use_cache=False).logits

    def hooks(ids):
        saved = []
        handles = [b.register_forward_hook(lambda m, a, o: saved.append((o if torch.is_tensor(o) else o[0])
                                                                          .detach())) for b in blocks]
        try:
            return hf(input_ids=ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()

    def traced(ids):
        with model.trace(read=["resid_post.*"]):
            return hf(input_ids=ids, use_cache=False).logits

    out["bare"] = bare
    for name in names:
        if name == "hooks":
            out[name] = hooks
        elif name == "lmscope":
            out[name] = traced
        elif name == "nnsight":
            try:
                out[name] = _nnsight(model)
            except Exception as e:  # noqa: BLE001 - an optional peer: report why it is absent
                missing[name] = f"{type(e).__name__}: {e}"[:200]
        elif name == "tl_bridge":
            try:
                out[name] = _tl_bridge(model)
            except Exception as e:  # noqa: BLE001
                missing[name] = f"{type(e).__name__}: {e}"[:200]
    return out, missing


def _nnsight(model):
    from nnsight import NNsight
    wrapped = NNsight(model.hf)
    layers = wrapped
    for part in model.adapter.layers.split("."):
        layers = getattr(layers, part)

    def run(ids):
        with wrapped.trace(input_ids=ids, use_cache=False):
            saved = [layers[i].output.save() for i in range(model.n_layers)]   # noqa: F841
            logits = wrapped.output.logits.save()
        return logits
    return run


def _tl_bridge(model):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformer_lens.model_bridge import TransformerBridge
    hf = copy.deepcopy(model.hf)
    name = "HuggingFaceTB/SmolLM2-135M-Instruct" if model.spec == "smollm2" else hf.config._name_or_path
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf,
                                                 tokenizer=model.tokenizer, device=model.device, dtype=model.dtype)

    def run(ids):
        logits, _ = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        return logits
    return run


def shape_ids(model, shape: str) -> torch.Tensor:
    batch, length = map(int, shape.split("x"))
    ids = model.encode(TEXT)[0][0]
    if len(ids) < length + batch:
        raise SystemExit(f"the benchmark text has {len(ids)} tokens, fewer than {length + batch}")
    return torch.stack([ids[i:i + length] for i in range(batch)]).to(model.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--shapes", default="1x16,1x512,4x128")
    parser.add_argument("--peers", default="hooks,lmscope,nnsight,tl_bridge")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = bench_model(args.model, device=args.device, dtype=args.dtype)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    runs, missing = contenders(model, args.peers.split(","))
    report = {"model": args.model, "device": str(model.device), "dtype": str(model.dtype), "n_params": n_params(model),
              "threads": torch.get_num_threads(), "rounds": args.rounds, "missing": missing, "shapes": {}}
    for name, why in missing.items():
        print(f"{name}: not measured ({why})", flush=True)
    for shape in args.shapes.split(","):
        ids = shape_ids(model, shape)
        with torch.no_grad():
            reference = runs["bare"](ids)
            exact = {}
            for name, fn in runs.items():
                logits = fn(ids).to(reference.device)
                exact[name] = {"equal": bool(torch.equal(logits, reference)),
                               "max_abs_diff": float((logits.float() - reference.float()).abs().max())}
            names = list(runs)
            times = {n: [] for n in names}
            for _ in range(2):                                    # warm up
                for fn in runs.values():
                    fn(ids)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    sync()
                    start = time.perf_counter()
                    runs[name](ids)
                    sync()
                    times[name].append(time.perf_counter() - start)
        rows = {}
        for name in names:
            ratios = [t / b for t, b in zip(times[name], times["bare"])]
            low, high = bootstrap_ci(ratios)
            rows[name] = {"median_ms": round(statistics.median(times[name]) * 1e3, 3),
                          "ratio_median": round(statistics.median(ratios), 4), "ratio_ci95": [round(low, 4),
                                                                                              round(high, 4)],
                          **exact[name]}
            print(f"{shape:>6} {name:<10} {rows[name]['median_ms']:9.2f} ms  ratio {rows[name]['ratio_median']:.3f} "
                  f"[{low:.3f}, {high:.3f}]  logits equal: {exact[name]['equal']} "
                  f"(max diff {exact[name]['max_abs_diff']:.2e})", flush=True)
        report["shapes"][shape] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
