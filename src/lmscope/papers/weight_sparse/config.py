"""`SparseTrainConfig`: one training run of a weight-sparse model (or its dense baseline), with a docstring per
field; it is also the command line of `lmscope sparse train` (one flag per field) and is saved as
train_config.json. `PRESETS` name whole runs: tiny (tests, seconds), cpu (2.05M tokens: 52 min on one core of a
shared 2-core machine; learns 3 of the 6 tasks, README), gpu (the paper's small sweep scale, ~1.6M nonzero
parameters; not run here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from lmscope.core.config import option as _f
from lmscope.core.errors import InputError


@dataclass
class SparseTrainConfig:
    out: str = _f("", "output folder (created; refused if it holds anything, unless --overwrite or --resume)")
    preset: str = _f("cpu", "tiny | cpu | gpu: defaults for every field not given")
    # model
    n_layer: int = _f(2, "transformer blocks")
    n_embd: int = _f(128, "residual width (heads = n_embd / d_head)")
    d_head: int = _f(16, "width of one attention head")
    n_inner: int = _f(512, "MLP neurons per block")
    ctx: int = _f(256, "context length of the training windows")
    vocab_size: int = _f(2048, "BPE tokenizer size (the paper's tinypython_2k: 2,048)")
    afrac: float = _f(0.25, "fraction of activations kept by AbsTopK (residual reads/writes, q/k/v, neurons)")
    # weight sparsity
    weight_frac: float = _f(1 / 16, "target fraction of each weight matrix kept (1: the dense baseline)")
    anneal: float = _f(0.5, "the kept fraction goes linearly from 1 to weight_frac over this share of the steps")
    min_per_neuron: int = _f(4, "every neuron keeps at least this many nonzero weights in and out (j)")
    # optimisation
    steps: int = _f(500, "optimiser steps")
    batch_size: int = _f(16, "windows per step (global, over all ranks)")
    lr: float = _f(3e-3, "AdamW peak learning rate")
    weight_decay: float = _f(0.1, "AdamW weight decay (weight matrices only)")
    warmup_steps: int = _f(30, "linear warm-up steps")
    decay_frac: float = _f(0.3, "linear decay to 10% of the peak over this last share of the steps")
    grad_clip: float = _f(1.0, "clip the gradient's global norm to this")
    # data, evaluation, checkpoints
    max_train_chars: int = _f(0, "use only the first N characters of the train split (0: all; tests)")
    tokenizer: str = _f("", "folder with a tokenizer.json to reuse (default: train one on the train split)")
    eval_every: int = _f(50, "held-out (validation) loss, densities and dead neurons every N steps")
    eval_windows: int = _f(64, "validation windows in each held-out evaluation")
    task_prompts: int = _f(200, "held-out prompts per task for the accuracies reported at the end")
    checkpoint_every: int = _f(50, "save a loadable, resumable checkpoint every N steps (0: none)")
    seed: int = _f(0, "initialisation and data-order seed")
    threads: int = _f(0, "torch threads (0: leave as is)")
    device: str = _f("cpu", "cpu or cuda (under torchrun each rank takes cuda:LOCAL_RANK, nccl)")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "SparseTrainConfig":
        positive = ("n_layer", "n_embd", "d_head", "n_inner", "ctx", "steps", "batch_size", "eval_windows")
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.d_head:
            raise InputError(f"--n-embd ({self.n_embd}) must be a multiple of --d-head ({self.d_head})")
        if self.vocab_size < 260:
            raise InputError(f"--vocab-size must be at least 260 (256 bytes + <|endoftext|>), got {self.vocab_size}")
        for name in ("afrac", "weight_frac"):
            if not 0 < getattr(self, name) <= 1:
                raise InputError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.anneal <= 1 or not 0 <= self.decay_frac <= 1:
            raise InputError("--anneal and --decay-frac must be in [0, 1]")
        return self


_MODEL_TINY = dict(n_layer=2, n_embd=32, d_head=16, n_inner=64, ctx=32, vocab_size=300)
PRESETS: dict[str, dict] = {
    "tiny": dict(_MODEL_TINY, steps=8, batch_size=4, lr=3e-3, warmup_steps=2, weight_frac=0.25, eval_every=4,
                 eval_windows=4, checkpoint_every=4, max_train_chars=60_000, task_prompts=20),
    "cpu": {},  # the field defaults
    "gpu": dict(device="cuda", n_layer=8, n_embd=1024, n_inner=4096, weight_frac=1 / 64, steps=20_000, batch_size=64, lr=1.5e-3,
                warmup_steps=500, eval_every=500, checkpoint_every=2000),
}


def preset_config(name: str, **overrides) -> SparseTrainConfig:
    """The preset's config with `overrides` (fields given explicitly) on top."""
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(SparseTrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(unknown)}")
    return SparseTrainConfig(**{**PRESETS[name], **overrides, "preset": name}).validate()
