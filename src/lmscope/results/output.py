"""The one output rule, for every command and every saved artefact:

- an existing file, or a folder that is not empty, is replaced only with `overwrite=True` (`--overwrite`);
- the output location is checked before any computation starts: its parent folder exists and is writable, the name
  has an accepted suffix, a file is not a folder and a folder is not a file.

Resuming a harvest into its own folder is the one documented exception (the harvest checks its manifest instead).
"""
from __future__ import annotations

import os
from pathlib import Path

from lmscope.core.errors import InputError

HTML = (".html", ".htm")


def check_output(path: "str | Path", *, overwrite: bool = False, suffixes: "tuple[str, ...] | None" = None,
                 folder: bool = False, what: str = "output") -> Path:
    """Raise one InputError if `path` may not be written; return it as a Path. Call it before the work starts."""
    if path is None or str(path) == "":
        raise InputError(f"{what}: give a path")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{what}: folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{what}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: folder {parent} is not writable")
    if folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"{what}: {path} is a file; give a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise InputError(f"{what}: folder {path} is not empty; pass --overwrite (overwrite=True) to replace "
                             f"what it holds")
        return path
    if path.is_dir():
        raise InputError(f"{what}: {path} is a folder; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{what}: {path} must end in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise InputError(f"{what}: {path} exists; pass --overwrite (overwrite=True) to replace it")
    return path
