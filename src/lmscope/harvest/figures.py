"""A page about a harvest folder: tokens per shard, and the distribution of activation norms per site."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import torch

from lmscope.harvest.store import HarvestStore
from lmscope.results.html import table, write_page
from lmscope.results.output import HTML, check_output

MAX_SHARDS_SAMPLED = 4
"""Norms are read from the first few shards only: enough rows for a histogram, and the page stays quick."""


def norm_sample(store: HarvestStore, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(norms, positions) of `site`'s rows in the first shards."""
    key = f"acts.{site}"
    norms, positions = [], []
    for entry in store.shards[:MAX_SHARDS_SAMPLED]:
        shard = store._read(entry, [key, "positions"], verify=False)
        norms.append(shard[key].float().reshape(len(shard[key]), -1).norm(dim=-1))
        positions.append(shard["positions"])
    return torch.cat(norms), torch.cat(positions)


def folder_page(store: HarvestStore, path: "str | Path", *, overwrite: bool = False) -> Path:
    """Write the page (an existing file is replaced only with overwrite=True)."""
    path = check_output(path, overwrite=overwrite, suffixes=HTML, what="--html")
    sizes = [e["n_tokens"] for e in store.shards]
    figures = [go.Figure(go.Bar(x=list(range(len(sizes))), y=sizes)).update_layout(
        title=f"tokens per shard ({store.n_tokens:,} tokens, {len(sizes)} shards)", xaxis_title="shard",
        yaxis_title="tokens")]
    rows = []
    for site in store.sites:
        norms, positions = norm_sample(store, site)
        figures.append(go.Figure(go.Histogram(x=norms.log10().tolist(), nbinsx=120)).update_layout(
            title=f"{site}: log10 of activation norms ({len(norms):,} rows of the first shards)",
            xaxis_title="log10 ||x||", yaxis_title="rows", yaxis_type="log"))
        median = float(norms.median())
        outliers = norms > 10 * median
        rows.append([site, f"{median:.1f}", f"{float(norms.quantile(0.999)):.1f}", f"{float(norms.max()):.1f}",
                     f"{int(outliers.sum())} ({100 * float(outliers.float().mean()):.2f}%)",
                     _counts(positions[outliers])])
    body = (f"<pre>{html.escape(repr(store))}</pre>" +
            table(["site", "median norm", "99.9th percentile", "max", "rows > 10x median",
                   "their positions (position: rows)"], rows))
    return write_page(path, figures, f"harvest {store.folder}", body_html=body)


def _counts(positions: torch.Tensor) -> str:
    values, counts = torch.unique(positions, return_counts=True)
    return ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist())) or "-"
