"""PatchScope (Ghandeharioun et al. 2024): let the model put one of its hidden states into words.

The residual stream (resid_post) of a SOURCE prompt at (layer, position) replaces the residual stream of a TARGET
prompt at (layer*, position*), where position* is the template's placeholder token; the model then generates a few
tokens greedily (the patch stays in place at that position during generation, which never revisits it).

Shipped templates:
    identity  "cat -> cat; 1135 -> 1135; hello -> hello; ? ->"   placeholder "?": decodes which token the state holds
    entity    "Leonardo da Vinci: Italian painter. TSMC: Taiwanese company. x:"   placeholder "x": describes it
A custom template is any text with its placeholder (the last occurrence is patched).

`decoded` says whether the generation starts with the source token (case-insensitive, surrounding spaces ignored).
"""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_layers
from lmscope.core.config import option, with_overrides
from lmscope.core.edits import replace
from lmscope.core.errors import InputError
from lmscope.core.models.sites import resolve_position
from lmscope.lenses.text import layer_ranges
from lmscope.results import Result

TEMPLATES = {
    "identity": ("cat -> cat; 1135 -> 1135; hello -> hello; ? ->", "?"),
    "entity": ("Leonardo da Vinci: Italian painter. TSMC: Taiwanese company. x:", "x"),
}


@dataclass
class PatchscopeConfig:
    """The options of one PatchScope sweep (also the CLI's flags and the `config` stored in the result)."""
    position: int = option(-1, "source token position (-1: the last)")
    template: str = option("identity", "identity, entity, or a text with a placeholder")
    placeholder: "str | None" = option(None, "placeholder of a custom template (None: '?')")
    layers: "list[int] | None" = option(None, "source layers, comma-separated (None: all)")
    target_layers: "list[int] | None" = option(None, "target layers for a grid (None: target layer = source layer)")
    max_new_tokens: int = option(4, "greedy tokens generated per cell")


@dataclass
class PatchCell:
    source_layer: int
    target_layer: int
    text: str          # the generated continuation
    decoded: bool      # the generation starts with the source token


@dataclass
class PatchscopeResult(Result, kind="patchscope"):
    model: str
    source_prompt: str
    source_position: int
    source_token: str
    template: str
    placeholder: str
    target_position: int
    unpatched: str               # the template's own generation, no patch
    cells: list[PatchCell]
    config: PatchscopeConfig = dataclasses.field(default_factory=PatchscopeConfig)

    def decoded_layers(self) -> list[int]:
        return sorted({c.source_layer for c in self.cells if c.decoded})

    def json_extras(self) -> dict:
        return {"decoded_source_layers": self.decoded_layers()}

    def figure(self):
        """Source x target layers; when each source layer goes to one target layer (the default: the same layer),
        one readable column of (source -> target, generation) instead of a mostly empty square."""
        if len({c.source_layer for c in self.cells}) == len(self.cells):
            cells = sorted(self.cells, key=lambda c: c.source_layer)
            fig = go.Figure(go.Heatmap(
                z=[[1.0 if c.decoded else 0.0] for c in cells], x=["generation"],
                y=[f"L{c.source_layer} -> L{c.target_layer}" for c in cells], text=[[repr(c.text)] for c in cells],
                texttemplate="%{text}", textfont={"size": 12}, colorscale=[[0, "#f4f4f4"], [1, "#7fb3d5"]], zmin=0,
                zmax=1, showscale=False, hovertemplate="%{y}<br>%{text}<extra></extra>"))
            fig.update_layout(title=f"PatchScope: {self.source_token!r} from {self.source_prompt!r} "
                                    f"(blue: generation starts with it)", yaxis_title="source -> target layer",
                              height=max(350, 24 * len(cells) + 160), width=760)
            return fig
        src = sorted({c.source_layer for c in self.cells})
        tgt = sorted({c.target_layer for c in self.cells})
        cell = {(c.source_layer, c.target_layer): c for c in self.cells}
        z = [[(1.0 if cell[(s, t)].decoded else 0.0) if (s, t) in cell else None for s in src] for t in tgt]
        text = [[cell[(s, t)].text[:14] if (s, t) in cell else "" for s in src] for t in tgt]
        fig = go.Figure(go.Heatmap(z=z, x=[f"src {s}" for s in src], y=[f"tgt {t}" for t in tgt], text=text,
                                   texttemplate="%{text}", colorscale=[[0, "#f4f4f4"], [1, "#7fb3d5"]], zmin=0,
                                   zmax=1, showscale=False,
                                   hovertemplate="%{x} -> %{y}<br>%{text}<extra></extra>"))
        fig.update_layout(title=f"PatchScope: {self.source_token!r} from {self.source_prompt!r} "
                                f"(blue: generation starts with it)",
                          height=max(350, 28 * len(tgt) + 160), width=max(700, 70 * len(src) + 200))
        return fig

    def title(self) -> str:
        return f"PatchScope - {self.model}"

    def page_intro(self) -> str:
        return (f"resid_post of {self.source_prompt!r} at position {self.source_position} ({self.source_token!r}) "
                f"replaces the target prompt {self.template!r} at its placeholder {self.placeholder!r} (position "
                f"{self.target_position}); greedy generation. Unpatched: {self.unpatched!r}.")

    def page_body(self) -> str:
        rows = "".join(f"<tr><td>{c.source_layer}</td><td>{c.target_layer}</td><td>{'yes' if c.decoded else ''}"
                       f"</td><td><code>{html.escape(repr(c.text))}</code></td></tr>" for c in self.cells)
        return (f"<table border=1 cellpadding=3><tr><th>source layer</th><th>target layer</th><th>decoded</th>"
                f"<th>generation</th></tr>{rows}</table>")

    def summary(self) -> str:
        lines = [f"patchscope | {self.model} | source {self.source_token!r} (position {self.source_position} of "
                 f"{self.source_prompt!r})",
                 f"target {self.template!r}, placeholder {self.placeholder!r} at position {self.target_position}; "
                 f"unpatched: {self.unpatched!r}",
                 "src  tgt  decoded  generation"]
        for c in self.cells:
            lines.append(f"{c.source_layer:>3}  {c.target_layer:>3}  {'yes' if c.decoded else '   '}      {c.text!r}")
        layers = self.decoded_layers()
        lines.append(f"source token decoded from source layers: {layer_ranges(layers) if layers else 'none'}")
        return "\n".join(lines)


def resolve_template(template: str, placeholder: str | None = None) -> tuple[str, str]:
    """A shipped template name, or custom text with its placeholder ('?' by default)."""
    if template in TEMPLATES and placeholder is None:
        return TEMPLATES[template]
    if not isinstance(template, str) or not template.strip():
        raise InputError("empty template: give identity, entity or a text with a placeholder")
    placeholder = "?" if placeholder is None else placeholder
    if not placeholder or placeholder not in template:
        raise InputError(f"template {template!r} has no placeholder {placeholder!r}: mark the patched token with it")
    return template, placeholder


def placeholder_position(model, template: str, placeholder: str) -> int:
    """The token position of the last occurrence of the placeholder (the token it ends in)."""
    end = template.rindex(placeholder) + len(placeholder)
    full = model.encode(template)[0][0].tolist()
    prefix = model.encode(template[:end])[0][0].tolist()
    if full[:len(prefix)] != prefix:
        raise InputError(f"placeholder {placeholder!r} does not end on a token boundary in {template!r}; "
                         f"put a space or punctuation after it")
    return len(prefix) - 1


def patch_edit(layer: int, state: torch.Tensor, position: int):
    """The PatchScope intervention: resid_post.layer at `position` replaced by `state` ([d_model])."""
    return replace(f"resid_post.{layer}", state, positions=[position])


def _starts_with(text: str, token: str) -> bool:
    t = token.strip().lower()
    return bool(t) and text.strip().lower().startswith(t)


@torch.no_grad()
def patchscope(model, source_prompt: str, config: PatchscopeConfig | None = None, **overrides) -> PatchscopeResult:
    """Sweep source layers (default: all); target layer = source layer unless `target_layers` gives a grid.
    `config` holds the options (PatchscopeConfig); keyword arguments override its fields (e.g. layers=[3, 6])."""
    config = with_overrides(PatchscopeConfig, config, overrides)
    position, max_new_tokens = config.position, config.max_new_tokens
    template, placeholder = resolve_template(config.template, config.placeholder)
    check_count("max_new_tokens", max_new_tokens)
    src_layers = check_layers(model, config.layers, what="layers")
    tgt_layers = None if config.target_layers is None else check_layers(model, config.target_layers,
                                                                         what="target layers")
    run = model.run(source_prompt, read=[f"resid_post.{layer}" for layer in sorted(set(src_layers))])
    if run.input_ids.shape[0] != 1:
        raise InputError("patchscope takes one source prompt")
    pos = resolve_position(position, run.input_ids.shape[1], "the source prompt")
    source_token = model.tokenizer.decode([int(run.input_ids[0, pos])])
    tpos = placeholder_position(model, template, placeholder)
    unpatched = model.generate(template, max_new_tokens=max_new_tokens).text
    grid = [(s, t) for s in src_layers for t in ([s] if tgt_layers is None else tgt_layers)]
    # every cell is the same template with its own patch: one batch, one edit list per row
    texts = model.generate_batch([template] * len(grid), [[patch_edit(t, run.acts[f"resid_post.{s}"][0, pos], tpos)]
                                                          for s, t in grid], max_new_tokens=max_new_tokens)
    cells = [PatchCell(s, t, text, _starts_with(text, source_token)) for (s, t), text in zip(grid, texts)]
    return PatchscopeResult(model.spec, source_prompt, pos, source_token, template, placeholder, tpos, unpatched,
                            cells, config)
