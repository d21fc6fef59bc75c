"""Self-contained HTML pages: Plotly's JavaScript is inlined once, so pages work offline (no CDN)."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.io as pio

from .files import write_atomic


def write_page(path: "str | Path", figures, title: str, intro: str = "", body_html: str = "") -> Path:
    """`body_html` is inserted as is (already escaped) between the intro and the figures."""
    figures = figures if isinstance(figures, (list, tuple)) else [figures]
    parts = [pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, config={"responsive": True})
             for i, fig in enumerate(figures)]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} p{{max-width:60em}}</style></head>"
            f"<body><h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>{body_html}{''.join(parts)}</body></html>\n")
    return write_atomic(path, page)
