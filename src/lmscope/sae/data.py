"""Where training activations come from. Every source yields (x, target) float32 batches for one rank, where target
is None for an SAE (it predicts x) and the second site's activation for a transcoder.

    TensorSource(x, target=None)     tensors in memory (tests, synthetic data); cycles over epochs
    ModelSource(model, site, ...)    straight from the model over a corpus, through a shuffling buffer
    StoreSource(store, site, ...)    a harvest folder (lmscope.harvest.open_store)

Data parallelism: with `world_size` ranks each yields its share of every global batch (TensorSource: the rank's
slice of the same global batch, so 2 ranks see exactly what 1 rank sees), or a disjoint part of the stream.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256
from lmscope.data.corpora import MIN_WINDOW, iter_documents
from lmscope.harvest import open_store, resolve_prefix, unused_documents


def shuffled(chunks: Iterator[torch.Tensor], batch_size: int, buffer: int, generator: torch.Generator
             ) -> Iterator[torch.Tensor]:
    """Rows of the chunks in batches, shuffled through a buffer of about `buffer` rows (bounded memory): when the
    buffer is full half of it, picked at random, leaves as batches. The last partial batch is dropped."""
    buffer = max(buffer, 2 * batch_size)
    held = []
    n_held = 0
    for chunk in chunks:
        held.append(chunk)
        n_held += len(chunk)
        if n_held < buffer:
            continue
        rows = torch.cat(held)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_out = (len(rows) // 2) // batch_size * batch_size
        yield from rows[:n_out].split(batch_size)
        held, n_held = [rows[n_out:]], len(rows) - n_out
    if n_held:
        rows = torch.cat(held)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        for batch in rows.split(batch_size):
            if len(batch) == batch_size:
                yield batch


class Source:
    d_in: int
    d_out: int
    site_in: str
    site_out: str
    model_spec: str = ""
    model_config_hash: str = ""
    skip_first: bool = True

    def batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0
                ) -> Iterator[tuple[torch.Tensor, "torch.Tensor | None"]]:
        raise NotImplementedError


class TensorSource(Source):
    def __init__(self, x: torch.Tensor, target: "torch.Tensor | None" = None, site_in: str = "x",
                 site_out: str = ""):
        if x.dim() != 2 or len(x) == 0:
            raise InputError(f"activations must be a non-empty [n, d] tensor, got {tuple(x.shape)}")
        if target is not None and (target.dim() != 2 or len(target) != len(x)):
            raise InputError("target must be [n, d_out] with as many rows as the inputs")
        self.x, self.target = x.float(), None if target is None else target.float()
        self.d_in, self.d_out = x.shape[1], (x if target is None else target).shape[1]
        self.site_in, self.site_out = site_in, site_out or site_in

    def batches(self, batch_size, *, rank=0, world_size=1, seed=0):
        if batch_size % world_size:
            raise InputError(f"batch size {batch_size} does not split over {world_size} ranks")
        if batch_size > len(self.x):
            raise InputError(f"batch size {batch_size} is larger than the {len(self.x)} activations")
        generator = torch.Generator().manual_seed(seed)
        share = batch_size // world_size
        while True:
            order = torch.randperm(len(self.x), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[start + rank * share: start + (rank + 1) * share]
                yield self.x[idx], None if self.target is None else self.target[idx]


class ModelSource(Source):
    """Activations computed on the fly: corpus windows -> model (stopping after the last site needed) -> rows.
    Every window is led by the prefix token the harvest uses; that position (an attention sink whose residual norm
    is ~100x the others') is left out when skip_first."""

    def __init__(self, model, site: str, corpus: str = "wiki", *, site_out: str = "", corpus_seed: int = 0,
                 seq_len: int = 128, windows_per_pass: int = 8, buffer: int = 2 ** 16, skip_first: bool = True):
        self.model, self.corpus, self.corpus_seed = model, corpus, corpus_seed
        self.site_in = str(model.site(site))
        self.site_out = str(model.site(site_out)) if site_out else self.site_in
        for s in {self.site_in, self.site_out}:
            shape = model.site_shape(s)
            if shape is None or len(shape) != 1:
                raise InputError(f"site {s} is not a vector per token; an SAE reads sites like resid_post.L, "
                                 f"mlp_out.L, neurons.L")
        self.d_in, self.d_out = model.site_shape(self.site_in)[0], model.site_shape(self.site_out)[0]
        self.seq_len, self.windows_per_pass, self.buffer, self.skip_first = seq_len, windows_per_pass, buffer, \
            skip_first
        self.model_spec, self.model_config_hash = model.spec, config_sha256(model)
        self._has_prefix = prefix_token(model.tokenizer) is not None   # tokenizes: once, not per forward

    def rows(self, *, rank=0, world_size=1, n_tokens: int = 10 ** 12) -> Iterator[torch.Tensor]:
        """[n, d_in (+ d_out)] per forward pass, the rank's share of the stream's passes."""
        texts = (doc.text for doc in iter_documents(self.corpus, seed=self.corpus_seed))
        windows = iter_prefixed_windows(self.model.tokenizer, texts, n_tokens=n_tokens, seq_len=self.seq_len)
        sites = list(dict.fromkeys([self.site_in, self.site_out]))
        group, index = [], 0
        for ids in windows:
            group.append(ids)
            if len(group) < self.windows_per_pass:
                continue
            if index % world_size == rank:
                yield self._run(group, sites)
            group, index = [], index + 1
        if group and index % world_size == rank:
            yield self._run(group, sites)

    @torch.no_grad()
    def _run(self, group, sites):
        ids, mask = self.model.encode(group)
        run = self.model.run(ids, read=sites, stop_early=True)
        keep = mask.bool()
        if self.skip_first and self._has_prefix:
            keep[:, 0] = False
        parts = [run.acts[s][keep].float().cpu() for s in sites]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def batches(self, batch_size, *, rank=0, world_size=1, seed=0):
        if batch_size % world_size:
            raise InputError(f"batch size {batch_size} does not split over {world_size} ranks")
        share = batch_size // world_size
        generator = torch.Generator().manual_seed(seed + rank)
        for rows in shuffled(self.rows(rank=rank, world_size=world_size), share, self.buffer, generator):
            yield _split(rows, self.d_in, self.site_in != self.site_out)


def _split(rows, d_in, two_sites):
    return (rows[:, :d_in], rows[:, d_in:]) if two_sites else (rows, None)


class StoreSource(Source):
    """A harvest folder. One site: the store's own shuffled reader. Two sites (transcoder): raw shards through
    this module's buffer, so input and target rows stay paired."""

    def __init__(self, store, site: str, site_out: str = "", *, buffer: int = 2 ** 18, epochs: int = 1,
                 verify: bool = False):
        self.store, self.buffer, self.epochs, self.verify = store, buffer, epochs, verify
        self.site_in, self.site_out = site, site_out or site
        for s in {self.site_in, self.site_out}:
            if s not in store.sites:
                raise InputError(f"the harvest folder holds sites {', '.join(store.sites)}, not {s}")
        self.d_in, self.d_out = store.d_in(self.site_in), store.d_in(self.site_out)
        manifest = store.manifest
        self.model_spec = store.model_spec
        self.model_config_hash = manifest.get("model_config_hash", "")
        self.skip_first = bool(manifest.get("corpus", {}).get("skip_special", True))

    def batches(self, batch_size, *, rank=0, world_size=1, seed=0):
        if batch_size % world_size:
            raise InputError(f"batch size {batch_size} does not split over {world_size} ranks")
        share = batch_size // world_size
        if self.site_out == self.site_in:
            for x in self.store.iter_batches(self.site_in, share, shuffle_buffer=self.buffer, seed=seed, rank=rank,
                                             world_size=world_size, epochs=self.epochs, verify=self.verify,
                                             drop_last=True):
                yield x, None
            return
        generator = torch.Generator().manual_seed(seed + rank)

        def chunks():
            for _ in range(self.epochs):
                keys = [f"acts.{self.site_in}", f"acts.{self.site_out}"]
                for shard in self.store.iter_shards(verify=self.verify, keys=keys, rank=rank, world_size=world_size):
                    yield torch.cat([shard[k].float() for k in keys], dim=1)
        for rows in shuffled(chunks(), share, self.buffer, generator):
            yield _split(rows, self.d_in, True)


# -- held-out text for evaluation and dashboards -------------------------------------------------------------------

def prefix_token(tokenizer) -> "int | None":
    """The token put before every window, as the harvest does (its first position is an attention sink with a
    ~100x norm; it is never read, spliced or scored)."""
    return resolve_prefix(tokenizer, "auto")


def heldout_texts(corpus: str, harvest: str = "", seed: int = 0) -> tuple[Iterator[str], bool]:
    """(texts, held_out): documents of `corpus`; with a finished harvest folder, only those it never read."""
    if harvest:
        manifest = open_store(harvest).manifest
        return unused_documents(manifest, corpus), True
    return (doc.text for doc in iter_documents(corpus, seed=seed)), False


def iter_prefixed_windows(tokenizer, texts, *, n_tokens: int, seq_len: int = 128) -> Iterator[list[int]]:
    """Windows of at most seq_len consecutive tokens of each text (tails under 8 tokens dropped), each led by the
    prefix token, until n_tokens text tokens are given."""
    if n_tokens < 1:
        raise InputError(f"n_tokens must be >= 1, got {n_tokens}")
    head = [] if (p := prefix_token(tokenizer)) is None else [p]
    total = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), seq_len):
            piece = ids[start:start + seq_len]
            if len(piece) < MIN_WINDOW:
                break
            piece = piece[:n_tokens - total]    # only the very last window may end up shorter: exact totals
            yield head + piece
            total += len(piece)
            if total >= n_tokens:
                return


def token_windows(tokenizer, texts, *, n_tokens: int, seq_len: int = 128) -> list[list[int]]:
    out = list(iter_prefixed_windows(tokenizer, texts, n_tokens=n_tokens, seq_len=seq_len))
    if not out:
        raise InputError("the texts gave no token window")
    return out


def evaluation_windows(model, cfg, texts, harvest, corpus_seed: int, n_tokens: int, seq_len: int):
    """Token windows for evaluation and dashboards: `texts` is a corpus name (its documents the SAE's harvest never
    read, when `harvest` or the SAE's own harvest folder exists) or a list of texts. -> (windows, held_out, name)"""
    if isinstance(texts, str):
        harvest = cfg.harvest if harvest is None else harvest
        stream, held_out = heldout_texts(texts, harvest if harvest and Path(harvest).is_dir() else "", corpus_seed)
        name = texts
    else:
        stream, held_out, name = list(texts), False, f"{len(texts)} texts"
    return token_windows(model.tokenizer, stream, n_tokens=n_tokens, seq_len=seq_len), held_out, name
