"""Observe: one streaming pass over a text set records every neuron of the chosen layers (see records.py)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmscope.core.checks import check_count, check_layers
from lmscope.core.errors import InputError
from lmscope.data.corpora import iter_token_windows
from lmscope.neurons.records import LayerRecord, WindowTable, default_edges


@dataclass
class TopContext:
    value: float
    token: str          # the token the neuron fired on
    left: str           # text before it (inside the window)
    right: str          # text after it
    next_token_id: int  # the token that actually followed in the corpus (-1 if outside the window)
    doc_id: str
    position: int       # token position inside its document
    context_ids: list[int]  # token ids up to and including the firing token

    @property
    def text(self) -> str:
        return self.left + self.token + self.right


@dataclass
class NeuronRecords:
    """The pass's result: per layer fixed-size records, plus what is needed to turn them into text."""
    model: str
    corpus: str
    n_tokens: int
    seed: int
    layers: dict[int, LayerRecord]
    windows: WindowTable
    tokenizer: object
    n_layers: int                   # of the model, so negative layer indices mean what they do elsewhere

    def stats(self, layer: int, index: int) -> dict:
        rec = self._record(layer, index)
        return {"mean": float(rec.mean[index]), "std": float(rec.std[index]),
                "frac_active": float(rec.active[index]) / max(rec.count, 1),
                "frac_negative": float(rec.negative[index]) / max(rec.count, 1),
                "max": float(rec.max[index]), "min": float(rec.min[index]), "count": rec.count}

    def histogram(self, layer: int, index: int) -> tuple[list[float], list[int]]:
        rec = self._record(layer, index)
        return rec.edges.tolist(), rec.hist[index].tolist()

    def top_contexts(self, layer: int, index: int) -> list[TopContext]:
        rec = self._record(layer, index)
        c = rec.context
        out = []
        for slot in range(rec.k):
            value = float(rec.top_values[slot, index])
            if value == -torch.inf:
                break
            ids = rec.top_tokens[slot, index].tolist()
            left = [i for i in ids[:c] if i >= 0]
            right = [i for i in ids[c + 1:] if i >= 0]
            decode = self.tokenizer.decode
            doc_id, _ = self.windows.entries.get(int(rec.top_docs[slot, index]), ("?", 0))
            out.append(TopContext(value, decode([ids[c]]), decode(left), decode(right),
                                  right[0] if right else -1, doc_id, int(rec.top_pos[slot, index]),
                                  left + [ids[c]]))
        return out

    def mean(self, layer: int) -> torch.Tensor:
        """Mean activation of every neuron of the layer over the pass (float64), for mean ablation."""
        return self._record(layer, 0).mean

    def samples(self, layer: int) -> torch.Tensor:
        """A uniform sample of token activation rows [n, d_mlp], for resample ablation."""
        rec = self._record(layer, 0)
        return rec.samples[: min(rec.seen_for_samples, rec.n_samples)]

    def _record(self, layer: int, index: int) -> LayerRecord:
        if isinstance(layer, int) and layer < 0:
            layer += self.n_layers
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not recorded (recorded: {sorted(self.layers)})")
        rec = self.layers[layer]
        if not isinstance(index, int) or not 0 <= index < rec.d_mlp:
            raise InputError(f"neuron {index!r} out of range: layer {layer} has {rec.d_mlp} neurons "
                             f"(0..{rec.d_mlp - 1})")
        return rec


@torch.no_grad()
def record_neurons(model, layers, texts="wiki", *, n_tokens: int = 100_000, window: int = 128, batch_size: int = 8,
                   k: int = 20, context: int = 12, bins: int = 60, n_samples: int = 256, seed: int = 0,
                   progress: bool = True) -> NeuronRecords:
    """Stream `n_tokens` tokens of a corpus (a name, see lmscope.data.corpora) or a list of texts through the model
    and record every neuron of `layers`. Deterministic for a fixed corpus, seed and n_tokens."""
    layers = check_layers(model, layers)
    check_count("n_tokens", n_tokens)
    if isinstance(texts, (list, tuple)) and not texts:
        raise InputError("empty text set: give at least one text")
    stream = iter_token_windows(model.tokenizer, texts, n_tokens=n_tokens, window=window, seed=seed)
    records: dict[int, LayerRecord] = {}
    table = WindowTable()
    generator = torch.Generator().manual_seed(seed)
    sites = [f"neurons.{layer}" for layer in layers]
    bar = _progress(n_tokens, progress)
    seen, window_no, batch = 0, 0, []
    try:
        for item in stream:
            batch.append(item)
            if len(batch) == batch_size:
                seen, window_no = _run_batch(model, batch, sites, layers, records, table, window_no, k, context,
                                             bins, n_samples, generator, seen, bar)
                batch = []
        if batch:
            seen, window_no = _run_batch(model, batch, sites, layers, records, table, window_no, k, context, bins,
                                         n_samples, generator, seen, bar)
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise InputError("the text set gave no tokens")
    table.prune(records)
    name = texts if isinstance(texts, str) else f"{len(texts)} texts"
    return NeuronRecords(model.spec, name, seen, seed, records, table, model.tokenizer, model.n_layers)


def _run_batch(model, batch, sites, layers, records, table, window_no, k, context, bins, n_samples, generator, seen,
               bar):
    ids, mask = model.encode([w.input_ids for w in batch])
    run = model.run(ids, read=sites, stop_early=True)
    valid = mask.bool().cpu()
    ids = ids.cpu()
    b, s = ids.shape
    padded = torch.nn.functional.pad(ids.masked_fill(~valid, -1), (context, context), value=-1)
    windows = padded.unfold(1, 2 * context + 1, 1)[valid].to(torch.int32)          # [n, 2c+1]
    numbers = torch.arange(window_no, window_no + b)
    for i, w in enumerate(batch):
        table.entries[window_no + i] = (w.doc_id, w.start)
    docs = numbers[:, None].expand(b, s)[valid]
    starts = torch.tensor([w.start for w in batch])
    pos = (starts[:, None] + torch.arange(s)[None])[valid]
    for layer, site in zip(layers, sites):
        acts = run.acts[site].cpu()[valid]
        if layer not in records:
            records[layer] = LayerRecord(acts.shape[1], k, context, default_edges(acts, bins), n_samples)
        records[layer].update(acts, windows, docs, pos, generator)
    table.prune(records)
    n = int(valid.sum())
    if bar is not None:
        bar.update(n)
    return seen + n, window_no + b


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, unit="tok", unit_scale=True, desc="recording neurons", file=sys.stderr,
                dynamic_ncols=True)
