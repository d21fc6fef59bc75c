"""Feature dashboards: one self-contained HTML page per latent (top contexts with each token shaded by the latent's
activation, density, activation histogram, logit effect) and an index page that links them."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from lmscope.core.errors import InputError
from lmscope.results.base import Result
from lmscope.results.html import table, write_page
from lmscope.results.output import check_output
from lmscope.sae.features import Feature, FeatureStats


@dataclass
class DashboardResult(Result, kind="sae_features"):
    folder: str
    index: str
    latents: list[int]
    features: list[Feature]
    n_tokens: int
    texts: str
    held_out: bool

    def summary(self) -> str:
        lines = [f"{len(self.latents)} feature pages in {self.folder} (index {self.index}); statistics over "
                 f"{self.n_tokens} tokens of {self.texts}" + (" (held out)" if self.held_out else "")]
        for f in self.features:
            tops = " | ".join(_plain(c) for c in f.contexts[:3])
            lines.append(f"  latent {f.index:5d} density {f.density:.2%} max {f.max:.2f}  promotes "
                         f"{', '.join(repr(t) for t, _ in f.promoted[:4])}\n      {tops}")
        return "\n".join(lines)

    def figures(self) -> list:
        return []

    def page_body(self) -> str:
        return (f"<p>The feature pages are in {html.escape(self.folder)}: "
                f"<a href='{html.escape(self.index)}'>index</a></p>")


def _plain(c) -> str:
    text = "".join(t if i != c.centre else f"[[{t}]]" for i, t in enumerate(c.tokens))
    return text.replace("\n", " ")[-70:]


def _shade(tokens, acts, centre, vmax) -> str:
    spans = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if vmax <= 0 else max(0.0, min(1.0, a / vmax))
        border = "border-bottom:2px solid #c0392b;" if i == centre else ""
        title = f"{a:.3f}"
        spans.append(f"<span title='{title}' style='background:rgba(230,126,34,{alpha:.2f});{border}'>"
                     f"{html.escape(t).replace(chr(10), '&#x21B5;')}</span>")
    return "".join(spans)


def feature_histogram(feature: Feature):
    """The activation histogram of one latent (what its dashboard page shows)."""
    edges = feature.histogram["log10_edges"]
    counts = feature.histogram["counts"]
    labels = [f"<1e{edges[0]:g}"] + [f"{10 ** e:.3g}" for e in edges]
    used = [i for i, c in enumerate(counts) if c]
    if used:                       # the bins the latent reaches, one empty bin either side: bars wide enough to read
        lo, hi = max(0, used[0] - 1), min(len(counts), used[-1] + 2)
        labels, counts = labels[lo:hi], counts[lo:hi]
    fig = go.Figure(go.Bar(x=labels, y=counts))
    fig.update_layout(title=f"Activation histogram of latent {feature.index} (firing tokens; bins of log10 "
                            f"activation, lower edges)", xaxis_title="activation (normalised units)",
                      yaxis_title="tokens", height=320, width=900)
    return fig


def write_feature_page(path, feature: Feature, stats: FeatureStats) -> Path:
    vmax = feature.max
    rows = "".join(f"<tr><td>{c.value:.3f}</td><td style='font-family:monospace;white-space:pre-wrap'>"
                   f"{_shade(c.tokens, c.acts, c.centre, vmax)}</td></tr>" for c in feature.contexts)
    contexts = (f"<h3>Top activating contexts</h3><table border='1' style='border-collapse:collapse;"
                f"font-size:90%'><tr><th>max</th><th>context (shade = activation; underlined: the top token)"
                f"</th></tr>{rows}</table>")
    effect = ("<h3>Logit effect</h3><p>Decoder direction times the final norm's gain, through W_U (the 1/rms "
              "factor is left out: a ranking, not a logit change).</p><div style='display:flex;gap:2em'>"
              + table(["promoted", "effect"], [[repr(t), v] for t, v in feature.promoted])
              + table(["suppressed", "effect"], [[repr(t), v] for t, v in feature.suppressed]) + "</div>")
    intro = (f"{stats.sae.cfg.architecture} SAE at {stats.sae.cfg.site_in} of {stats.model.spec}. Fires on "
             f"{feature.density:.3%} of {stats.n_tokens} tokens of {stats.texts}"
             f"{' (held out)' if stats.held_out else ''}; mean activation when firing {feature.mean_active:.3f}, "
             f"max {feature.max:.3f}.")
    body = "<p><a href='index.html'>index</a></p>" + contexts + effect
    return write_page(path, [feature_histogram(feature)], f"Latent {feature.index}", intro, body)


def write_dashboards(stats: FeatureStats, folder, latents: list[int], *, overwrite: bool = False,
                     progress: bool = False) -> DashboardResult:
    """index.html + feature_<i>.html in `folder`, which must be new or empty unless overwrite=True (the output rule,
    lmscope.results.output; with overwrite the pages are replaced, other files in the folder are left)."""
    folder = check_output(folder, overwrite=overwrite, folder=True, what="dashboard folder")
    if not latents:
        raise InputError("no latent to show")
    features = stats.features(list(latents))   # computed before the folder is made: errors leave no trace
    folder.mkdir(exist_ok=True)
    for f in features:
        write_feature_page(folder / f"feature_{f.index}.html", f, stats)
    rows = "".join(
        f"<tr><td><a href='feature_{f.index}.html'>{f.index}</a></td><td>{f.density:.3%}</td><td>{f.max:.3f}</td>"
        f"<td>{html.escape(', '.join(repr(t) for t, _ in f.promoted[:5]))}</td>"
        f"<td style='font-family:monospace'>{html.escape(_plain(f.contexts[0])) if f.contexts else ''}</td></tr>"
        for f in features)
    index_table = (f"<table border='1' style='border-collapse:collapse;font-size:90%'><tr><th>latent</th>"
                   f"<th>density</th><th>max</th><th>promotes</th><th>top context</th></tr>{rows}</table>")
    density = density_figure(stats)
    cfg = stats.sae.cfg
    index = write_page(folder / "index.html", [density], f"SAE features - {cfg.site_in} of {stats.model.spec}",
                       f"{cfg.architecture} SAE, d_sae {cfg.d_sae}; statistics over {stats.n_tokens} tokens of "
                       f"{stats.texts}{' (held out)' if stats.held_out else ''}; {len(stats.live())} latents fire "
                       f"at least once.", index_table)
    return DashboardResult(str(folder), str(index), list(latents), features, stats.n_tokens, stats.texts,
                           stats.held_out)


def density_figure(stats: FeatureStats):
    """Firing density of the live latents (what the dashboards' index page shows)."""
    dens = [math.log10(d) for d in stats.density.tolist() if d > 0]
    fig = go.Figure(go.Histogram(x=dens, nbinsx=50))
    fig.update_layout(title="Latent firing density (live latents)", xaxis_title="log10(fraction of tokens)",
                      yaxis_title="latents", height=360, width=900)
    return fig
