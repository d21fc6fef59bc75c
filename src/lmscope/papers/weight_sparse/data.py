"""Training data for the weight-sparse models: Python source of the running interpreter's standard library (the
`python` corpus of lmscope.data.corpora), split into train / validation / test by a hash of each file's path, a
byte-level BPE tokenizer trained on the train split, and fixed windows of `ctx` tokens.

    split_of(doc_id)              'train' (90%), 'validation' (5%) or 'test' (5%), from sha256 of the path
    split_texts(split, max_chars) the split's file texts in path order (max_chars: stop after that many, for tests)
    train_tokenizer(texts, vocab) a byte-level BPE (the paper's tinypython_2k has 2,048 tokens) as a transformers
                                  PreTrainedTokenizerFast; <|endoftext|> (id 0) separates files
    code_windows(tok, texts, ctx) one stream of ids (files joined by <|endoftext|>) cut into [n, ctx] windows
    batch_rows(step, ...)         which windows make up a training step: a seeded permutation per epoch, so the
                                  order is a pure function of (seed, step) and a resumed run sees the same tokens
"""
from __future__ import annotations

import hashlib

import torch

from lmscope.data.corpora import iter_documents
from lmscope.core.errors import InputError

SPLITS = ("train", "validation", "test")
EOT = "<|endoftext|>"


def split_of(doc_id: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def split_texts(split: str, max_chars: int = 0) -> list[str]:
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    texts, total = [], 0
    for doc in iter_documents("python", shuffle=False):
        if split_of(doc.doc_id) == split and doc.text.strip():
            texts.append(doc.text)
            total += len(doc.text)
            if max_chars and total >= max_chars:
                break
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Byte-level BPE trained with the `tokenizers` library (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None,
                                   model_max_length=1 << 30)


def code_windows(tokenizer, texts: list[str], ctx: int) -> torch.Tensor:
    """[n_windows, ctx] int64: the texts' ids joined by <|endoftext|>, cut into consecutive windows (the tail
    shorter than ctx is dropped)."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [eot]
    n = len(stream) // ctx
    if n == 0:
        raise InputError(f"{len(stream)} tokens make no window of {ctx}")
    return torch.tensor(stream[:n * ctx], dtype=torch.long).view(n, ctx)


def batch_rows(step: int, batch_size: int, n_windows: int, seed: int) -> torch.Tensor:
    """Window indices of training step `step` (global batch): epoch e = a permutation seeded by (seed, e)."""
    per_epoch = n_windows // batch_size
    if per_epoch == 0:
        raise InputError(f"{n_windows} training windows are fewer than one batch of {batch_size}")
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[offset * batch_size:(offset + 1) * batch_size]
