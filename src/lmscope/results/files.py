"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one.

    atomic_path(path)       a temporary file beside `path`, fsynced and renamed over it when the block succeeds;
                            the folder is fsynced after the rename, so the new name survives a power cut
    write_atomic(path, s)   the same for a text
    atomic_folder(folder)   a temporary folder beside `folder` that replaces the files of the same names in it as
                            one unit (an SAE's cfg.json and weights never come from two different saves)
    current_umask()         the process umask, read without changing it (/proc/self/status where available)
"""
from __future__ import annotations

import os
import shutil
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
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: "str | Path", text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _umask() -> int:
    """The umask from /proc/self/status (Linux >= 4.7): the process umask is never changed, not even briefly (a
    thread creating a file meanwhile would get mode 0666). Elsewhere the classic set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)   # the most restrictive value while it is read, never 0
    os.umask(mask)
    return mask


def current_umask() -> int:
    """The process's umask (for giving a folder made by mkdtemp the mode a plain mkdir would)."""
    return _umask()


def fsync(path: "str | Path") -> None:
    """Flush a file's or a folder's data to disk (a folder: its entries, i.e. a rename into it). Folders cannot be
    opened on Windows; there it is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    except OSError:        # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(folder: "str | Path") -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; when the block succeeds its files replace those of the same names
    in `folder` as one unit: `folder` is renamed aside, the new folder renamed into place, then whatever else the
    old one held (other files, sub-folders) is moved over and the old one removed. A crash at any point leaves
    `folder` with either every old file or every new one, never a mix (the other copy stays beside it as
    .<name>.old-* or .<name>.tmp-*). `folder`'s parent must exist."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder")
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())        # mkdtemp makes 0700; give the mode a plain mkdir would
        for f in tmp.iterdir():
            fsync(f)
        fsync(tmp)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old / "x")
        os.replace(tmp, folder)
        fsync(folder.parent)
        if old is not None:
            for entry in (old / "x").iterdir():
                if not (folder / entry.name).exists():
                    os.replace(entry, folder / entry.name)
            fsync(folder)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
