"""The runs folder, addressed by id: the browser names a file or folder by an opaque id from a listing the server
made itself, never by a path. Ids are hashes of the path relative to the runs folder; a lookup rescans the folder
and only returns paths that resolve inside it (symbolic links that leave it are skipped).

What is listed: SAE folders (cfg.json + a safetensors file), circuit files (JSON with the circuit format), vector
files (.safetensors with lmscope metadata), task pair files (.jsonl), other result JSON files.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmscope.lab.http import FieldError

SKIP = {"lab"}          # the lab's own cache
MAX_ENTRIES = 2000


@dataclass
class Entry:
    id: str
    kind: str          # sae | circuit | vector | task | result
    name: str          # path relative to the runs folder, for display only
    path: Path

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "name": self.name}


def _id(rel: str) -> str:
    return "r" + hashlib.sha256(rel.encode()).hexdigest()[:16]


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def _kind(path: Path) -> "str | None":
    if path.is_dir():
        if (path / "cfg.json").is_file() and any(path.glob("*.safetensors")):
            return "sae"
        return None
    if path.suffix == ".safetensors":
        return "vector"
    if path.suffix == ".jsonl":
        return "task"
    if path.suffix == ".json" and path.stat().st_size < 20_000_000:
        try:
            with open(path, encoding="utf-8") as f:
                head = f.read(200)
        except (OSError, UnicodeDecodeError):
            return None
        if '"lmscope-circuit/' in head:
            return "circuit"
        return "result"
    return None


def scan(root: Path) -> list[Entry]:
    root = root.resolve()
    out: list[Entry] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here != root and _kind(here) == "sae":     # an SAE folder is one entry: its files are not listed
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             not (here == root and d in SKIP) and _inside(root, here / d))
        for name in dirnames + sorted(filenames):
            path = here / name
            if name.startswith(".") or not _inside(root, path):
                continue
            kind = _kind(path)
            if kind:
                rel = path.relative_to(root).as_posix()
                out.append(Entry(_id(rel), kind, rel, path))
            if len(out) >= MAX_ENTRIES:
                return out
    return out


def lookup(root: Path, entry_id: str, kind: "str | None" = None, field: str = "id") -> Entry:
    if not isinstance(entry_id, str) or not entry_id.startswith("r") or not entry_id[1:].isalnum():
        raise FieldError(field, "unknown run id")
    for e in scan(root):
        if e.id == entry_id and (kind is None or e.kind == kind):
            return e
    raise FieldError(field, f"no {kind or 'run'} with id {entry_id!r} in the runs folder")


def entry_json(entry: Entry) -> dict:
    try:
        return json.loads(entry.path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FieldError("id", f"{entry.name} is not readable JSON ({type(e).__name__})") from None
