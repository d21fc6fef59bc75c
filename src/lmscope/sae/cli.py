"""`lmscope sae train|eval|features|synthetic|steer` (registered by lmscope.cli.build_parser).

Data-parallel training: `torchrun --nproc_per_node N -m lmscope.cli sae train ...` (gloo on CPU, nccl on GPUs);
only rank 0 writes and prints.
"""
from __future__ import annotations

import json
import sys


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_initialized() else 0


def _out(args, result) -> None:
    if _rank() != 0:
        return
    from lmscope.cli.common import emit
    emit(args, result)


def cmd_train(args) -> None:
    from lmscope.cli.common import load_model

    from lmscope.core.errors import InputError
    from lmscope.sae.config import TrainConfig, from_args
    from lmscope.sae.data import ModelSource, StoreSource
    from lmscope.sae.trainer import check_out_folder, train_sae
    cfg = from_args(TrainConfig, args)
    if not cfg.out:
        raise InputError("give --out FOLDER for the trained SAE")
    check_out_folder(cfg.out)
    model = load_model(args)
    site = str(model.site(cfg.site))
    site_out = str(model.site(cfg.site_out)) if cfg.site_out else ""
    if cfg.harvest:
        from lmscope.harvest import open_store
        store = open_store(cfg.harvest)
        store.check_model(model, site)
        if site_out:
            store.check_model(model, site_out)
        if not store.complete:
            print(f"lmscope: warning: {cfg.harvest} is not complete ({store.n_tokens} tokens so far)",
                  file=sys.stderr)
        source = StoreSource(store, site, site_out, buffer=cfg.shuffle_buffer)
    else:
        source = ModelSource(model, site, cfg.corpus, site_out=site_out, corpus_seed=cfg.corpus_seed,
                             seq_len=cfg.seq_len, buffer=min(cfg.shuffle_buffer, 2 ** 17))
    result = train_sae(cfg, source, progress=not args.json)
    _out(args, result)


def _model_and_sae(args):
    from lmscope.cli.common import load_model

    from lmscope.sae.interop import load_sae
    model = load_model(args)
    return model, load_sae(args.sae, model=model, device=model.device)


def cmd_eval(args) -> None:
    from lmscope.sae.evaluate import evaluate_sae
    model, sae = _model_and_sae(args)
    _out(args, evaluate_sae(model, sae, args.corpus, n_tokens=args.tokens, harvest=args.harvest,
                            corpus_seed=args.seed, progress=not args.json))


def cmd_features(args) -> None:
    from lmscope.cli.common import numbers

    from lmscope.sae.dashboard import write_dashboards
    from lmscope.sae.features import feature_stats
    from lmscope.sae.trainer import check_out_folder
    check_out_folder(args.html)     # before any work
    latents = numbers(args.latents, int, "--latents")
    model, sae = _model_and_sae(args)
    stats = feature_stats(model, sae, args.corpus, n_tokens=args.tokens, k=args.top_k, harvest=args.harvest,
                          corpus_seed=args.seed, progress=not args.json)
    if latents is None:
        latents = stats.pick_random_live(args.n, seed=args.seed)
    result = write_dashboards(stats, args.html, latents)
    print(f"lmscope: wrote {result.index}", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.summary())


def cmd_synthetic(args) -> None:
    from lmscope.sae.synthetic import synthetic_benchmark
    result = synthetic_benchmark(n_features=args.features, d=args.dim, mean_active=args.mean_active,
                                 alpha=args.alpha, expansion=args.expansion, k=args.k, n_tokens=args.tokens,
                                 batch_size=args.batch_size, seed=args.seed, out=args.out,
                                 progress=not args.json)
    _out(args, result)


def cmd_steer(args) -> None:
    from lmscope.sae.steer import steer
    model, sae = _model_and_sae(args)
    _out(args, steer(model, sae, args.prompt, args.latent, args.value, mode=args.mode,
                     max_new_tokens=args.max_new_tokens))


def register(sub) -> None:
    """Add `sae` and its actions to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli.common import model_options

    from lmscope.sae.config import TrainConfig, add_dataclass_args
    p = sub.add_parser("sae", help="sparse autoencoders: train, evaluate, feature dashboards, synthetic check")
    actions = p.add_subparsers(dest="action", required=True)

    def common(q, html_help="write a self-contained HTML page"):
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        if html_help:
            q.add_argument("--html", metavar="FILE", help=html_help)

    t = actions.add_parser("train", help="train an SAE or transcoder (from a harvest folder or the model); "
                                         "under torchrun: data parallel")
    add_dataclass_args(t, TrainConfig)
    model_options(t)
    common(t)
    t.set_defaults(func=cmd_train)

    def sae_args(q):
        q.add_argument("sae", help="SAE folder (lmscope, SAELens or sparsify format)")
        model_options(q)
        q.add_argument("--corpus", default="wiki", help="text to evaluate on (default wiki)")
        q.add_argument("--harvest", default=None, help="harvest folder whose unused documents are the held-out "
                                                       "text (default: the one the SAE was trained on)")
        q.add_argument("--seed", type=int, default=0, help="corpus order when there is no harvest")

    e = actions.add_parser("eval", help="FVU, L0, dead latents, CE loss recovered, KL on held-out text")
    sae_args(e)
    e.add_argument("--tokens", type=int, default=16_384, help="text tokens to evaluate (default 16384)")
    common(e)
    e.set_defaults(func=cmd_eval)

    f = actions.add_parser("features", help="one HTML dashboard page per feature plus an index")
    sae_args(f)
    f.add_argument("--html", metavar="DIR", required=True, help="new folder for the pages")
    f.add_argument("--tokens", type=int, default=50_000, help="held-out tokens streamed (default 50000)")
    f.add_argument("--n", type=int, default=20, help="random live latents to show (default 20)")
    f.add_argument("--latents", default=None, help="comma-separated latents instead of random ones")
    f.add_argument("--top-k", type=int, default=16, help="top contexts per latent (default 16)")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    f.set_defaults(func=cmd_features)

    s = actions.add_parser("synthetic", help="train a TopK SAE on planted sparse features; does it recover them?")
    s.add_argument("--features", type=int, default=256, help="planted features (default 256)")
    s.add_argument("--dim", type=int, default=96, help="dimension of the activations (default 96)")
    s.add_argument("--mean-active", type=float, default=5.0, help="features on per sample, on average (default 5)")
    s.add_argument("--alpha", type=float, default=0.5, help="power-law exponent of feature frequencies")
    s.add_argument("--expansion", type=int, default=2, help="d_sae = expansion * features (default 2)")
    s.add_argument("--k", type=int, default=10, help="TopK k (default 10)")
    s.add_argument("--tokens", type=int, default=150_000, help="training samples (default 150000)")
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="", help="also save the SAE in this new folder")
    common(s)
    s.set_defaults(func=cmd_synthetic)

    st = actions.add_parser("steer", help="generate while adding to or clamping one latent (SAE error kept)")
    st.add_argument("sae")
    st.add_argument("prompt")
    st.add_argument("--latent", type=int, required=True)
    st.add_argument("--value", type=float, required=True, help="amount added, or the clamped value")
    st.add_argument("--mode", choices=("add", "clamp"), default="add")
    st.add_argument("--max-new-tokens", type=int, default=20)
    model_options(st)
    common(st)
    st.set_defaults(func=cmd_steer)
