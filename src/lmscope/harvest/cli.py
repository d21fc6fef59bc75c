"""Subcommands of this part (registered by lmscope.cli.build_parser): `lmscope harvest`, `lmscope harvest-check`."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("harvest", help="write sites' activations over a corpus to disk (sharded, resumable; "
                                       "torchrun for several processes)")
    # Not cli.model_options: here --dtype is the dtype on disk, the model's own is --model-dtype.
    p.add_argument("--model", default="smollm2", help="smollm2 (default), hf:<name-or-path>, gguf:<path> or "
                                                      "random:<family>")
    p.add_argument("--model-dtype", default="float32", help="dtype the model runs in (default float32)")
    p.add_argument("--device", default=None, help="cpu (default; cuda:<local rank> under torchrun with CUDA)")
    p.add_argument("--corpus", default="wiki", help="a corpus, or several separated by commas (mixed so each "
                                                    "gives about the same amount of text): wiki, wiki-fr, wiki-es, "
                                                    "python, shakespeare, bible")
    p.add_argument("--sites", required=True, help="comma-separated sites, e.g. resid_post.12,mlp_out.6")
    p.add_argument("--tokens", type=int, required=True, help="tokens to write (special tokens not counted)")
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty folder, or the folder of an "
                                                               "interrupted run of the same command to continue")
    p.add_argument("--seq-len", type=int, default=128, help="corpus tokens per window (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the stored activations (default float16)")
    p.add_argument("--shard-tokens", type=int, default=65536, help="tokens per shard file (default 65536)")
    p.add_argument("--seed", type=int, default=0, help="document order")
    p.add_argument("--keep-special", action="store_true", help="also write special tokens (the prefix too)")
    p.add_argument("--prefix", default="auto", help="token before each window: auto (default), none, or an id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=cmd_harvest)

    p = sub.add_parser("harvest-check", help="check a harvest folder: manifest, files, every shard's sha256")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE", help="a page: tokens per shard, activation norms per site")
    p.set_defaults(func=cmd_harvest_check)


def _device(requested):
    import os

    import torch
    if requested is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return requested


def cmd_harvest(args) -> None:
    from lmscope.cli.common import emit
    from lmscope.core.models.loading import load

    from lmscope.harvest.writer import harvest
    model = load(args.model, dtype=args.model_dtype, device=_device(args.device))
    result = harvest(model, args.corpus, args.sites, args.tokens, args.out, seq_len=args.seq_len,
                     batch_size=args.batch_size, dtype=args.dtype, shard_tokens=args.shard_tokens, seed=args.seed,
                     skip_special=not args.keep_special, prefix=args.prefix, progress=not args.json)
    if result.rank == 0:
        emit(args, result)


def cmd_harvest_check(args) -> None:
    from lmscope.harvest.store import open_store
    store = open_store(args.folder)
    n = 0
    for entry, shard in zip(store.shards, store.iter_shards(verify=True, keys=["token_ids"])):
        if len(shard["token_ids"]) != entry["n_tokens"]:
            from lmscope.core.errors import InputError
            raise InputError(f"{entry['file']} holds {len(shard['token_ids'])} tokens, the manifest says "
                             f"{entry['n_tokens']}")
        n += entry["n_tokens"]
    report = {"folder": str(store.folder), "model": store.model_spec, "sites": store.sites,
              "dtype": store.manifest["dtype"], "n_tokens": store.n_tokens, "tokens_in_shards": n,
              "n_shards": len(store.shards), "complete": store.complete, "sha256_ok": True}
    if args.html:
        from lmscope.harvest.figures import folder_page
        print(f"lmscope: wrote {folder_page(store, args.html)}", file=sys.stderr)
    print(json.dumps(report) if args.json else
          f"{store}\n  all {len(store.shards)} shards match their sha256; {n:,} tokens in the shards",
          file=sys.stdout)
