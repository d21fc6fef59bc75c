"""Configs: `SAEConfig` describes a trained SAE (saved as cfg.json beside its weights); `TrainConfig` describes a
training run and doubles as the command line of `lmscope sae train` (one flag per field, help from the field)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from lmscope.core.checks import check_count, check_number
from lmscope.core.config import option
from lmscope.core.errors import InputError

FORMAT = "lmscope-sae/1"


@dataclass
class SAEConfig:
    architecture: str                    # relu | topk | batchtopk | jumprelu
    d_in: int
    d_sae: int
    d_out: int = 0                       # 0: same as d_in (an SAE); a transcoder may differ
    k: int = 32                          # topk / batchtopk
    k_aux: int = 0                       # AuxK latents; 0: d_out // 2
    auxk_coeff: float = 1 / 32
    l1_coeff: float = 1.0                # relu
    l0_coeff: float = 1.0                # jumprelu
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    input_scale: float = 1.0             # x * input_scale has unit mean squared norm on the training data
    output_scale: float = 1.0            # same for the predicted site (equal to input_scale for an SAE)
    seed: int = 0
    model: str = ""                      # model spec the SAE was trained on
    model_config_hash: str = ""
    site_in: str = ""                    # canonical site name, e.g. resid_post.12
    site_out: str = ""                   # = site_in for an SAE; mlp_out.L for an MLP transcoder
    n_tokens_trained: int = 0
    max_norm: float = 0.0                # rows with a larger input norm (attention sinks) were not trained on and
                                         # are not spliced at evaluation; 0: no limit
    harvest: str = ""                    # harvest folder trained on (its unused documents are held out)
    subtract_b_dec: bool = True          # encode x - b_dec (SAEs trained here; SAELens apply_b_dec_to_input)
    skip_first: bool = True              # position 0 of every window (an attention sink, norm ~100x) left out

    def __post_init__(self):
        if not self.d_out:
            self.d_out = self.d_in
        if not self.site_out:
            self.site_out = self.site_in
        for name in ("d_in", "d_sae", "d_out"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise InputError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "SAEConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig:
    out: str = option("", "output folder (created; must not hold another run)")
    # data
    harvest: str = option("", "harvest folder to train from (lmscope harvest); else straight from the model")
    site: str = option("resid_post.12", "site to read (canonical name)")
    site_out: str = option("", "transcoder: site to predict (e.g. mlp_out.12 with --site resid_mid.12)")
    corpus: str = option("wiki", "corpus for training straight from the model")
    corpus_seed: int = option(0, "document order of that corpus")
    seq_len: int = option(128, "window length when reading straight from the model")
    shuffle_buffer: int = option(2 ** 18, "activations held for shuffling")
    n_tokens: int = option(2_000_000, "training tokens")
    # SAE
    architecture: str = option("topk", "SAE architecture", choices=("relu", "topk", "batchtopk", "jumprelu"))
    expansion: int = option(8, "d_sae = expansion * d_in (unless --d-sae)")
    d_sae: int = option(0, "number of latents (0: expansion * d_in)")
    k: int = option(32, "active latents per token (topk, batchtopk)")
    auxk_coeff: float = option(1 / 32, "AuxK loss weight (topk, batchtopk)")
    dead_tokens: int = option(500_000, "a latent not fired for this many tokens counts as dead")
    l1_coeff: float = option(5.0, "L1 weight (relu)")
    l0_coeff: float = option(1e-3, "L0 weight (jumprelu)")
    # optimisation
    batch_size: int = option(4096, "tokens per step (global, over all ranks)")
    lr: float = option(0.0, "Adam learning rate (0: 2e-4 / sqrt(d_sae / 2**14), Gao et al. 2024)")
    warmup_steps: int = option(20, "linear warm-up steps")
    decay_frac: float = option(0.2, "linear decay to 0 over this last fraction of the steps")
    norm_batches: int = option(4, "batches used to estimate the normalising scale")
    outlier_factor: float = option(10.0, "rows with norm > this x the median norm (attention sinks) are left out; "
                                     "0: keep all")
    checkpoint_every: int = option(0, "save a checkpoint every N steps (0: only at the end)")
    seed: int = option(0, "initialisation and shuffling seed")
    threads: int = option(0, "torch threads (0: leave as is)")

    def check(self) -> "TrainConfig":
        """One InputError for the first bad field (before anything is read, loaded or written)."""
        for name, minimum in (("n_tokens", 1), ("batch_size", 1), ("expansion", 1), ("d_sae", 0), ("k", 1),
                              ("dead_tokens", 1), ("seq_len", 2), ("shuffle_buffer", 1), ("warmup_steps", 0),
                              ("norm_batches", 1), ("checkpoint_every", 0), ("seed", 0), ("threads", 0),
                              ("corpus_seed", 0)):
            check_count(f"--{name.replace('_', '-')}", getattr(self, name), minimum)
        for name in ("lr", "auxk_coeff", "l1_coeff", "l0_coeff", "outlier_factor"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), minimum=0)
        check_number("--decay-frac", self.decay_frac, minimum=0)
        if self.decay_frac > 1:
            raise InputError(f"--decay-frac must be between 0 and 1, got {self.decay_frac!r}")
        if self.architecture not in ("relu", "topk", "batchtopk", "jumprelu"):
            raise InputError(f"unknown SAE architecture {self.architecture!r}; one of relu, topk, batchtopk, "
                             f"jumprelu")
        if self.n_tokens < self.batch_size:
            raise InputError(f"--n-tokens ({self.n_tokens}) is smaller than one batch ({self.batch_size})")
        return self

    def resolved_lr(self, d_sae: int) -> float:
        return self.lr or 2e-4 / (d_sae / 2 ** 14) ** 0.5

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
