"""`harvest`: run a model over a corpus and write chosen sites' activations to disk, shard by shard.

Memory holds one shard (its windows, then its activations in the stored dtype) at a time. A shard is complete
when its file has been renamed into place and recorded (in manifest.json with one process; in
progress_r<rank>.json under torchrun, merged into the manifest by rank 0 at the end). Rerunning the same
command recomputes exactly the shards that are missing: shard boundaries depend only on the token stream, and
each shard is computed in the same batches, so the files come out byte for byte the same.
"""
from __future__ import annotations

import html
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from lmscope.data.corpora import iter_documents
from lmscope.core.errors import InputError
from lmscope.results.base import Result
from lmscope.results.files import atomic_path, write_atomic
from lmscope.results.output import check_output
from lmscope.harvest import distributed as dist
from lmscope.core.fingerprint import config_sha256, same_config
from lmscope.harvest.store import DTYPES, FORMAT, MANIFEST, check_shard_entries, file_sha256, read_manifest
from lmscope.harvest.windows import ShardPlan, documents_used, iter_windows, parse_corpora, plan_shards, resolve_prefix

# A resumed run must compute exactly what the interrupted one would have; these fields decide that.
_RUN_KEYS = ("format", "model_config_hash", "model_dtype", "d_model", "sites", "dtype", "corpus", "tokens_target",
             "shard_tokens", "batch_size", "world_size")


@dataclass
class HarvestResult(Result, kind="harvest"):
    out: str
    model: str
    sites: list[str]
    dtype: str
    tokens_target: int
    n_tokens: int                 # tokens in the folder now (all ranks)
    n_shards: int
    complete: bool
    exhausted: bool               # the corpus ran out before tokens_target
    tokens_computed: int          # by this process in this call (resumed shards are not recomputed)
    shards_computed: int
    shards_skipped: int           # found complete on disk and left as they were
    wall_s: float
    tokens_per_s: float           # tokens_computed / wall_s (tokenizing, forward, writing: the whole call)
    peak_buffer_bytes: int        # the largest shard buffer held (activations + indices)
    max_abs: dict[str, float]     # largest |activation| written, per site (this call)
    rank: int = 0
    world_size: int = 1
    shard_sizes: list[int] = field(default_factory=list)

    def summary(self) -> str:
        state = "complete" if self.complete else "incomplete (rerun the same command to continue)"
        lines = [f"harvest {self.out}: {self.model}, {', '.join(self.sites)} as {self.dtype}; {state}",
                 f"  {self.n_tokens:,} of {self.tokens_target:,} tokens in {self.n_shards} shards",
                 f"  this call: {self.tokens_computed:,} tokens in {self.shards_computed} shards, "
                 f"{self.shards_skipped} shards already on disk; {self.wall_s:.1f} s, {self.tokens_per_s:,.0f} "
                 f"tokens/s" + (f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""),
                 f"  largest buffer {self.peak_buffer_bytes / 2**20:.1f} MiB; max |act| "
                 + ", ".join(f"{s} {v:.1f}" for s, v in self.max_abs.items())]
        if self.exhausted:
            lines.append(f"  the corpus ran out: {self.n_tokens:,} tokens is all it has at this window size")
        return "\n".join(lines)

    def figure(self):
        fig = go.Figure(go.Bar(x=list(range(len(self.shard_sizes))), y=self.shard_sizes))
        fig.update_layout(title=f"{self.out}: tokens per shard ({self.n_tokens:,} tokens)",
                          xaxis_title="shard", yaxis_title="tokens")
        return fig

    def title(self) -> str:
        return f"harvest {self.out}"

    def page_body(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"


def harvest(model, corpus, sites, n_tokens: int, out, *, seq_len: int = 128, batch_size: int = 16,
            dtype: str = "float16", shard_tokens: int = 65536, seed: int = 0, skip_special: bool = True,
            prefix="auto", progress: bool = True) -> HarvestResult:
    """Write `sites`' activations over `n_tokens` tokens of `corpus` (a name, or names separated by commas) into
    folder `out`. Each window is `seq_len` corpus tokens after a prefix token (see windows.resolve_prefix);
    special tokens (the prefix included) are not written unless skip_special=False. Under torchrun each rank
    computes shards rank, rank + world_size, ... If `out` holds an unfinished run of the same command, it is
    continued; if it holds another run, InputError and nothing is touched."""
    start = time.perf_counter()
    names = parse_corpora(corpus)
    for name in names:
        iter_documents(name)  # unknown or uninstalled corpus: the error comes now, before the folder is touched
    site_names, shapes = _resolve_sites(model, sites)
    for what, value, low in (("n_tokens", n_tokens, 1), ("seq_len", seq_len, 8), ("batch_size", batch_size, 1),
                             ("shard_tokens", shard_tokens, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{what} must be an integer >= {low}, got {value!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if model.tokenizer is None:
        raise InputError(f"{model.spec} has no tokenizer: a harvest reads text")
    prefix_id = resolve_prefix(model.tokenizer, prefix)
    skip = frozenset(model.tokenizer.all_special_ids) if skip_special else frozenset()
    rank, world = dist.ensure_group(model.device)

    config = {"format": FORMAT, "model": model.spec, "model_config_hash": _config_hash(model, Path(out)),
              "model_dtype": str(model.dtype).removeprefix("torch."), "d_model": model.d_model,
              "sites": {s: list(shapes[s]) for s in site_names}, "dtype": dtype,
              "corpus": {"name": ",".join(names), "seed": seed, "seq_len": seq_len, "skip_special": skip_special,
                         "prefix_token": prefix_id},
              "tokens_target": n_tokens, "shard_tokens": shard_tokens, "batch_size": batch_size, "world_size": world}
    out = Path(out)
    manifest = dist.on_rank0(_prepare_folder, out, config)
    done = {e["index"]: e for e in manifest["shards"]}
    if world > 1:
        done.update({e["index"]: e for e in _read_progress(out, rank)})
    if manifest.get("complete"):
        return _result(out, manifest, rank, world, start, 0, 0, len(done), 0, {})

    writer = _ShardWriter(model, site_names, shapes, DTYPES[dtype], batch_size)
    bar = _progress_bar(progress and rank == 0, n_tokens // world)
    computed = skipped = tokens_computed = 0
    planned_tokens, last_doc = 0, -1
    mine: list[dict] = [e for e in done.values() if e["rank"] == rank]
    try:
        windows = iter_windows(model.tokenizer, names, seq_len=seq_len, seed=seed, prefix=prefix_id, skip_ids=skip)
        for plan in plan_shards(windows, tokens_target=n_tokens, shard_tokens=shard_tokens):
            planned_tokens += plan.n_tokens
            last_doc = plan.windows[-1].doc
            if plan.index % world != rank:
                continue
            if plan.index in done and (out / done[plan.index]["file"]).is_file():
                skipped += 1
                bar.update(plan.n_tokens)
                continue
            entry = writer.write(plan, out / f"shard_r{rank}_{plan.index:06d}.safetensors", rank, bar)
            done[plan.index] = entry
            mine = [e for e in mine if e["index"] != plan.index] + [entry]
            computed += 1
            tokens_computed += entry["n_tokens"]
            if world == 1:
                _write_manifest(out, config, list(done.values()), complete=False)
            else:
                write_atomic(out / f"progress_r{rank}.json", json.dumps(sorted(mine, key=lambda e: e["index"])))
    finally:
        bar.close()
    everything = [e for entries in dist.all_gather(mine) for e in entries]
    if rank == 0:
        _write_manifest(out, config, everything, complete=True, exhausted=planned_tokens < n_tokens,
                        documents=documents_used(names, seed, last_doc))
    dist.barrier()
    final = read_manifest(out)
    return _result(out, final, rank, world, start, tokens_computed, computed, skipped, writer.peak_buffer_bytes,
                   writer.max_abs)


class _ShardWriter:
    """Runs a shard's windows through the model in batches and writes one safetensors file."""

    def __init__(self, model, sites, shapes, dtype, batch_size):
        self.model, self.sites, self.shapes, self.dtype, self.batch_size = model, sites, shapes, dtype, batch_size
        self.peak_buffer_bytes = 0
        self.max_abs = {s: 0.0 for s in sites}
        self._limit = torch.finfo(dtype).max

    def write(self, plan: ShardPlan, path: Path, rank: int, bar) -> dict:
        n = plan.n_tokens
        acts = {s: torch.empty((n, *self.shapes[s]), dtype=self.dtype) for s in self.sites}
        index = {k: torch.empty(n, dtype=torch.int64) for k in ("token_ids", "doc_ids", "positions", "window_ids")}
        self.peak_buffer_bytes = max(self.peak_buffer_bytes,
                                     sum(t.nbytes for t in (*acts.values(), *index.values())))
        filled = 0
        for first in range(0, len(plan.windows), self.batch_size):
            batch = plan.windows[first:first + self.batch_size]
            run = self.model.run([list(w.ids) for w in batch], read=self.sites, stop_early=True)
            keep = torch.zeros(run.input_ids.shape, dtype=torch.bool)
            for row, w in enumerate(batch):
                keep[row, :len(w.keep)] = torch.tensor(w.keep)
            k = int(keep.sum())
            rows = slice(filled, filled + k)
            for s in self.sites:
                values = run.acts[s][keep.to(run.acts[s].device)].detach().float().cpu()
                biggest = float(values.abs().max()) if k else 0.0
                if not biggest <= self._limit:  # also catches NaN
                    raise InputError(f"activations at {s} reach {biggest:g}, beyond {self.dtype}'s range: harvest "
                                     f"into a new folder with --dtype bfloat16 or float32")
                self.max_abs[s] = max(self.max_abs[s], biggest)
                acts[s][rows] = values.to(self.dtype)
            width = keep.shape[1]
            index["token_ids"][rows] = run.input_ids.cpu()[keep]
            index["positions"][rows] = torch.arange(width).expand_as(keep)[keep]
            index["doc_ids"][rows] = torch.tensor([w.doc for w in batch])[:, None].expand_as(keep)[keep]
            index["window_ids"][rows] = torch.tensor([w.index for w in batch])[:, None].expand_as(keep)[keep]
            filled += k
            bar.update(k)
        tensors = {f"acts.{s}": acts[s] for s in self.sites} | index
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
            digest = file_sha256(tmp)
        return {"file": path.name, "rank": rank, "index": plan.index, "n_tokens": n, "sha256": digest,
                "first_window": plan.first_window}


def _resolve_sites(model, sites) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    if isinstance(sites, str):
        sites = [s for s in sites.replace(",", " ").split() if s]
    if not sites:
        raise InputError("no site given; e.g. resid_post.12")
    names = [str(s) for s in model.sites(list(sites))]  # SiteError for an unknown name or layer
    shapes = {}
    for name in names:
        shape = model.site_shape(name)
        if shape is None:
            raise InputError(f"site '{name}' has a shape that changes with the sequence; it cannot be harvested")
        shapes[name] = tuple(shape)
    return names, shapes


def _config_hash(model, out: Path) -> str:
    """The model's config hash (lmscope.core.fingerprint); a folder written by an older lmscope, whose manifest holds
    the hash as it was computed then, keeps its own so that rerunning its command still continues it."""
    try:
        old = read_manifest(out)["model_config_hash"] if (out / MANIFEST).is_file() else None
    except InputError:
        old = None
    return old if old and same_config(old, model) else config_sha256(model)


def check_harvest_folder(out) -> Path:
    """The output rule for `harvest --out`, checked before the model loads: a new or empty folder in an existing
    parent, or a harvest folder to continue (the one documented exception: resuming writes into its own folder)."""
    out = Path(out)
    if (out / MANIFEST).is_file():
        read_manifest(out)
        return out
    check_output(out, folder=True, what="--out")
    return out


def _prepare_folder(out: Path, config: dict) -> dict:
    """The folder's manifest: a new one for a new folder, the existing one when continuing the same run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for --out")
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        changed = [k for k in _RUN_KEYS if manifest.get(k) != config[k]]
        if changed:
            details = "; ".join(f"{k}: {manifest.get(k)!r} there, {config[k]!r} now" for k in changed)
            raise InputError(f"{out} already holds another harvest ({details}); nothing was changed. Give another "
                             f"--out, or rerun the command that made it to continue it")
        for pattern in (".shard_r*.tmp", ".manifest.json.*.tmp", ".progress_r*.tmp"):
            for stale in out.glob(pattern):  # temporary files of a process killed while writing
                stale.unlink()
        return manifest
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no harvest manifest; nothing was changed. Give a new or "
                         f"empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return _write_manifest(out, config, [], complete=False)


def _write_manifest(out: Path, config: dict, shards: list[dict], *, complete: bool, exhausted: bool = False,
                    documents: "dict[str, int] | None" = None) -> dict:
    shards = sorted(shards, key=lambda e: e["index"])
    manifest = dict(config, n_tokens=sum(e["n_tokens"] for e in shards), complete=complete, exhausted=exhausted)
    if documents is not None:  # per corpus, how many documents (in seed order) were read; the rest is held out
        manifest["documents"] = documents
    manifest["shards"] = shards
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _read_progress(out: Path, rank: int) -> list[dict]:
    """A rank's shards of an interrupted multi-process run; its entries checked as a manifest's are (inside the
    folder, with sha256 and token count)."""
    path = out / f"progress_r{rank}.json"
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); remove it to recompute that rank's shards") from None
    check_shard_entries(out, entries, path)
    return entries


def _progress_bar(enabled: bool, total: int):
    tty = sys.stderr.isatty()
    return tqdm(total=total, unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                mininterval=0.5 if tty else 30, desc="harvest")


def _result(out, manifest, rank, world, start, tokens, computed, skipped, peak, max_abs) -> HarvestResult:
    wall = time.perf_counter() - start
    shards = manifest["shards"]
    return HarvestResult(out=str(out), model=manifest["model"], sites=list(manifest["sites"]),
                         dtype=manifest["dtype"], tokens_target=manifest["tokens_target"],
                         n_tokens=manifest["n_tokens"], n_shards=len(shards), complete=bool(manifest["complete"]),
                         exhausted=bool(manifest.get("exhausted")), tokens_computed=tokens,
                         shards_computed=computed, shards_skipped=skipped, wall_s=wall,
                         tokens_per_s=tokens / wall if wall > 0 else 0.0, peak_buffer_bytes=peak,
                         max_abs=max_abs, rank=rank, world_size=world,
                         shard_sizes=[e["n_tokens"] for e in shards])
