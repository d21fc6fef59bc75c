"""Contrastive directions: the difference of mean activations at a site between two prompt sets.

    d = mean(act(positive prompts)) - mean(act(negative prompts))        at one token per prompt

The token is the last real token of each prompt (padding is ignored), or a chosen `position`: an int counted over
each prompt's own tokens (negative counts back from its last real token, -1 = the last). Sums accumulate in float64
one batch at a time (memory does not grow with the number of prompts); the returned vector has the model's dtype,
ready for `lmscope.add` / `project_out`.

`concept_vector` is the concept vector of Lindsey 2025 ("Emergent introspective awareness"): the activation at the
last token of "Tell me about {word}" minus the mean over baseline words. Part 2 (steering, probes, PCA) builds on
`activations_at` and `difference_of_means`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .errors import InputError


@dataclass
class Direction:
    vector: torch.Tensor       # [*feature shape of the site], model dtype
    site: str                  # canonical site name, e.g. 'resid_post.12'
    position: "int | None"     # None = the last real token of each prompt
    n_positive: int
    n_negative: int
    norm: float                # |vector|, computed in float64

    def to_json(self) -> dict:
        """Metadata only: the vector itself belongs in a safetensors file, not in JSON."""
        return {"site": self.site, "position": self.position, "n_positive": self.n_positive,
                "n_negative": self.n_negative, "norm": self.norm}


def activations_at(model, prompts: Sequence[str], sites, *, position: "int | None" = None, batch_size: int = 32
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch of prompts: {site: float64 activations [batch, *feature shape]} at one token per prompt."""
    prompts = _check_prompts(prompts, "prompts")
    sites = [str(s) for s in model.sites(sites if isinstance(sites, (list, tuple)) else [sites])]
    if position is not None and (not isinstance(position, int) or isinstance(position, bool)):
        raise InputError(f"position must be an int or None (the last real token), got {position!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        # Stop after the deepest site read: the layers above it cannot change it.
        run = model.run(batch, read=sites, stop_early=True)
        lengths = run.attention_mask.sum(dim=1)
        index = _token_index(lengths, position, batch)
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


def difference_of_means(model, positive: Sequence[str], negative: Sequence[str], site, *,
                        position: "int | None" = None, batch_size: int = 32) -> Direction:
    """mean(positive) - mean(negative) at `site` (one site, e.g. 'resid_post.12')."""
    positive = _check_prompts(positive, "positive prompts")
    negative = _check_prompts(negative, "negative prompts")
    name = str(model.site(site))
    pos = mean_activations(model, positive, [name], position=position, batch_size=batch_size)[name]
    neg = mean_activations(model, negative, [name], position=position, batch_size=batch_size)[name]
    diff = pos - neg
    return Direction(diff.to(model.dtype), name, position, len(positive), len(negative), float(diff.norm()))


def concept_vector(model, word: str, baselines: Sequence[str], layer: int, template: str = "Tell me about {}",
                   *, site_kind: str = "resid_post") -> Direction:
    """Lindsey 2025: act(template.format(word)) - mean over b in baselines of act(template.format(b)), at the last
    token, at `site_kind.layer` (the residual stream after block `layer` by default)."""
    if not isinstance(word, str) or not word.strip():
        raise InputError("concept word is empty")
    baselines = _check_prompts(baselines, "baseline words")
    if "{}" not in template:
        raise InputError(f"template must contain '{{}}' where the word goes, got {template!r}")
    return difference_of_means(model, [template.format(word)], [template.format(b) for b in baselines],
                               f"{site_kind}.{layer}")


def _check_prompts(prompts, what: str) -> list[str]:
    if isinstance(prompts, str):
        raise InputError(f"{what} must be a list of strings, not one string")
    prompts = list(prompts)
    if not prompts:
        raise InputError(f"{what}: the list is empty")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InputError(f"{what}: every entry must be non-empty text")
    return prompts


def _token_index(lengths: torch.Tensor, position: "int | None", prompts: list[str]) -> torch.Tensor:
    """Index of the chosen token in each (right-padded) row; a clear error where a prompt is too short."""
    if position is None:
        return lengths - 1
    index = lengths + position if position < 0 else torch.full_like(lengths, position)
    bad = ((index < 0) | (index >= lengths)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise InputError(f"position {position} is out of range for prompt {prompts[i]!r} "
                         f"({int(lengths[i])} tokens)")
    return index
