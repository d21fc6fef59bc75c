"""Synthetic ground truth: activations built from known sparse features, to check that training recovers them.

`n_features` random unit directions in `d` dimensions (more features than dimensions: superposition). Each sample
switches feature i on with probability p_i, where the p_i follow a power law (p_i ~ (i + 1) ** -alpha) scaled so
that `mean_active` features are on per sample on average; an active feature gets a magnitude uniform in
[0.5, 1.5]. A recovered feature is one some decoder row points along: the score is, per true feature, the largest
cosine with any decoder row, averaged over features ("mean max cosine", Sharkey et al. 2022).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_number
from lmscope.core.config import option
from lmscope.core.errors import InputError
from lmscope.results.base import Result
from lmscope.sae.config import TrainConfig
from lmscope.sae.data import Source
from lmscope.sae.trainer import train_sae


class SyntheticFeatures:
    def __init__(self, n_features: int = 512, d: int = 64, mean_active: float = 5.0, alpha: float = 0.5,
                 seed: int = 0):
        if n_features < 1 or d < 1 or not 0 < mean_active <= n_features:
            raise InputError("synthetic data needs n_features >= 1, d >= 1, 0 < mean_active <= n_features")
        generator = torch.Generator().manual_seed(seed)
        f = torch.randn(n_features, d, generator=generator)
        self.features = f / f.norm(dim=1, keepdim=True)
        p = (torch.arange(n_features, dtype=torch.float64) + 1) ** -alpha
        self.probs = (p * mean_active / p.sum()).clamp(max=1.0).float()
        self.seed = seed

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, d], coefficients [n, n_features])."""
        on = torch.rand(n, len(self.probs), generator=generator) < self.probs
        mags = 0.5 + torch.rand(n, len(self.probs), generator=generator)
        coef = on * mags
        return coef @ self.features, coef

    def mean_max_cos(self, decoder: torch.Tensor) -> tuple[float, torch.Tensor]:
        d = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best = (self.features @ d.T).max(dim=1).values
        return float(best.mean()), best


class SyntheticSource(Source):
    """Fresh samples for every global batch (seeded by batch number), each rank taking its slice."""

    def __init__(self, data: SyntheticFeatures):
        self.data = data
        self.d_in = self.d_out = data.features.shape[1]
        self.site_in = self.site_out = "synthetic"
        self.skip_first = False

    def batches(self, batch_size, *, rank=0, world_size=1, seed=0):
        if batch_size % world_size:
            raise InputError(f"batch size {batch_size} does not split over {world_size} ranks")
        share, step = batch_size // world_size, 0
        while True:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
            x, _ = self.data.sample(batch_size, generator)
            yield x[rank * share:(rank + 1) * share], None
            step += 1


@dataclass
class SyntheticResult(Result, kind="sae_synthetic"):
    mean_max_cos: float
    frac_recovered: float            # true features with max cosine > 0.9
    fvu: float                       # on fresh held-out samples
    l0: float
    dead_frac: float                 # latents that never fire on the held-out samples
    n_features: int
    d: int
    d_sae: int
    k: int
    n_tokens: int
    train_s: float
    tokens_per_s: float
    world_size: int
    max_cos: list[float]             # per true feature, in order of decreasing frequency
    config: "SyntheticConfig | None" = None

    def summary(self) -> str:
        return (f"synthetic ground truth: {self.n_features} features in d={self.d}; TopK SAE d_sae={self.d_sae} "
                f"k={self.k} on {self.n_tokens} samples ({self.train_s:.1f} s, {self.tokens_per_s:.0f} samples/s, "
                f"{self.world_size} rank(s))\nmean max cosine {self.mean_max_cos:.4f}  recovered (cos > 0.9) "
                f"{self.frac_recovered:.1%}  FVU {self.fvu:.4f}  L0 {self.l0:.2f}  dead {self.dead_frac:.1%}")

    def figure(self):
        fig = go.Figure(go.Scatter(y=self.max_cos, mode="markers"))
        fig.update_layout(title="Best cosine of each true feature with a decoder row (features by decreasing "
                                "frequency)", xaxis_title="true feature (frequency rank)",
                          yaxis_title="max cosine", height=400, width=900)
        return fig

    def title(self) -> str:
        return "Synthetic SAE check"

    def page_intro(self) -> str:
        return self.summary()


@dataclass
class SyntheticConfig:
    """The planted-feature benchmark of `lmscope sae synthetic` (one flag per field)."""
    n_features: int = option(256, "planted features", flag="--features")
    d: int = option(96, "dimension of the activations", flag="--dim")
    mean_active: float = option(5.0, "features on per sample, on average")
    alpha: float = option(0.5, "power-law exponent of feature frequencies")
    expansion: int = option(2, "d_sae = expansion * features")
    k: int = option(10, "TopK k")
    n_tokens: int = option(150_000, "training samples", flag="--tokens")
    batch_size: int = option(1024, "samples per step")
    lr: float = option(0.0, "Adam learning rate (0: 2e-3)")
    seed: int = option(0, "seed of the planted features, the samples and the SAE")


def synthetic_benchmark(config: "SyntheticConfig | None" = None, *, out: str = "", overwrite: bool = False,
                        progress: bool = False, **overrides) -> SyntheticResult:
    """Train a TopK SAE on planted features (under torchrun too) and score recovery on held-out samples.
    `overrides` replace fields of `config` (e.g. n_features=64); with `out`, the SAE is saved there (a new or empty
    folder unless overwrite=True)."""
    try:
        config = dataclasses.replace(config or SyntheticConfig(), **overrides)
    except TypeError as exc:
        raise InputError(f"synthetic_benchmark: {exc}") from None
    for name, minimum in (("n_features", 1), ("d", 1), ("expansion", 1), ("k", 1), ("n_tokens", 1),
                          ("batch_size", 1), ("seed", 0)):
        check_count(name, getattr(config, name), minimum)
    check_number("mean_active", config.mean_active, positive=True)
    check_number("alpha", config.alpha, minimum=0)
    check_number("lr", config.lr, minimum=0)
    n_features, d, mean_active, alpha = config.n_features, config.d, config.mean_active, config.alpha
    expansion, k, n_tokens, batch_size, lr, seed = (config.expansion, config.k, config.n_tokens, config.batch_size,
                                                     config.lr, config.seed)
    data = SyntheticFeatures(n_features, d, mean_active, alpha, seed)
    cfg = TrainConfig(out=out, architecture="topk", d_sae=expansion * n_features, k=k, n_tokens=n_tokens,
                      batch_size=batch_size, lr=lr or 2e-3, warmup_steps=10, dead_tokens=50_000, seed=seed,
                      norm_batches=2, outlier_factor=0.0)
    result = train_sae(cfg, SyntheticSource(data), progress=progress, overwrite=overwrite)
    sae = result.sae
    x, _ = data.sample(8192, torch.Generator().manual_seed(seed + 999_983))
    with torch.no_grad():
        z = sae.encode(x)
        recon = sae.decode(z)
    x64, r64 = x.double(), recon.double()
    fvu = float((x64 - r64).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
    mmc, best = data.mean_max_cos(sae.W_dec.detach())
    return SyntheticResult(mmc, float((best > 0.9).float().mean()), fvu, float((z > 0).sum(1).float().mean()),
                           float(((z > 0).sum(0) == 0).float().mean()), n_features, d, sae.d_sae, k,
                           result.n_tokens, result.wall_s, result.tokens_per_s, result.world_size,
                           [round(float(b), 4) for b in best], config)
