"""Self-contained HTML pages: Plotly's JavaScript is inlined once, so pages work offline (no CDN)."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.io as pio

from lmscope.results.files import write_atomic


# colours for series that keep one colour across a figure's panels (plotly's default sequence)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def write_page(path: "str | Path", figures, title: str, intro: str = "", body_html: str = "") -> Path:
    """`body_html` is inserted as is (already escaped) between the intro and the figures."""
    figures = figures if isinstance(figures, (list, tuple)) else [figures]
    parts = [pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, config={"responsive": True})
             for i, fig in enumerate(figures)]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} p{{max-width:60em}}</style></head>"
            f"<body><h2>{html.escape(title)}</h2>{_intro(intro)}{body_html}{''.join(parts)}</body></html>\n")
    return write_atomic(path, page)


def _intro(text: str) -> str:
    """Plain text as a paragraph; several lines (a result's summary, aligned columns) keep their lines."""
    if "\n" in text.strip():
        return f"<pre style='white-space:pre-wrap'>{html.escape(text.strip())}</pre>"
    return f"<p>{html.escape(text)}</p>"


def table(headers: list[str], rows: list[list], long_text: "list[str] | None" = None) -> str:
    """An escaped HTML table; `long_text` (one per row) goes in a last, pre-wrapped column (answers, transcripts)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        if long_text is not None:
            cells += f"<td><pre style='margin:0;white-space:pre-wrap'>{html.escape(long_text[i])}</pre></td>"
        body.append(f"<tr>{cells}</tr>")
    return (f"<table border='1' style='border-collapse:collapse;font-size:90%'><tr>{head}</tr>{''.join(body)}"
            f"</table>")


def transcripts(verdict: str, prompt_label: str, prompt: str, headers: list[str], rows: list[list],
                answers: list[str]) -> str:
    """The body of a trials page: the verdict, one example prompt folded away, then every transcript."""
    return (f"<p>{html.escape(verdict)}</p><details><summary>{html.escape(prompt_label)}</summary>"
            f"<pre style='white-space:pre-wrap'>{html.escape(prompt)}</pre></details><h3>Transcripts</h3>"
            + table(headers, rows, answers))
