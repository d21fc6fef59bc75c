"""Tracing overhead: a traced forward that reads sites, as a ratio to a bare HF forward on the same inputs.

    .venv/bin/python benchmarks/trace_overhead.py [--model smollm2] [--sites 'resid_post.*'] [--repeats 30]

Bare and traced passes alternate, so drifts in machine speed hit both alike; the ratio is of medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmscope

TEXT = ("The history of the city begins with a small settlement on the river, where traders met to exchange grain, "
        "salt and cloth. Over the centuries the market grew into a town, the town into a city, and the city into "
        "the capital of a province whose roads and canals carried goods to every corner of the country. ") * 8


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sites", default="resid_post.*")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lengths", default="16,128,512")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    model = lmscope.load(args.model, device=args.device)
    all_ids = model.encode(TEXT)[0]
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    rows = []
    for length in map(int, args.lengths.split(",")):
        ids = all_ids[:, :length]

        def bare():
            with torch.no_grad():
                model.hf(input_ids=ids, use_cache=False)
            sync()

        def traced():
            with torch.no_grad(), model.trace(read=[args.sites]):
                model.hf(input_ids=ids, use_cache=False)
            sync()

        for _ in range(3):  # warm up
            bare(), traced()
        bare_t, traced_t = [], []
        for _ in range(args.repeats):
            bare_t.append(timed(bare))
            traced_t.append(timed(traced))
        b, t = statistics.median(bare_t), statistics.median(traced_t)
        rows.append({"tokens": ids.shape[1], "bare_ms": round(b * 1e3, 2), "traced_ms": round(t * 1e3, 2),
                     "ratio": round(t / b, 4)})
        print(f"{ids.shape[1]:>5} tokens  bare {b * 1e3:8.2f} ms  traced {t * 1e3:8.2f} ms  ratio {t / b:.3f}",
              flush=True)
    print(json.dumps({"model": args.model, "sites": args.sites, "device": str(model.device),
                      "threads": torch.get_num_threads(), "repeats": args.repeats, "results": rows}))


if __name__ == "__main__":
    main()
