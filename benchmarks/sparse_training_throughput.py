"""Masked weight-sparse training against plain dense training of the same shape, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/sparse_training_throughput.py --preset cpu --steps 10 --repeats 3

Both sides run the training loop's own step (lmscope.papers.weight_sparse.train.train_step: forward, backward,
clipping, AdamW) on the same random token windows from the same initial weights; the sparse side then puts every
matrix back to its top-k (at the preset's target fraction, with j per neuron), the dense side skips the masks
(fraction 1). Blocks of `--steps` steps alternate sparse / dense `--repeats` times; the ratio compares the median
time per step (target: sparse <= 1.3 x dense). Activation sparsity (AbsTopK) is on in both: it is part of the
model, not of weight-sparse training.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lmscope.papers.weight_sparse.config import preset_config
from lmscope.papers.weight_sparse.data import train_tokenizer
from lmscope.papers.weight_sparse.train import build_model, make_optimizer, train_step


def block(model, optimizer, cfg, windows, fraction, steps) -> list[float]:
    times = []
    for i in range(steps):
        x = windows[i % len(windows)]
        start = time.perf_counter()
        train_step(model, model, optimizer, x, cfg.lr, fraction, cfg)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=3, help="sparse/dense block pairs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset_config(args.preset, out="unused")
    tok = train_tokenizer(["x = 1\n"], cfg.vocab_size)  # only its special-token ids are used: the windows are random
    gen = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.ctx), generator=gen) for _ in range(4)]
    sides = {}
    for name, fraction in (("sparse", cfg.weight_frac), ("dense", 1.0)):
        model = build_model(cfg, tok)
        sides[name] = (model, make_optimizer(model, cfg), fraction, [])
    for name in sides:  # warm-up: one step each, not timed
        model, opt, fraction, _ = sides[name]
        block(model, opt, cfg, windows, fraction, 1)
    for _ in range(args.repeats):
        for name in ("sparse", "dense"):
            model, opt, fraction, times = sides[name]
            times += block(model, opt, cfg, windows, fraction, args.steps)
    tokens = cfg.batch_size * cfg.ctx
    median = {name: statistics.median(side[3]) for name, side in sides.items()}
    out = {"preset": args.preset, "threads": args.threads, "tokens_per_step": tokens,
           "weight_frac": cfg.weight_frac, "steps_timed_per_side": args.steps * args.repeats,
           "sparse_tokens_per_s": tokens / median["sparse"], "dense_tokens_per_s": tokens / median["dense"],
           "time_ratio_sparse_over_dense": median["sparse"] / median["dense"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
