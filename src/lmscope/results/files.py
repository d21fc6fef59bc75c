"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lmscope.core.errors import InputError


@contextmanager
def atomic_path(path: "str | Path") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one step."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    if not path.parent.exists():
        raise InputError(f"folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: "str | Path", text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def current_umask() -> int:
    """The process's umask (for giving a folder made by mkdtemp the mode a plain mkdir would)."""
    return _umask()
