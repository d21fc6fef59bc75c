"""Activation records: when does each neuron fire? One streaming pass over a text set, bounded memory.

For every neuron of the chosen layers: count, mean and std (accumulated in float64), fraction active, min and max,
a histogram on fixed bin edges, a reservoir sample of values (for resample ablation), and the top-k activating
contexts (token, document, position, a window of tokens around it, value). All state has a fixed size set by
(layers, d_mlp, k, bins, samples, context): it does not grow with the number of tokens.

"Active" means value > 0, for every family. For ReLU/GELU MLPs that is the usual "fires". For gated MLPs (SwiGLU
in Llama/Qwen/Gemma/Phi) there is no hard zero: the neuron writes value * W_out[:, n], so a positive value writes
along +W_out and a negative one along -W_out. We call it active when it writes along +W_out, the same direction
the top contexts rank, and report the negative side separately (`frac_negative`, `min`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch



@dataclass
class LayerRecord:
    """Fixed-size running statistics of one layer's neurons."""
    d_mlp: int
    k: int
    context: int            # tokens kept on each side of a top-context token
    edges: torch.Tensor     # [bins + 1] shared histogram edges (set from the first batch)
    n_samples: int
    count: int = 0
    total: torch.Tensor = None       # [d_mlp] float64 sum
    total_sq: torch.Tensor = None    # [d_mlp] float64 sum of squares
    active: torch.Tensor = None      # [d_mlp] int64, value > 0
    negative: torch.Tensor = None    # [d_mlp] int64, value < 0
    max: torch.Tensor = None
    min: torch.Tensor = None
    hist: torch.Tensor = None        # [d_mlp, bins] int64; values outside the edges go to the end bins
    top_values: torch.Tensor = None  # [k, d_mlp] descending
    top_tokens: torch.Tensor = None  # [k, d_mlp, 2 * context + 1] token ids, -1 = outside the window
    top_docs: torch.Tensor = None    # [k, d_mlp] index into the pass's window table
    top_pos: torch.Tensor = None     # [k, d_mlp] token position inside its document
    samples: torch.Tensor = None     # [n_samples, d_mlp] reservoir sample of values
    seen_for_samples: int = 0

    def __post_init__(self):
        d, k = self.d_mlp, self.k
        self.total = torch.zeros(d, dtype=torch.float64)
        self.total_sq = torch.zeros(d, dtype=torch.float64)
        self.active = torch.zeros(d, dtype=torch.int64)
        self.negative = torch.zeros(d, dtype=torch.int64)
        self.max = torch.full((d,), -torch.inf)
        self.min = torch.full((d,), torch.inf)
        self.hist = torch.zeros(d, len(self.edges) - 1, dtype=torch.int64)
        self.top_values = torch.full((k, d), -torch.inf)
        self.top_tokens = torch.full((k, d, 2 * self.context + 1), -1, dtype=torch.int32)
        self.top_docs = torch.full((k, d), -1, dtype=torch.int64)
        self.top_pos = torch.full((k, d), -1, dtype=torch.int64)
        self.samples = torch.zeros(self.n_samples, d)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    def update(self, acts: torch.Tensor, windows: torch.Tensor, docs: torch.Tensor, pos: torch.Tensor,
               generator: torch.Generator) -> None:
        """acts [n, d_mlp] (valid tokens only), windows [n, 2c+1] token ids, docs [n], pos [n]."""
        acts = acts.float()
        n = acts.shape[0]
        self.count += n
        a64 = acts.double()
        self.total += a64.sum(0)
        self.total_sq += (a64 * a64).sum(0)
        self.active += (acts > 0).sum(0)
        self.negative += (acts < 0).sum(0)
        self.max = torch.maximum(self.max, acts.max(0).values)
        self.min = torch.minimum(self.min, acts.min(0).values)
        bins = len(self.edges) - 1
        idx = (torch.bucketize(acts, self.edges) - 1).clamp_(0, bins - 1)
        flat = idx + torch.arange(self.d_mlp) * bins
        self.hist += torch.bincount(flat.reshape(-1), minlength=self.d_mlp * bins).view(self.d_mlp, bins)
        self._update_top(acts, windows, docs, pos)
        self._update_samples(acts, generator)

    def _update_top(self, acts, windows, docs, pos):
        k = min(self.k, acts.shape[0])
        values, rows = acts.topk(k, dim=0)                                   # [k, d]
        cand_values = torch.cat([self.top_values, values])                  # [K + k, d]
        cand_tokens = torch.cat([self.top_tokens, windows[rows]])            # [K + k, d, w]
        cand_docs = torch.cat([self.top_docs, docs[rows]])
        cand_pos = torch.cat([self.top_pos, pos[rows]])
        # stable: on ties the earlier token wins, so the result does not depend on batch boundaries' order
        order = torch.sort(cand_values, dim=0, descending=True, stable=True).indices[: self.k]
        self.top_values = cand_values.gather(0, order)
        self.top_tokens = cand_tokens.gather(0, order[..., None].expand(-1, -1, cand_tokens.shape[-1]))
        self.top_docs = cand_docs.gather(0, order)
        self.top_pos = cand_pos.gather(0, order)

    def _update_samples(self, acts, generator):
        """Reservoir sampling of whole token rows: a uniform sample of the tokens seen so far."""
        n, seen = acts.shape[0], self.seen_for_samples
        fill = max(0, min(self.n_samples - seen, n))
        self.samples[seen: seen + fill] = acts[:fill]
        if fill < n:
            rest = torch.arange(seen + fill + 1, seen + n + 1, dtype=torch.float64)
            slots = (torch.rand(len(rest), generator=generator, dtype=torch.float64) * rest).long()
            for i in torch.nonzero(slots < self.n_samples).flatten().tolist():  # in order: later rows win
                self.samples[slots[i]] = acts[fill + i]
        self.seen_for_samples = seen + n

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def std(self) -> torch.Tensor:
        mean = self.mean
        var = self.total_sq / max(self.count, 1) - mean * mean
        return var.clamp_min(0).sqrt()


def default_edges(first_batch: torch.Tensor, bins: int) -> torch.Tensor:
    """Histogram edges shared by all neurons of a layer, from the first batch's range (widened 50% each side)."""
    lo, hi = float(first_batch.min()), float(first_batch.max())
    span = max(hi - lo, 1e-6)
    return torch.linspace(lo - 0.5 * span, hi + 0.5 * span, bins + 1)


@dataclass
class WindowTable:
    """(doc_id, start) of the windows that top contexts still point to; pruned so it stays small."""
    entries: dict[int, tuple[str, int]] = field(default_factory=dict)

    def prune(self, records: dict[int, LayerRecord]) -> None:
        live = set()
        for rec in records.values():
            live.update(rec.top_docs.unique().tolist())
        self.entries = {w: v for w, v in self.entries.items() if w in live}
