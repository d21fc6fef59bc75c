"""Text for tables and summaries of the lenses: a token made readable, a layer list as ranges."""
from __future__ import annotations


def show_token(token: str, n: int = 10) -> str:
    """A token for a table cell: spaces made visible (' Tokyo' and 'Tokyo' are different tokens), at most n
    characters."""
    s = repr(token)[1:-1].replace(" ", "␣")
    return s if len(s) <= n else s[: n - 1] + "…"


def layer_ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (sorted input)."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)
