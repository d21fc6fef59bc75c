"""Harvest throughput against a bare forward pass over the same inputs.

    OMP_NUM_THREADS=1 python benchmarks/harvest_throughput.py --tokens 20000

Both sides see the same windows in the same batches (the harvest's own plan). "bare forward" is the plain HF
forward of the whole model (logits included, no hooks, nothing written); the harvest stops after the deepest site
read and writes float16 shards, so a ratio above 1 is possible. The harvest is timed end to end (tokenizing,
forward, gathering, writing files), into a temporary folder that is deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from bench_model import bench_model
from lmscope.harvest import harvest
from lmscope.harvest.windows import iter_windows, plan_shards, resolve_prefix


def bare_forward(model, args) -> tuple[int, float]:
    tok = model.tokenizer
    windows = iter_windows(tok, args.corpus.split(","), seq_len=args.seq_len, seed=0,
                           prefix=resolve_prefix(tok, "auto"), skip_ids=frozenset(tok.all_special_ids))
    plans = list(plan_shards(windows, tokens_target=args.tokens, shard_tokens=args.shard_tokens))
    start, n = time.perf_counter(), 0
    with torch.no_grad():
        for plan in plans:
            for first in range(0, len(plan.windows), args.batch_size):
                batch = plan.windows[first:first + args.batch_size]
                ids, mask = model.encode([list(w.ids) for w in batch])
                model.hf(input_ids=ids, attention_mask=mask, use_cache=False)
                n += sum(w.n_keep for w in batch)
    return n, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--model-dtype", default="float32", help="float32 (default) or bfloat16, for both sides")
    p.add_argument("--corpus", default="wiki")
    p.add_argument("--site", default="resid_post.12")
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-tokens", type=int, default=65536)
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    args = p.parse_args()
    model = bench_model(args.model, dtype=args.model_dtype, device=args.device)
    # bare, harvest, bare again: on a shared machine the load drifts, and the two bare passes show by how much
    n_bare, t_first = bare_forward(model, args)
    with tempfile.TemporaryDirectory() as folder:
        result = harvest(model, args.corpus, [args.site], args.tokens, f"{folder}/h", seq_len=args.seq_len,
                         batch_size=args.batch_size, shard_tokens=args.shard_tokens, progress=False)
    _, t_second = bare_forward(model, args)
    t_bare = (t_first + t_second) / 2
    out = {"model": args.model, "model_dtype": args.model_dtype, "site": args.site, "tokens": args.tokens,
           "device": str(model.device), "n_params": sum(p.numel() for p in model.hf.parameters()),
           "threads": torch.get_num_threads(),
           "bare_forward_tokens_per_s": n_bare / t_bare, "bare_forward_s": [t_first, t_second],
           "harvest_tokens_per_s": result.tokens_per_s, "harvest_s": result.wall_s,
           "ratio_harvest_to_bare": result.tokens_per_s / (n_bare / t_bare)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
