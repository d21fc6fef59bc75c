"""Reading a harvest folder (format "lmscope-harvest/1", see docs in `lmscope.harvest`).

    store = open_store("runs/harvest_l12")
    for x in store.iter_batches("resid_post.12", 4096):   # [4096, 576] float32, shuffled through a buffer
        ...

Shards are read one at a time and one site at a time (safetensors' lazy reader), so memory is bounded by the
shuffle buffer, whatever the folder's size.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open

from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256, same_config
from lmscope.results.base import Result

FORMAT = "lmscope-harvest/1"
MANIFEST = "manifest.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def file_sha256(path: "str | Path") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} is not a harvest folder: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} manifest (format: {manifest.get('format')!r})"
                         if isinstance(manifest, dict) else f"{path} is not a {FORMAT} manifest")
    missing = [k for k in ("model", "model_config_hash", "sites", "dtype", "n_tokens", "shards") if k not in manifest]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}")
    if manifest["dtype"] not in DTYPES:
        raise InputError(f"{path}: unknown dtype {manifest['dtype']!r}")
    check_shard_entries(folder, manifest["shards"])
    return manifest


def check_shard_entries(folder: Path, shards, source: "Path | None" = None) -> None:
    """Every shard entry names a file inside `folder` (a plain relative name: no '..', no absolute path, no link
    leading out) and carries its sha256 and token count; one InputError for the first that does not. `source`: the
    file the entries came from (default the manifest), for the message."""
    path = source or folder / MANIFEST
    if not isinstance(shards, list):
        raise InputError(f"{path}: 'shards' must be a list")
    root = folder.resolve()
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise InputError(f"{path}: shard entry {i} is not an object")
        name = entry.get("file")
        if not isinstance(name, str) or not name:
            raise InputError(f"{path}: shard entry {i} has no file name")
        if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in PurePosixPath(name).parts \
                or "\\" in name:
            raise InputError(f"{path}: shard entry {i} names {name!r}, outside the harvest folder; refused")
        if not (folder / name).resolve().is_relative_to(root):
            raise InputError(f"{path}: shard entry {i} ({name!r}) leads outside the harvest folder; refused")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InputError(f"{path}: shard entry {i} ({name}) has no valid sha256")
        n = entry.get("n_tokens")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(f"{path}: shard entry {i} ({name}) has no valid n_tokens")


class HarvestStore:
    """A harvest folder opened for reading. Build with `open_store(folder)`."""

    def __init__(self, folder: "str | Path"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"harvest folder {self.folder} does not exist")
        self.manifest: dict = read_manifest(self.folder)
        missing = [s["file"] for s in self.manifest["shards"] if not (self.folder / s["file"]).is_file()]
        if missing:
            raise InputError(f"{self.folder}: {len(missing)} shard file(s) listed in the manifest are missing, "
                             f"e.g. {missing[0]}")

    # -- what the folder holds ----------------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    def d_in(self, site: str) -> int:
        shape = self.manifest["sites"].get(self._site_name(site))
        return math.prod(shape)

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def model_spec(self) -> str:
        return self.manifest["model"]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def shards(self) -> list[dict]:
        return list(self.manifest["shards"])

    def __repr__(self) -> str:
        return (f"HarvestStore({str(self.folder)!r}: {self.model_spec}, {', '.join(self.sites)}, {self.n_tokens} "
                f"tokens in {len(self.shards)} shards, {self.manifest['dtype']}"
                f"{'' if self.complete else ', incomplete'})")

    def check_model(self, model, site=None) -> None:
        """InputError if this folder was not harvested from `model` (config hash, lmscope.core.fingerprint; folders
        written before the hash moved there still match) or does not hold `site`."""
        if not same_config(self.manifest["model_config_hash"], model):
            raise InputError(f"{self.folder} was harvested from another model ({self.model_spec}, config hash "
                             f"{str(self.manifest['model_config_hash'])[:12]}), not from {model.spec} "
                             f"(config hash {config_sha256(model)[:12]})")
        if int(self.manifest.get("d_model", model.d_model)) != model.d_model:
            raise InputError(f"{self.folder} holds d_model {self.manifest['d_model']}, the model has {model.d_model}")
        if site is not None:
            name = str(model.site(site))
            if name not in self.manifest["sites"]:
                raise InputError(f"{self.folder} holds {', '.join(self.sites)}, not site '{name}'")

    def _site_name(self, site) -> str:
        name = str(site)
        if name not in self.manifest["sites"]:
            raise InputError(f"{self.folder} holds {', '.join(self.sites)}, not site '{name}'")
        return name

    # -- reading --------------------------------------------------------------------------------------------------
    def _path(self, entry: dict, verify: bool) -> Path:
        path = self.folder / entry["file"]
        if verify and file_sha256(path) != entry["sha256"]:
            raise InputError(f"shard {path} is corrupt: its sha256 differs from the manifest's")
        return path

    def _read(self, entry: dict, keys: "list[str] | None", verify: bool) -> dict[str, torch.Tensor]:
        path = self._path(entry, verify)
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in (keys if keys is not None else f.keys())}
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"shard {path} cannot be read ({exc}); check it with verify=True") from None

    def iter_shards(self, verify: bool = False, *, keys: "list[str] | None" = None, rank: int = 0,
                    world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Each shard's tensors (acts.<site>, token_ids, doc_ids, positions, window_ids; only `keys` when given), in
        manifest order; rank r of world_size reads shards r, r + world_size, ..."""
        for entry in self.shards[rank::world_size]:
            yield self._read(entry, keys, verify)

    def iter_batches(self, site, batch_size: int, *, shuffle_buffer: int = 2**18, seed: int = 0, rank: int = 0,
                     world_size: int = 1, epochs: int = 1, verify: bool = False,
                     drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Batches [batch_size, d] float32 of `site`'s activations.

        Rank r reads shards r, r + world_size, ... (in a seeded order per epoch); rows go through a buffer of
        `shuffle_buffer` rows: when it is full it is permuted and half of it is handed out, so a batch mixes rows
        of many windows and shards. shuffle_buffer=0 keeps the stored order. The last batch of an epoch may be
        smaller, unless drop_last. verify=True checks each shard's sha256 before reading it.
        """
        name = self._site_name(site)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if epochs < 1:
            raise InputError(f"epochs must be >= 1, got {epochs}")
        if shuffle_buffer < 0:
            raise InputError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        mine = [entry for i, entry in enumerate(self.shards) if i % world_size == rank]
        if not mine:
            raise InputError(f"rank {rank} of {world_size} gets no shard: {self.folder} has {len(self.shards)}")
        return self._batches(name, mine, batch_size, shuffle_buffer, seed, rank, epochs, verify, drop_last)

    def _batches(self, name, entries, batch_size, shuffle_buffer, seed, rank, epochs, verify, drop_last):
        key = f"acts.{name}"
        gen = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        capacity = max(shuffle_buffer, batch_size)
        for _ in range(epochs):
            order = torch.randperm(len(entries), generator=gen).tolist() if shuffle_buffer else range(len(entries))
            buffer = None  # kept in the stored dtype: half the memory of float32 for float16 folders
            for i in order:
                rows = self._read(entries[i], [key], verify)[key]
                rows = rows.reshape(len(rows), -1)
                buffer = rows if buffer is None else torch.cat([buffer, rows])
                if shuffle_buffer and len(buffer) >= capacity:
                    buffer = buffer[torch.randperm(len(buffer), generator=gen)]
                    n_out = (len(buffer) - capacity // 2) // batch_size * batch_size
                    yield from _split(buffer[:n_out], batch_size)
                    buffer = buffer[n_out:]
                elif not shuffle_buffer:
                    n_out = len(buffer) // batch_size * batch_size
                    yield from _split(buffer[:n_out], batch_size)
                    buffer = buffer[n_out:]
            if buffer is not None and len(buffer):
                if shuffle_buffer:
                    buffer = buffer[torch.randperm(len(buffer), generator=gen)]
                n_out = len(buffer) // batch_size * batch_size if drop_last else len(buffer)
                yield from _split(buffer[:n_out], batch_size)


def _split(rows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(rows), batch_size):
        yield rows[start:start + batch_size].float()


def open_store(folder: "str | Path") -> HarvestStore:
    """Open a harvest folder for reading: InputError if it has no valid manifest or a listed shard is missing."""
    return HarvestStore(folder)


@dataclass
class HarvestCheck(Result, kind="harvest_check"):
    """What `verify_store` found: every listed shard is there, matches its sha256 and holds the tokens the manifest
    says."""
    folder: str
    model: str
    sites: list[str]
    dtype: str
    n_tokens: int
    tokens_in_shards: int
    n_shards: int
    complete: bool
    sha256_ok: bool
    description: str = ""

    def summary(self) -> str:
        return (f"{self.description}\n  all {self.n_shards} shards match their sha256; {self.tokens_in_shards:,} "
                f"tokens in the shards")


def verify_store(store: HarvestStore) -> HarvestCheck:
    """Read every shard once, check its sha256 and its token count against the manifest; InputError otherwise."""
    n = 0
    for entry, shard in zip(store.shards, store.iter_shards(verify=True, keys=["token_ids"])):
        if len(shard["token_ids"]) != entry["n_tokens"]:
            raise InputError(f"{entry['file']} holds {len(shard['token_ids'])} tokens, the manifest says "
                             f"{entry['n_tokens']}")
        n += entry["n_tokens"]
    return HarvestCheck(str(store.folder), store.model_spec, store.sites, store.manifest["dtype"], store.n_tokens, n,
                        len(store.shards), store.complete, True, repr(store))
