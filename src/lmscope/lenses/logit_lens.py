"""Logit lens (nostalgebraist 2020): read every layer's residual stream through the model's own final norm and
unembedding (and final soft-capping, where the model has it), as if the model stopped there.

The last layer's entry is the model's own output distribution (its logits, not a recomputation).
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmscope.core.checks import check_count
from lmscope.core.errors import InputError
from lmscope.lenses.text import show_token
from lmscope.results import Result


@dataclass
class TopToken:
    token: str
    id: int
    prob: float


@dataclass
class TargetTrace:
    token: str
    id: int
    rank: list[int]     # per layer, at the last position; 1 = the top token
    prob: list[float]


@dataclass
class LensResult(Result, kind="logit_lens"):
    model: str
    prompt: str
    tokens: list[str]
    token_ids: list[int]
    top: list[list[list[TopToken]]]        # [layer][position][k]; the last layer is the model's own output
    target: TargetTrace | None = None      # null when no target token was asked for

    def figure(self):
        n_layers, n_pos = len(self.top), len(self.tokens)
        z = [[self.top[layer][p][0].prob for p in range(n_pos)] for layer in range(n_layers)]
        text = [[show_token(self.top[layer][p][0].token) for p in range(n_pos)] for layer in range(n_layers)]
        hover = [["<br>".join(f"{t.token!r}: {t.prob:.3f}" for t in self.top[layer][p]) for p in range(n_pos)]
                 for layer in range(n_layers)]
        x = [f"{p}: {tok!r}" for p, tok in enumerate(self.tokens)]
        y = [f"layer {i}" for i in range(n_layers)]
        y[-1] += " (output)"
        fig = go.Figure(go.Heatmap(z=z, x=x, y=y, text=text, texttemplate="%{text}", customdata=hover,
                                   hovertemplate="%{y}, position %{x}<br>%{customdata}<extra></extra>",
                                   colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "top-1 prob"}))
        title = f"Logit lens: {self.model}"
        if self.target is not None:
            title += f" | target {self.target.token!r}: final rank {self.target.rank[-1]}"
        fig.update_layout(title=title, height=max(400, 22 * n_layers + 150), width=max(700, 110 * n_pos + 250),
                          xaxis={"side": "top"})
        return fig

    def target_figure(self):
        """Rank (log scale) and probability of the target token at the last position, layer by layer."""
        t = self.target
        layers = list(range(len(t.rank)))
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=layers, y=t.rank, name="rank (1 = top)", mode="lines+markers"))
        fig.add_trace(go.Scatter(x=layers, y=t.prob, name="probability", mode="lines+markers"), secondary_y=True)
        fig.update_yaxes(type="log", autorange="reversed", title_text="rank", secondary_y=False)
        fig.update_yaxes(range=[0, 1], tickmode="linear", tick0=0, dtick=0.2, showgrid=False,
                         title_text="probability", secondary_y=True)
        fig.update_layout(title=f"Target {t.token!r} at the last position ({self.tokens[-1]!r})",
                          xaxis_title="layer", height=380, width=800)
        return fig

    def figures(self) -> list:
        return [self.figure()] + ([self.target_figure()] if self.target is not None else [])

    def title(self) -> str:
        return f"Logit lens - {self.model}"

    def page_intro(self) -> str:
        return (f"Prompt: {self.prompt!r}. Each cell: the top-1 token when layer L's residual stream is read "
                f"through the final norm and unembedding; colour = its probability; hover for the "
                f"top-{len(self.top[0][0])}.")

    def summary(self, max_positions: int = 8) -> str:
        n_pos = len(self.tokens)
        cols = list(range(max(0, n_pos - max_positions), n_pos))
        width = 14
        lines = [f"logit lens | {self.model} | top-1 token (probability) per layer and position"]
        lines.append("layer  " + "".join(show_token(self.tokens[p], width - 1).ljust(width) for p in cols))
        for i, layer in enumerate(self.top):
            cells = "".join(f"{show_token(layer[p][0].token, 8)} {layer[p][0].prob:.2f}".ljust(width) for p in cols)
            lines.append(f"{i:>5}  {cells}")
        if self.target is not None:
            t = self.target
            lines.append(f"target {t.token!r} at the last position: rank " + " ".join(map(str, t.rank)))
            lines.append(f"  first layer where it is top-1: "
                         f"{next((i for i, r in enumerate(t.rank) if r == 1), 'never')}")
        return "\n".join(lines)


@torch.no_grad()
def logit_lens(model, prompt: str, *, target: str | None = None, top_k: int = 5) -> LensResult:
    """Top-k tokens per layer and position, and the rank and probability of `target` at the last position."""
    check_count("top_k", top_k)
    target_id = model.token_id(target) if target is not None else None
    run = model.run(prompt, read="resid_post.*")
    if run.input_ids.shape[0] != 1:
        raise InputError("logit_lens takes one prompt")
    top, ranks, probs = [], [], []
    for layer in range(model.n_layers):
        if layer == model.n_layers - 1:
            logits = run.logits[0]
        else:
            logits = model.unembed(run.acts[f"resid_post.{layer}"][0])
        p = torch.softmax(logits.float(), dim=-1)
        values, ids = p.topk(min(top_k, p.shape[-1]), dim=-1)
        top.append([[TopToken(model.tokenizer.decode([i]), i, round(v, 6))
                     for v, i in zip(vs.tolist(), row.tolist())] for vs, row in zip(values, ids)])
        if target_id is not None:
            last = logits[-1].float()
            ranks.append(int((last > last[target_id]).sum()) + 1)
            probs.append(round(float(p[-1, target_id]), 6))
    tokens = model.to_str_tokens(run.input_ids[0])
    trace = TargetTrace(target, target_id, ranks, probs) if target_id is not None else None
    return LensResult(model.spec, prompt, tokens, run.input_ids[0].tolist(), top, trace)
