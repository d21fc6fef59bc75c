"""The truth direction (Marks & Tegmark 2023, arXiv 2310.06824) and per-head truth probes as in ITI (Li et al. 2023,
arXiv 2306.03341).

Statements come from the bundled city -> country table (`data/cities.json`): for every city one true statement
"The city of X is in Y." and one false one, where Y is another country of the table drawn with a seed; so the set is
balanced, and a statement's truth cannot be read from the city alone. Cities are split (seeded) into train,
validation and test: no city, hence no statement pair, is in two splits.

Activations are read at one token per statement: by default the last, the final "." (`position=-1`); `position=-2`
is the last token of the country name.

Per layer (resid_post.L): a logistic-regression probe (lmscope.probes.fit_probe) fitted on train, accuracy on
validation and test; and the difference-of-means direction (mean true - mean false on train, the "mass-mean probe"),
classifying by the midpoint between the two class means projected on it, accuracy on test. The layer is chosen by
validation accuracy.

Per head (z.L[..., h, :], the head's output before the output projection): a probe per head, fitted on train and
RANKED by validation accuracy (ITI's selection); the top-K heads are reported with their TEST accuracy, which played
no part in the ranking.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmscope.core.checks import check_count, check_layers
from lmscope.core.config import option, with_overrides
from lmscope.core.errors import InputError
from lmscope.core.runs import activations_at
from lmscope.data.icl_tasks import load_cities
from lmscope.directions.probes import fit_probe
from lmscope.results.base import Result
from lmscope.results.html import table

TEMPLATE = "The city of {city} is in {country}."


@dataclass(frozen=True)
class Statement:
    text: str
    city: str
    country: str        # the country the statement claims
    label: bool         # True when the claim is right


def truth_statements(seed: int = 0) -> list[Statement]:
    """One true and one false statement per bundled city (false country drawn with `seed`)."""
    cities = load_cities()
    countries = sorted(set(cities.values()))
    rng = random.Random(seed)
    out = []
    for city, country in cities.items():
        wrong = rng.choice([c for c in countries if c != country])
        out.append(Statement(TEMPLATE.format(city=city, country=country), city, country, True))
        out.append(Statement(TEMPLATE.format(city=city, country=wrong), city, wrong, False))
    return out


def split_cities(cities: list[str], seed: int, val_fraction: float, test_fraction: float
                 ) -> tuple[set[str], set[str], set[str]]:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"validation and test fractions must be in (0, 1) with a sum below 1, got {val_fraction} "
                         f"and {test_fraction}")
    order = sorted(cities)
    random.Random(seed).shuffle(order)
    n_test, n_val = max(1, round(test_fraction * len(order))), max(1, round(val_fraction * len(order)))
    if len(order) - n_test - n_val < 2:
        raise InputError(f"{len(order)} cities are too few to split into train, validation and test")
    return set(order[n_test + n_val:]), set(order[n_test:n_test + n_val]), set(order[:n_test])


@dataclass
class TruthConfig:
    """The options of `truth_direction` (and of `lmscope truth`)."""
    layers: "list[int] | None" = option(None, "layers (None: every layer)")
    position: int = option(-1, "token read: -1 the final '.', -2 the last token of the country")
    top_k: int = option(10, "heads to report")
    heads: bool = option(True, "fit the per-head (ITI) probes")
    seed: int = option(0, "false countries and the city split")
    val_fraction: float = option(0.2, "share of the cities for validation (chooses the layer, ranks the heads)")
    test_fraction: float = option(0.2, "share of the cities for test (reported only)")
    batch_size: int = option(32, "statements per forward pass")


@dataclass
class TruthResult(Result, kind="truth_direction"):
    model: str
    position: int
    token: str                       # the token read, as in the first statement
    n_train: int                     # statements
    n_val: int
    n_test: int
    layers: list[int]
    probe_train: list[float]         # per layer
    probe_val: list[float]
    probe_test: list[float]
    dom_test: list[float]            # difference-of-means direction, midpoint threshold
    cosine: list[float]              # cos(probe direction, difference of means) per layer
    best_layer: int                  # by validation accuracy of the probe
    head_val: "list[list[float]] | None"    # [layer][head], ranks the heads (null: heads=False)
    head_test: "list[list[float]] | None"
    top_heads: list[list]            # [[layer, head, val_acc, test_acc], ...] best validation first
    seconds: float
    direction: "torch.Tensor | None" = None  # difference of means at best_layer, [d_model] float64
    config: "TruthConfig | None" = None

    @classmethod
    def from_json(cls, data: dict) -> "TruthResult":
        """The base reader, with the direction read back in float64 (as computed), not the default float32."""
        out = super().from_json(data)
        if data.get("direction") is not None:
            out.direction = torch.tensor(data["direction"], dtype=torch.float64)
        return out

    def json_extras(self) -> dict:
        return {"best_layer_test_acc": self.probe_test[self.layers.index(self.best_layer)]}

    def figure(self):
        fig = go.Figure()
        for name, ys, dash in (("probe: test", self.probe_test, None), ("probe: validation", self.probe_val, "dot"),
                               ("probe: train", self.probe_train, "dash"),
                               ("difference of means: test", self.dom_test, None)):
            fig.add_trace(go.Scatter(x=self.layers, y=ys, mode="lines+markers", name=name, line={"dash": dash}))
        fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
        fig.update_layout(title=f"Truth of 'The city of X is in Y.' read from resid_post.L at {self.token!r} "
                                f"({self.model})", xaxis_title="layer", yaxis_title="accuracy",
                          yaxis_range=[0.3, 1.02], width=900, height=500)
        return fig

    def heads_figure(self):
        fig = go.Figure(go.Heatmap(z=self.head_val, x=[f"head {h}" for h in range(len(self.head_val[0]))],
                                   y=[f"layer {la}" for la in self.layers], colorscale="Viridis", zmin=0.5,
                                   zmax=1, colorbar={"title": "val acc"}))
        fig.update_layout(title="Per-head truth probe (ITI): validation accuracy", width=700,
                          height=max(400, 18 * len(self.layers) + 150))
        return fig

    def figures(self) -> list:
        return [self.figure()] + ([self.heads_figure()] if self.head_val is not None else [])

    def title(self) -> str:
        return f"Truth direction - {self.model}"

    def page_intro(self) -> str:
        return self.summary()

    def page_body(self) -> str:
        return table(["layer", "head", "validation acc (ranks)", "test acc"],
                     [[la, h, f"{v:.3f}", f"{t:.3f}"] for la, h, v, t in self.top_heads])

    def summary(self) -> str:
        i = self.layers.index(self.best_layer)
        lines = [f"truth direction | {self.model} | 'The city of X is in Y.' at {self.token!r} (position "
                 f"{self.position}); statements: {self.n_train} train / {self.n_val} validation / {self.n_test} test "
                 f"(split by city)",
                 f"best layer by validation: {self.best_layer}: probe test {self.probe_test[i]:.3f}, "
                 f"difference-of-means test {self.dom_test[i]:.3f}",
                 "layer  probe test  DoM test  cos(probe, DoM)"]
        lines += [f"{la:5d}  {p:10.3f}  {d:8.3f}  {c:+.3f}" for la, p, d, c in
                  zip(self.layers, self.probe_test, self.dom_test, self.cosine)]
        if self.top_heads:
            lines.append("top heads (layer.head val/test): " + "  ".join(
                f"{la}.{h} {v:.2f}/{t:.2f}" for la, h, v, t in self.top_heads))
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _accuracy(scores: torch.Tensor, threshold: float, y: torch.Tensor) -> float:
    return float(((scores > threshold) == y).double().mean())


@torch.no_grad()
def truth_direction(model, config: "TruthConfig | None" = None, **overrides) -> TruthResult:
    """Per-layer truth probes and difference-of-means directions, and ITI per-head probes; see the module doc.
    `top_k` heads are reported (all of them when the layers have fewer). Options: a TruthConfig, or its fields as
    keyword overrides."""
    config = with_overrides(TruthConfig, config, overrides)
    layers, position, top_k, heads, seed = config.layers, config.position, config.top_k, config.heads, config.seed
    val_fraction, test_fraction, batch_size = config.val_fraction, config.test_fraction, config.batch_size
    start = time.perf_counter()
    layers = check_layers(model, layers)
    if heads:
        check_count("top_k", top_k)
    statements = truth_statements(seed)
    train, val, _ = split_cities(sorted({s.city for s in statements}), seed, val_fraction, test_fraction)
    part = torch.tensor([0 if s.city in train else 1 if s.city in val else 2 for s in statements])
    y = torch.tensor([s.label for s in statements])
    sites = [f"resid_post.{la}" for la in layers] + ([f"z.{la}" for la in layers] if heads else [])
    chunks: dict[str, list[torch.Tensor]] = {}
    for acts in activations_at(model, [s.text for s in statements], sites, position=position,
                               batch_size=batch_size):
        for site, a in acts.items():
            chunks.setdefault(site, []).append(a.cpu())
    acts = {site: torch.cat(c) for site, c in chunks.items()}
    ids = model.tokenizer(statements[0].text, add_special_tokens=True)["input_ids"]
    token = model.to_str_tokens([ids[position]])[0]
    tr, va, te = (part == 0), (part == 1), (part == 2)

    probe_train, probe_val, probe_test, dom_test, cosine, directions = [], [], [], [], [], []
    for la in layers:
        x = acts[f"resid_post.{la}"]
        probe = fit_probe(x[tr], y[tr], x[te], y[te])
        probe_train.append(probe.train_accuracy)
        probe_test.append(probe.test_accuracy)
        probe_val.append(float((probe.predict(x[va]) == y[va]).double().mean()))
        mu_t, mu_f = x[tr & y].mean(0), x[tr & ~y].mean(0)
        d = mu_t - mu_f
        dom_test.append(_accuracy(x[te] @ d, float((mu_t + mu_f) @ d) / 2, y[te]))
        cosine.append(float(probe.direction @ d / (probe.direction.norm() * d.norm()).clamp_min(1e-30)))
        directions.append(d)
    best = max(range(len(layers)), key=lambda i: (probe_val[i], -i))

    head_val = head_test = None
    top: list[list] = []
    if heads:
        head_val, head_test = [], []
        for la in layers:
            z = acts[f"z.{la}"]
            row_v, row_t = [], []
            for h in range(model.n_heads):
                p = fit_probe(z[tr, h], y[tr], z[te, h], y[te])
                row_v.append(float((p.predict(z[va, h]) == y[va]).double().mean()))
                row_t.append(p.test_accuracy)
            head_val.append(row_v)
            head_test.append(row_t)
        # best validation accuracy first; ties go to the earlier layer, then the lower head
        ranked = sorted(((-v, i, h) for i, row in enumerate(head_val) for h, v in enumerate(row)))
        top = [[layers[i], h, -v, head_test[i][h]] for v, i, h in ranked[:top_k]]
    return TruthResult(model.spec, position, token, int(tr.sum()), int(va.sum()), int(te.sum()), layers, probe_train,
                       probe_val, probe_test, dom_test, cosine, layers[best], head_val, head_test, top,
                       time.perf_counter() - start, directions[best], config)
