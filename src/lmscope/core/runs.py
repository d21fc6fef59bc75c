"""The one home of the forward-pass helpers shared by the parts:

    prompt_rows(model, prompts, chat=False)        token ids per prompt (optionally in the chat template)
    activations_at(model, prompts, sites)          float64 activations at one token per prompt, batch by batch
    mean_activations(model, prompts, sites)        their float64 means
    length_groups(model, prompts_or_rows)          batches of equal token length (no padding)
    last_logits(model, prompts_or_rows, edits)     [n, vocab] logits at each prompt's last token
    prefix_cache(model, ids, mask=None, positions=None)   the key/value cache of a prefix
    on_cache(model, cache, rows=1, copies=1, select=None)  forward kwargs that run on a fresh copy of that cache
    position_kwargs(positions, start=0)            forward kwargs for explicit position ids (rows padded inside)
"""
from __future__ import annotations

import copy
import inspect
from typing import Iterator, Sequence

import torch

from lmscope.core.checks import check_count, check_prompts
from lmscope.core.errors import InputError


def prompt_rows(model, prompts: Sequence[str], chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt; with chat=True wrapped in the tokenizer's chat template with the assistant turn
    opened. Ids (not text) go to the model, so a template that starts with BOS does not get a second one."""
    prompts = check_prompts(prompts, "prompts")
    tok = model.tokenizer
    if tok is None:
        raise InputError(f"{model.spec} has no tokenizer")
    if not chat:
        return [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    if not getattr(tok, "chat_template", None):
        raise InputError(f"{model.spec}'s tokenizer has no chat template: use chat=False")
    rows = []
    for p in prompts:
        out = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)
        rows.append(list(out["input_ids"] if hasattr(out, "keys") else out))
    return rows


def token_index(lengths: torch.Tensor, position: "int | None", prompts: Sequence[str]) -> torch.Tensor:
    """Index of the chosen token in each (right-padded) row: the last real token for None, else `position` counted
    over the row's own tokens (negative from its last real token); a clear error where a prompt is too short."""
    if position is None:
        return lengths - 1
    index = lengths + position if position < 0 else torch.full_like(lengths, position)
    bad = ((index < 0) | (index >= lengths)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise InputError(f"position {position} is out of range for prompt {prompts[i]!r} "
                         f"({int(lengths[i])} tokens)")
    return index


def activations_at(model, prompts: Sequence[str], sites, *, position: "int | None" = None, batch_size: int = 32
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch of prompts: {site: float64 activations [batch, *feature shape]} at one token per prompt."""
    prompts = check_prompts(prompts, "prompts")
    sites = [str(s) for s in model.sites(sites if isinstance(sites, (list, tuple)) else [sites])]
    if position is not None and (not isinstance(position, int) or isinstance(position, bool)):
        raise InputError(f"position must be an int or None (the last real token), got {position!r}")
    check_count("batch_size", batch_size)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        # Stop after the deepest site read: the layers above it cannot change it.
        run = model.run(batch, read=sites, stop_early=True)
        lengths = run.attention_mask.sum(dim=1)
        index = token_index(lengths, position, batch)
        rows = torch.arange(len(batch), device=index.device)
        yield {site: run.acts[site][rows, index].to(torch.float64) for site in sites}


def mean_activations(model, prompts: Sequence[str], sites, *, position: "int | None" = None,
                     batch_size: int = 32) -> dict[str, torch.Tensor]:
    """{site: float64 mean activation [*feature shape]} over the prompts, at one token per prompt."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for acts in activations_at(model, prompts, sites, position=position, batch_size=batch_size):
        for site, a in acts.items():
            sums[site] = sums[site] + a.sum(dim=0) if site in sums else a.sum(dim=0)
        count += next(iter(acts.values())).shape[0]
    return {site: s / count for site, s in sums.items()}


def length_groups(model, prompts: Sequence, batch_size: int = 64) -> list[tuple[list[int], list[list[int]]]]:
    """(indices, token rows) per batch of prompts with the same token count: no padding anywhere. Prompts are
    strings (tokenised with the model's tokenizer) or token-id lists."""
    if not prompts:
        raise InputError("no prompts to run")
    check_count("batch_size", batch_size)
    rows = [list(p) if not isinstance(p, str) else model.tokenizer(p, add_special_tokens=True)["input_ids"]
            for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    out = []
    for length in sorted(by_len):
        idx = by_len[length]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            out.append((chunk, [rows[i] for i in chunk]))
    return out


@torch.no_grad()
def last_logits(model, prompts: Sequence, edits=(), *, batch_size: int = 64) -> torch.Tensor:
    """Logits at each prompt's last token, [n, vocab] float32 on the CPU. Prompts (strings or token-id lists) run
    grouped by length, unpadded, and only the last position is unembedded. `edits` is a list applied to every
    batch, or a callable () -> edits called once per batch (for edits that carry state)."""
    out = torch.empty(len(prompts), model.vocab_size)
    for idx, rows in length_groups(model, prompts, batch_size):
        batch_edits = edits() if callable(edits) else edits
        run = model.run(rows, edits=batch_edits, forward_kwargs={"logits_to_keep": 1})
        out[idx] = run.logits[:, -1].float().cpu()
    return out


def supports_kv_cache(model) -> bool:
    """Whether the model's forward takes a key/value cache (every built-in family does; a custom model may not)."""
    params = inspect.signature(model.hf.forward).parameters
    return "cache" in params or "past_key_values" in params


@torch.no_grad()
def prefix_cache(model, ids: torch.Tensor, mask: "torch.Tensor | None" = None,
                 positions: "torch.Tensor | None" = None):
    """The KV cache of a forward over `ids` (with its attention `mask`, if padded, and its position ids, if the
    padding is on the left; no gradient: a prefix is a constant); only the cache is wanted, so only one
    position's logits are made."""
    if not supports_kv_cache(model):
        raise InputError(f"{model.spec} keeps no key/value cache; run this method with resume=False")
    out = model.hf(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **position_kwargs(positions))
    return getattr(out, "cache", None) or out.past_key_values


def position_kwargs(positions: "torch.Tensor | None", start: int = 0) -> dict:
    """Keyword arguments for `model.hf(...)` with explicit position ids (rows padded inside, e.g. by
    circuits.tasks.align_changes) for the columns from `start` on (the ones before it are in a KV cache); {}
    without positions: the model counts them itself."""
    return {} if positions is None else {"position_ids": positions[:, start:]}


def on_cache(model, cache, rows: int = 1, copies: int = 1, select=None) -> dict:
    """Keyword arguments for `model.hf(...)` that run the next tokens on top of a copy of `cache` (from
    prefix_cache): its rows `select` (a list of row indices, repeats allowed; None: all), each repeated `rows` times
    (row b * rows + j, as repeat_interleave), then the whole batch `copies` times (row j * batch + b, as
    Tensor.repeat); the cache itself is left unchanged. None: no cache."""
    if cache is None:
        return {"use_cache": False}
    fresh = copy.deepcopy(cache)
    if select is not None:
        fresh.batch_select_indices(torch.as_tensor(select, dtype=torch.long, device=model.device))
    if rows > 1:
        fresh.batch_repeat_interleave(rows)
    if copies > 1:
        fresh.batch_select_indices(torch.arange(len(fresh.layers[0].keys), device=model.device).repeat(copies))
    name = "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"
    return {name: fresh, "use_cache": True}
