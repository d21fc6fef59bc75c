"""Subcommands of this part (registered by lmscope.cli.build_parser): `lmscope harvest`, `lmscope harvest-check`."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from lmscope.cli.common import check_outputs, emit, output_options
from lmscope.core.models.loading import DEFAULT_MODEL, MODEL_SPECS, load
from lmscope.harvest.figures import folder_page
from lmscope.harvest.store import open_store, verify_store
from lmscope.harvest.writer import check_harvest_folder, harvest


def register(sub) -> None:
    """Add this part's subcommands to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("harvest", help="write sites' activations over a corpus to disk (sharded, resumable; "
                                       "torchrun for several processes)")
    # Not cli.model_options: here --dtype is the dtype on disk, the model's own is --model-dtype.
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_SPECS} (default {DEFAULT_MODEL})")
    p.add_argument("--model-dtype", default="float32", help="dtype the model runs in (default float32)")
    p.add_argument("--device", default=None, help="cpu (default; cuda:<local rank> under torchrun with CUDA)")
    p.add_argument("--corpus", default="wiki", help="a corpus, or several separated by commas (mixed so each "
                                                    "gives about the same amount of text): wiki, wiki-fr, wiki-es, "
                                                    "python, shakespeare, bible (default wiki)")
    p.add_argument("--sites", required=True, help="comma-separated sites, e.g. resid_post.12,mlp_out.6 (required)")
    p.add_argument("--tokens", type=int, required=True, help="tokens to write (special tokens not counted; required)")
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty folder in an existing one, or the folder "
                                                               "of an interrupted run of the same command to "
                                                               "continue (the one exception to the output rule; "
                                                               "required)")
    p.add_argument("--seq-len", type=int, default=128, help="corpus tokens per window (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the stored activations (default float16)")
    p.add_argument("--shard-tokens", type=int, default=65536, help="tokens per shard file (default 65536)")
    p.add_argument("--seed", type=int, default=0, help="document order (default 0)")
    p.add_argument("--keep-special", action="store_true", help="also write special tokens (the prefix too; "
                                                               "default: not written)")
    p.add_argument("--prefix", default="auto", help="token before each window: auto (default), none, or an id")
    output_options(p)
    p.set_defaults(func=cmd_harvest)

    p = sub.add_parser("harvest-check", help="check a harvest folder: manifest, files, every shard's sha256")
    p.add_argument("folder", help="the harvest folder")
    output_options(p)
    p.set_defaults(func=cmd_harvest_check)


def _device(requested):
    if requested is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return requested


def cmd_harvest(args) -> None:
    check_outputs(args)
    check_harvest_folder(args.out)
    model = load(args.model, dtype=args.model_dtype, device=_device(args.device))
    result = harvest(model, args.corpus, args.sites, args.tokens, args.out, seq_len=args.seq_len,
                     batch_size=args.batch_size, dtype=args.dtype, shard_tokens=args.shard_tokens, seed=args.seed,
                     skip_special=not args.keep_special, prefix=args.prefix, progress=not args.json)
    if result.rank == 0:
        emit(args, result)


def cmd_harvest_check(args) -> None:
    check_outputs(args)
    store = open_store(args.folder)
    check = verify_store(store)
    if args.html:
        print(f"lmscope: wrote {folder_page(store, args.html, overwrite=args.overwrite)}", file=sys.stderr)
    emit(argparse.Namespace(**{**vars(args), "html": None}), check)
