"""Corpus -> a deterministic stream of model inputs, cut into shards before any activation is computed.

Everything here is a pure function of (corpora, seed, tokenizer, seq_len, prefix, token target, shard size): a
resumed run or another rank recomputes exactly the same windows and the same shard boundaries, so it can skip the
shards that are already on disk without running the model over them.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lmscope.data.corpora import iter_documents, iter_token_windows
from lmscope.core.errors import InputError

UNBOUNDED = 10**18
"""Token budget handed to the corpus reader: the harvest stops the stream itself, at its own target."""


@dataclass(frozen=True)
class Window:
    """One model input row: the prefix token (if any) and up to seq_len consecutive tokens of one document."""

    index: int              # position of the window in the whole stream (0, 1, 2, ...)
    doc: int                # position of its document in the (mixed) document stream
    start: int              # token offset of the window's first corpus token inside its document
    ids: tuple[int, ...]    # what the model reads
    keep: tuple[bool, ...]  # which positions are written to disk (special tokens are not, by default)

    @property
    def n_keep(self) -> int:
        return sum(self.keep)


@dataclass(frozen=True)
class ShardPlan:
    """The windows whose kept tokens make up shard number `index`."""

    index: int
    windows: tuple[Window, ...]

    @property
    def first_window(self) -> int:
        return self.windows[0].index

    @property
    def n_tokens(self) -> int:
        return sum(w.n_keep for w in self.windows)


def parse_corpora(corpus: "str | Sequence[str]") -> list[str]:
    """'wiki' or 'wiki,bible' (or a list) -> a non-empty list of names, each at most once."""
    names = [n.strip() for n in corpus.split(",")] if isinstance(corpus, str) else [str(n).strip() for n in corpus]
    names = [n for n in names if n]
    if not names:
        raise InputError("no corpus given; e.g. --corpus wiki or --corpus wiki,shakespeare,bible")
    if len(set(names)) != len(names):
        raise InputError(f"a corpus is listed twice in {','.join(names)}")
    return names


def resolve_prefix(tokenizer, prefix: "str | int | None") -> "int | None":
    """The token put before every window ('auto', 'none', or an id).

    A model's first position collects an attention sink with a huge norm (about 24,000 against ~150 elsewhere at
    SmolLM2's layer 12): a window must not start on a corpus token. 'auto' takes the token the tokenizer itself
    puts first (Llama, Gemma), else the `<|endoftext|>` document separator of GPT-2-style vocabularies (SmolLM2,
    Qwen, GPT-2), else the tokenizer's BOS.
    """
    if prefix is None or prefix == "none":
        return None
    vocab_size = len(tokenizer)
    if prefix == "auto":
        added = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        if len(added) > len(plain) and added[0] in tokenizer.all_special_ids:
            return int(added[0])
        separator = tokenizer.get_vocab().get("<|endoftext|>")  # (SmolLM2's unk token is this very token)
        if separator is not None and 0 <= separator < vocab_size:
            return int(separator)
        return tokenizer.bos_token_id
    try:
        token = int(prefix)
    except (TypeError, ValueError):
        raise InputError(f"prefix must be 'auto', 'none' or a token id, got {prefix!r}") from None
    if not 0 <= token < vocab_size:
        raise InputError(f"prefix token {token} is outside the vocabulary (0..{vocab_size - 1})")
    return token


def iter_documents_mixed(names: list[str], seed: int) -> Iterator[tuple[int, str, str]]:
    """(document index, corpus, text), several corpora interleaved so that each has had about the same number of
    characters so far (the next document comes from the corpus with the fewest); a corpus that runs out drops out.
    With one corpus this is `iter_documents(name, seed=seed)` numbered from 0."""
    streams = {name: iter_documents(name, seed=seed) for name in names}  # errors (unknown corpus) raised here
    sizes = {name: 0 for name in names}
    index = 0
    while streams:
        name = min(streams, key=lambda n: (sizes[n], names.index(n)))
        doc = next(streams[name], None)
        if doc is None:
            del streams[name]
            continue
        sizes[name] += len(doc.text)
        yield index, name, doc.text
        index += 1


def iter_windows(tokenizer, names: list[str], *, seq_len: int, seed: int, prefix: "int | None",
                 skip_ids: "set[int] | frozenset[int]") -> Iterator[Window]:
    """Every window of the corpora, in order: documents cut as `lmscope.data.corpora.iter_token_windows` cuts
    them (consecutive slices of seq_len tokens, a document's tail shorter than MIN_WINDOW dropped)."""
    index = 0
    head = () if prefix is None else (prefix,)
    for doc, _, text in iter_documents_mixed(names, seed):
        if not text.strip():
            continue
        for piece in iter_token_windows(tokenizer, [text], n_tokens=UNBOUNDED, window=seq_len):
            ids = head + tuple(piece.input_ids)
            yield Window(index, doc, piece.start, ids, tuple(i not in skip_ids for i in ids))
            index += 1


def plan_shards(windows: Iterator[Window], *, tokens_target: int, shard_tokens: int) -> Iterator[ShardPlan]:
    """Group windows into shards of at least `shard_tokens` kept tokens (the last one smaller), stopping at exactly
    `tokens_target` kept tokens: the window that crosses the target is cut after its last needed token."""
    written, current, index = 0, [], 0
    in_shard = 0
    for window in windows:
        if window.n_keep == 0:
            continue
        needed = tokens_target - written
        if window.n_keep > needed:
            window = _truncate(window, needed)
        current.append(window)
        written += window.n_keep
        in_shard += window.n_keep
        if in_shard >= shard_tokens or written == tokens_target:
            yield ShardPlan(index, tuple(current))
            index, current, in_shard = index + 1, [], 0
        if written == tokens_target:
            return
    if current:
        yield ShardPlan(index, tuple(current))


def _truncate(window: Window, n_keep: int) -> Window:
    seen = 0
    for end, kept in enumerate(window.keep, 1):
        seen += kept
        if seen == n_keep:
            return Window(window.index, window.doc, window.start, window.ids[:end], window.keep[:end])
    return window


def documents_used(names: list[str], seed: int, last_doc: int) -> dict[str, int]:
    """How many documents of each corpus (in its own `seed` order) the mixed stream had read up to document
    `last_doc`: documents after these were never harvested, so they are held-out text for evaluation."""
    used = {name: 0 for name in names}
    for index, name, _ in iter_documents_mixed(names, seed):
        if index > last_doc:
            break
        used[name] += 1
    return used


def unused_documents(manifest: dict, name: str) -> Iterator[str]:
    """Texts of corpus `name` that a finished harvest never read (held out), in the harvest's document order."""
    corpus = manifest["corpus"]
    if name not in corpus["name"].split(","):
        return (doc.text for doc in iter_documents(name, seed=corpus["seed"]))
    if "documents" not in manifest:
        raise InputError("the harvest is not finished: which documents it read is known at the end")
    skip = manifest["documents"][name]
    return (doc.text for i, doc in enumerate(iter_documents(name, seed=corpus["seed"])) if i >= skip)
