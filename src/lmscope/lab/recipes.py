""""Copy as Python" and "copy as CLI": the code that reproduces what a view shows, built from its parameters."""
from __future__ import annotations

import shlex


def python(model_spec: str, imports: list[str], lines: list[str]) -> str:
    head = ["import lmscope"] + [i for i in imports if i != "import lmscope"]
    return "\n".join(head + ["", f"model = lmscope.load({model_spec!r})"] + lines) + "\n"


def cli(*args, **options) -> str:
    """`lmscope ARGS --option value ...` (None options left out, True ones as flags), shell-quoted."""
    words = ["lmscope"] + [str(a) for a in args]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words.append(f"{flag}={','.join(map(str, value))}")
        else:
            words.append(f"{flag}={value}")
    return shlex.join(words)


def fig_json(fig) -> dict:
    """A Plotly figure as plain JSON (what Plotly.js draws)."""
    import json

    import plotly.io as pio
    return json.loads(pio.to_json(fig, validate=False))


def payload(result_json: dict, figures: list, py: str, cli_text: "str | None", **extra) -> dict:
    out = {"result": result_json, "figures": [fig_json(f) for f in figures], "python": py,
           "cli": cli_text or "# no CLI subcommand shows this view; use the Python above"}
    out.update(extra)
    return out
