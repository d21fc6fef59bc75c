"""What each SAE latent responds to and what it does.

`feature_stats` streams held-out windows through the model and the SAE and keeps, for every latent, its firing
density, mean and maximum activation, a histogram of log10(activation) and its top-k activating tokens (a fixed
[d_sae, k] table merged batch by batch: memory does not grow with the text). `FeatureStats.feature(i)` then adds
the rest for one latent: its activation over each top context window (recomputed, for highlighting) and its logit
effect: the decoder direction times the final norm's elementwise gain, through the unembedding W_U (the norm's
data-dependent 1/rms factor is left out, so the numbers rank tokens; they are not logit changes of a real run).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from lmscope.core.errors import InputError
from lmscope.core.trace import resident
from lmscope.lenses import norm_affine
from lmscope.sae.data import evaluation_windows, prefix_token
from lmscope.sae.interop import check_against_model

LOG_EDGES = torch.linspace(-3, 3, 49)   # histogram bins of log10(activation), in the SAE's normalised units


@dataclass
class Context:
    value: float
    window: int
    position: int
    tokens: list[str]              # the window's tokens around the position
    acts: list[float]              # the latent's activation on each of those tokens
    centre: int                    # index of the top token inside `tokens`


@dataclass
class Feature:
    index: int
    density: float                 # fraction of tokens where it fires
    mean_active: float             # mean activation when firing (latents live in the SAE's normalised units)
    max: float
    histogram: dict                # {"log10_edges": [...], "counts": [...]}
    contexts: list[Context]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]



@dataclass
class FeatureStats:
    model: object
    sae: object
    texts: str
    held_out: bool
    windows: list                  # token ids per window (the prefix token first)
    n_tokens: int
    count: torch.Tensor            # [d_sae] tokens fired on
    total: torch.Tensor            # [d_sae] float64 sum of activations
    top_values: torch.Tensor       # [d_sae, k]
    top_where: torch.Tensor        # [d_sae, k] flat token index: window * seq_len_max + position
    hist: torch.Tensor             # [d_sae, bins]
    width: int                     # positions per window row in top_where
    cache: dict = field(default_factory=dict)

    @property
    def density(self) -> torch.Tensor:
        return self.count.double() / self.n_tokens

    def live(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.count > 0).flatten()]

    def pick_random_live(self, n: int, seed: int = 0) -> list[int]:
        live = self.live()
        if not live:
            raise InputError("no latent fired on these tokens")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(live), generator=g)[:n].tolist()
        return sorted(live[i] for i in order)

    def feature(self, index: int, *, context: int = 12, n_tokens_logit: int = 10) -> Feature:
        return self.features([index], context=context, n_tokens_logit=n_tokens_logit)[0]

    def features(self, indices: list[int], *, context: int = 12, n_tokens_logit: int = 10) -> list[Feature]:
        """Full records for these latents; the windows of all their top contexts are re-run once, together."""
        for index in indices:
            if not isinstance(index, int) or not 0 <= index < len(self.count):
                raise InputError(f"latent {index!r} out of range 0..{len(self.count) - 1}")
        todo = [i for i in dict.fromkeys(indices) if i not in self.cache]
        rows = sorted({w // self.width for i in todo for w, v in zip(self.top_where[i].tolist(),
                                                                     self.top_values[i].tolist()) if v > 0})
        acts = _latents_over_windows(self.model, self.sae, [self.windows[r] for r in rows], todo) if rows else []
        by_row = dict(zip(rows, acts))
        tok = self.model.tokenizer
        for j, index in enumerate(todo):
            keep = self.top_values[index] > 0
            values = self.top_values[index][keep].tolist()
            contexts = []
            for value, w in zip(values, self.top_where[index][keep].tolist()):
                r, p = divmod(w, self.width)
                ids = self.windows[r]
                lo, hi = max(1, p - context), min(len(ids), p + 4)
                contexts.append(Context(value, r, p, [tok.decode([i]) for i in ids[lo:hi]],
                                        [round(float(a), 4) for a in by_row[r][lo:hi, j]], p - lo))
            promoted, suppressed = logit_effect(self.model, self.sae, index, n_tokens_logit)
            c = int(self.count[index])
            self.cache[index] = Feature(index, float(self.density[index]),
                                        float(self.total[index] / c) if c else 0.0, values[0] if values else 0.0,
                                        {"log10_edges": LOG_EDGES.tolist(), "counts": self.hist[index].tolist()},
                                        contexts, promoted, suppressed)
        return [self.cache[i] for i in indices]


@torch.no_grad()
def logit_effect(model, sae, index: int, n: int = 10) -> tuple[list, list]:
    """Tokens the latent's decoder direction promotes and suppresses: W_U (gain * d), d the unit decoder row."""
    d = sae.feature_directions()[index].double()
    gain, _, _, _ = norm_affine(model.module(model.adapter.final_norm), model.d_model, model.device)
    w_u = resident(model.module(model.adapter.lm_head), "weight").double()      # offloaded: a copy
    effect = w_u @ (gain.to(d.device) * d.to(w_u.device))
    top, bottom = effect.topk(n), (-effect).topk(n)
    tok = model.tokenizer
    return ([(tok.decode([i]), round(float(v), 4)) for v, i in zip(top.values, top.indices.tolist())],
            [(tok.decode([i]), round(-float(v), 4)) for v, i in zip(bottom.values, bottom.indices.tolist())])


@torch.no_grad()
def _latents_over_windows(model, sae, windows, latents, batch: int = 8) -> list[torch.Tensor]:
    """Per window, [len(window), len(latents)]: the latents' activations at every position."""
    out = []
    for i in range(0, len(windows), batch):
        group = windows[i:i + batch]
        ids, _ = model.encode(group)
        x = model.run(ids, read=[sae.cfg.site_in], stop_early=True)[sae.cfg.site_in]
        z = sae.encode(x.reshape(-1, x.shape[-1]))[:, latents].view(*x.shape[:2], len(latents)).cpu()
        out += [z[b, :len(w)] for b, w in enumerate(group)]
    return out


@torch.no_grad()
def feature_stats(model, sae, texts="wiki", *, n_tokens: int = 50_000, seq_len: int = 128, k: int = 16,
                  batch_windows: int = 8, harvest: "str | None" = None, corpus_seed: int = 0,
                  progress: bool = True) -> FeatureStats:
    """Per-latent statistics and top contexts over `n_tokens` held-out tokens (see `evaluate_sae` for `texts`)."""
    cfg = sae.cfg
    check_against_model(cfg, model)
    if cfg.site_in != cfg.site_out:
        raise InputError("feature dashboards are for SAEs; a transcoder's latents read another site "
                         "(use its encoder on site_in yourself)")
    windows, held_out, name = evaluation_windows(model, cfg, texts, harvest, corpus_seed, n_tokens, seq_len)
    width = max(len(w) for w in windows)
    sae = sae.to(model.device)
    d_sae = cfg.d_sae
    top_values = torch.zeros(d_sae, k)
    top_where = torch.zeros(d_sae, k, dtype=torch.long)
    count = torch.zeros(d_sae, dtype=torch.long)
    total = torch.zeros(d_sae, dtype=torch.float64)
    bins = len(LOG_EDGES) + 1
    hist = torch.zeros(d_sae * bins, dtype=torch.long)
    has_prefix = prefix_token(model.tokenizer) is not None
    n_seen = 0
    bar = _bar(len(windows), progress)
    for start in range(0, len(windows), batch_windows):
        group = windows[start:start + batch_windows]
        ids, mask = model.encode(group)
        x = model.run(ids, read=[cfg.site_in], stop_early=True)[cfg.site_in]
        valid = mask.bool().clone()
        if has_prefix:
            valid[:, 0] = False
        if cfg.max_norm:
            valid &= x.norm(dim=-1) <= cfg.max_norm
        rows, pos = torch.nonzero(valid, as_tuple=True)
        z = sae.encode(x[valid]).float().cpu()
        where = (rows.cpu() + start) * width + pos.cpu()
        active = z > 0
        count += active.sum(0)
        total += z.double().sum(0)
        n_seen += len(z)
        lat, tok = torch.nonzero(active.T, as_tuple=True)
        b = torch.bucketize(torch.log10(z[tok, lat].clamp_min(1e-30)), LOG_EDGES)
        hist.index_add_(0, lat * bins + b, torch.ones_like(b))
        merged_v = torch.cat([top_values, z.T], dim=1)
        merged_w = torch.cat([top_where, where[None].expand(d_sae, -1)], dim=1)
        best = merged_v.topk(k, dim=1)
        top_values, top_where = best.values, merged_w.gather(1, best.indices)
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    if n_seen == 0:
        raise InputError("no token to look at")
    return FeatureStats(model, sae, name, held_out, windows, n_seen, count, total, top_values, top_where,
                        hist.view(d_sae, bins), width)


def _bar(total, enabled):
    if not enabled:
        return None
    return tqdm(total=total, unit="window", desc="feature statistics", file=sys.stderr, dynamic_ncols=True)
