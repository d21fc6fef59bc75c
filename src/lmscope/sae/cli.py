"""`lmscope sae train|eval|features|synthetic|steer` (registered by lmscope.cli.main).

Every output (--out, --html, --json FILE) is checked before the model loads. Data-parallel training:
`torchrun --nproc_per_node N -m lmscope.cli sae train ...` (gloo on CPU, nccl on GPUs); only rank 0 writes and prints.
"""
from __future__ import annotations

import argparse
import sys

import torch.distributed as dist

from lmscope.cli.common import (add_config_options, check_outputs, config_from_args, emit, load_model, model_options,
                                numbers, output_options)
from lmscope.core.checks import check_count, check_number, check_prompts
from lmscope.core.errors import InputError
from lmscope.data.corpora import check_corpus
from lmscope.harvest import open_store
from lmscope.sae.checkpoints import check_train_folder
from lmscope.sae.config import TrainConfig
from lmscope.sae.dashboard import write_dashboards
from lmscope.sae.data import ModelSource, StoreSource
from lmscope.sae.evaluate import evaluate_sae
from lmscope.sae.features import feature_stats
from lmscope.sae.interop import load_sae
from lmscope.sae.steer import sae_steer
from lmscope.sae.synthetic import SyntheticConfig, synthetic_benchmark
from lmscope.sae.trainer import check_out_folder, train_sae


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _out(args, result) -> None:
    if _rank() == 0:
        emit(args, result)


def cmd_train(args) -> None:
    cfg = config_from_args(TrainConfig, args).check()     # every argument before anything is written
    if not cfg.out:
        raise InputError("give --out FOLDER for the trained SAE")
    if not cfg.harvest:
        check_corpus(cfg.corpus)
    check_outputs(args)
    check_train_folder(cfg, overwrite=args.overwrite)      # a new folder, or an unfinished run of this command
    model = load_model(args)
    site = str(model.site(cfg.site))
    site_out = str(model.site(cfg.site_out)) if cfg.site_out else ""
    if cfg.harvest:
        store = open_store(cfg.harvest)
        store.check_model(model, site)
        if site_out:
            store.check_model(model, site_out)
        if not store.complete:
            print(f"lmscope: warning: {cfg.harvest} is not complete ({store.n_tokens} tokens so far)", file=sys.stderr)
        source = StoreSource(store, site, site_out, buffer=cfg.shuffle_buffer)
    else:
        source = ModelSource(model, site, cfg.corpus, site_out=site_out, corpus_seed=cfg.corpus_seed,
                             seq_len=cfg.seq_len, buffer=min(cfg.shuffle_buffer, 2 ** 17))
    _out(args, train_sae(cfg, source, progress=not args.json, overwrite=args.overwrite))


def _model_and_sae(args):
    if getattr(args, "corpus", None) and not getattr(args, "harvest", None):
        check_corpus(args.corpus)
    for name in ("tokens", "n", "top_k", "max_new_tokens"):
        if getattr(args, name, None) is not None:
            check_count(f"--{name.replace('_', '-')}", getattr(args, name))
    model = load_model(args)
    return model, load_sae(args.sae, model=model, device=model.device)


def cmd_eval(args) -> None:
    check_outputs(args)
    model, sae = _model_and_sae(args)
    _out(args, evaluate_sae(model, sae, args.corpus, n_tokens=args.tokens, harvest=args.harvest,
                            corpus_seed=args.seed, progress=not args.json))


def cmd_features(args) -> None:
    check_outputs(argparse.Namespace(**{**vars(args), "html": None}))     # --html is the pages' folder here
    check_out_folder(args.html, overwrite=args.overwrite)
    latents = numbers(args.latents, int, "--latents")
    model, sae = _model_and_sae(args)
    for latent in latents or []:
        check_count("--latents", latent, 0, sae.d_sae - 1)
    stats = feature_stats(model, sae, args.corpus, n_tokens=args.tokens, k=args.top_k, harvest=args.harvest,
                          corpus_seed=args.seed, progress=not args.json)
    if latents is None:
        latents = stats.pick_random_live(args.n, seed=args.seed)
    result = write_dashboards(stats, args.html, latents, overwrite=args.overwrite)
    print(f"lmscope: wrote {result.index}", file=sys.stderr)
    emit(argparse.Namespace(**{**vars(args), "html": None}), result)


def cmd_synthetic(args) -> None:
    check_outputs(args)
    check_out_folder(args.out, overwrite=args.overwrite)
    _out(args, synthetic_benchmark(config_from_args(SyntheticConfig, args), out=args.out, overwrite=args.overwrite,
                                   progress=not args.json))


def cmd_steer(args) -> None:
    check_outputs(args)
    check_number("--value", args.value)
    check_prompts([args.prompt], "the prompt")
    model, sae = _model_and_sae(args)
    _out(args, sae_steer(model, sae, args.prompt, args.latent, args.value, mode=args.mode,
                         max_new_tokens=args.max_new_tokens))


def register(sub) -> None:
    """Add `sae` and its actions to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("sae", help="sparse autoencoders: train, evaluate, feature dashboards, synthetic check, steer")
    actions = p.add_subparsers(dest="action", required=True)

    t = actions.add_parser("train", help="train an SAE or transcoder (from a harvest folder or the model); "
                                         "under torchrun: data parallel")
    add_config_options(t, TrainConfig)
    model_options(t)
    output_options(t)
    t.set_defaults(func=cmd_train)

    def sae_args(q):
        q.add_argument("sae", help="SAE folder (lmscope, SAELens or sparsify format)")
        model_options(q)
        q.add_argument("--corpus", default="wiki", help="text to evaluate on (default wiki)")
        q.add_argument("--harvest", default=None, help="harvest folder whose unused documents are the held-out "
                                                       "text (default: none, the corpus from its start)")
        q.add_argument("--seed", type=int, default=0, help="corpus order when there is no harvest (default 0)")

    e = actions.add_parser("eval", help="FVU, L0, dead latents, CE loss recovered, KL(clean || SAE) on held-out text")
    sae_args(e)
    e.add_argument("--tokens", type=int, default=16_384, help="text tokens to evaluate (default 16384)")
    output_options(e)
    e.set_defaults(func=cmd_eval)

    f = actions.add_parser("features", help="one HTML dashboard page per feature plus an index")
    sae_args(f)
    f.add_argument("--html", metavar="DIR", required=True, help="new or empty folder for the pages (required)")
    f.add_argument("--tokens", type=int, default=50_000, help="held-out tokens streamed (default 50000)")
    f.add_argument("--n", type=int, default=20, help="random live latents to show (default 20)")
    f.add_argument("--latents", default=None, help="comma-separated latents instead of random ones (default: none)")
    f.add_argument("--top-k", type=int, default=16, help="top contexts per latent (default 16)")
    output_options(f, html=False)
    f.set_defaults(func=cmd_features)

    s = actions.add_parser("synthetic", help="train a TopK SAE on planted sparse features; does it recover them?")
    add_config_options(s, SyntheticConfig)
    s.add_argument("--out", default="", help="also save the SAE in this new folder (default: not saved)")
    output_options(s)
    s.set_defaults(func=cmd_synthetic)

    st = actions.add_parser("steer", help="generate while adding to or clamping one latent (SAE error kept)")
    st.add_argument("sae", help="SAE folder (lmscope, SAELens or sparsify format)")
    st.add_argument("prompt", help="text to continue")
    st.add_argument("--latent", type=int, required=True, help="the latent to steer (required)")
    st.add_argument("--value", type=float, required=True, help="amount added, or the clamped value (required)")
    st.add_argument("--mode", choices=("add", "clamp"), default="add", help="add to the latent or clamp it "
                                                                             "(default add)")
    st.add_argument("--max-new-tokens", type=int, default=20, help="tokens generated (default 20)")
    model_options(st)
    output_options(st)
    st.set_defaults(func=cmd_steer)
