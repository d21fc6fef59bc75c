"""One neuron, the lecture's three steps: when does it fire (correlation), what happens when it is removed
(causation), what happens as it is turned up and down (quantification); and is it polysemantic?"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import asdict, dataclass

import plotly.graph_objects as go

from lmscope.core.errors import InputError
from lmscope.neurons.intervene import NEXT, NeuronDoseResponse, neuron_dose_response, neuron_effects
from lmscope.neurons.observe import TopContext, record_neurons
from lmscope.results import Result


@dataclass
class NeuronProfile(Result, kind="neuron_profile"):
    model: str
    corpus: str
    n_tokens: int
    layer: int
    index: int
    stats: dict
    histogram: dict                 # {"edges": [...], "counts": [...]}
    top_contexts: list[TopContext]
    ablation: dict                  # zero ablation at the top contexts
    mean_ablation: dict             # mean ablation at the top contexts
    dose_response: NeuronDoseResponse

    def groups(self) -> dict:
        """Polysemanticity at a glance: top contexts grouped by the token fired on and by document (topic)."""
        by_token = Counter(c.token.strip().lower() or repr(c.token) for c in self.top_contexts)
        by_doc = Counter(c.doc_id for c in self.top_contexts)
        return {"by_token": by_token.most_common(), "by_document": by_doc.most_common(),
                "distinct_tokens": len(by_token), "distinct_documents": len(by_doc)}

    def json_extras(self) -> dict:
        return {"groups": self.groups()}

    def title(self) -> str:
        return f"Neuron {self.layer}.{self.index}"

    def summary(self) -> str:
        s, g = self.stats, self.groups()
        lines = [f"neuron {self.layer}.{self.index} | {self.model} | {self.n_tokens} tokens of {self.corpus}",
                 f"mean {s['mean']:.4f}  std {s['std']:.4f}  active (>0) {s['frac_active']:.1%}  "
                 f"max {s['max']:.3f}  min {s['min']:.3f}",
                 f"top contexts ({g['distinct_tokens']} distinct tokens in {g['distinct_documents']} documents):"]
        for c in self.top_contexts[:10]:
            left, right = c.left.replace("\n", " ")[-40:], c.right.replace("\n", " ")[:25]
            lines.append(f"  {c.value:7.3f}  {left}[[{c.token}]]{right}")
        lines.append("fires on: " + ", ".join(f"{t!r} x{n}" for t, n in g["by_token"][:8]))
        a = self.ablation
        lines.append(f"zero ablation at these contexts: mean KL {a['mean_kl']:.4g}, argmax flips "
                     f"{a['argmax_flip_fraction']:.0%}; rises: "
                     + ", ".join(repr(t["token"]) for t in a["top_up"][:5]) + "; falls: "
                     + ", ".join(repr(t["token"]) for t in a["top_down"][:5]))
        ps = self.dose_response.probs[NEXT]
        lines.append("p(actual next token) by scale factor: "
                     + "  ".join(f"x{f:g}: {p:.3f}" for f, p in zip(self.dose_response.factors, ps)))
        return "\n".join(lines)

    def figures(self):
        edges, counts = self.histogram["edges"], self.histogram["counts"]
        used = [i for i, c in enumerate(counts) if c]  # the bins are shared by the layer: show this neuron's range
        edges, counts = edges[used[0]: used[-1] + 2], counts[used[0]: used[-1] + 1]
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        hist = go.Figure(go.Bar(x=centres, y=counts, width=[b - a for a, b in zip(edges, edges[1:])]))
        hist.update_yaxes(type="log", title_text="tokens")
        hist.update_layout(title=f"Activation histogram over {self.n_tokens} tokens (end bins hold the overflow)",
                           xaxis_title="activation", height=360, width=760)
        return [hist, self.dose_response.figure()]

    def page_body(self) -> str:
        rows = []
        for c in self.top_contexts:
            rows.append(f"<tr><td>{c.value:.3f}</td><td style='font-family:monospace'>{html.escape(c.left)}"
                        f"<mark><b>{html.escape(c.token)}</b></mark>{html.escape(c.right)}</td>"
                        f"<td>{html.escape(c.doc_id)}:{c.position}</td></tr>")
        g = self.groups()
        groups = ", ".join(f"{html.escape(repr(t))} &times;{n}" for t, n in g["by_token"])
        docs = ", ".join(f"{html.escape(d)} &times;{n}" for d, n in g["by_document"][:15])
        a = self.ablation
        return (f"<h3>Top contexts</h3><p>Fires on {g['distinct_tokens']} distinct tokens: {groups}</p>"
                f"<p>In {g['distinct_documents']} documents: {docs}</p>"
                f"<table border=1 cellpadding=3 style='border-collapse:collapse'><tr><th>value</th><th>context"
                f"</th><th>document:position</th></tr>{''.join(rows)}</table>"
                f"<h3>Removing it</h3><p>Zero ablation at these contexts: mean KL {a['mean_kl']:.4g} nats, argmax "
                f"flips on {a['argmax_flip_fraction']:.0%}. Rises most: "
                + html.escape(", ".join(f"{t['token']!r} {t['delta_prob']:+.4f}" for t in a["top_up"][:8]))
                + ". Falls most: "
                + html.escape(", ".join(f"{t['token']!r} {t['delta_prob']:+.4f}" for t in a["top_down"][:8]))
                + f". Mean ablation: mean KL {self.mean_ablation['mean_kl']:.4g}.</p>")

    def page_intro(self) -> str:
        s = self.stats
        return (f"{self.model}, {self.n_tokens} tokens of {self.corpus}. mean {s['mean']:.4f}, std "
                f"{s['std']:.4f}, active (>0) {s['frac_active']:.1%}, max {s['max']:.3f}.")


def profile_neuron(model, layer: int, index: int, corpus="wiki", *, n_tokens: int = 100_000, k: int = 20,
                   factors=(-2, -1, 0, 0.5, 1, 2, 4, 8), seed: int = 0, progress: bool = True) -> NeuronProfile:
    """Record the layer over `n_tokens` of `corpus`, then ablate and scale the neuron at its top contexts
    (each context: the text up to and including the token it fired on, as far back as the record keeps)."""
    site = model.site(f"neurons.{layer}")
    layer = site.layer
    if not isinstance(index, int) or not 0 <= index < model.d_mlp:
        raise InputError(f"neuron {index!r} out of range: layer {layer} has {model.d_mlp} neurons "
                         f"(0..{model.d_mlp - 1})")
    records = record_neurons(model, [layer], corpus, n_tokens=n_tokens, k=k, seed=seed, progress=progress)
    contexts = records.top_contexts(layer, index)
    prompts = [c.context_ids for c in contexts]
    zero = neuron_effects(model, layer, index, prompts, "zero")
    mean = neuron_effects(model, layer, index, prompts, "mean", mean=records.mean(layer))
    keep = [i for i, c in enumerate(contexts) if c.next_token_id >= 0]
    dose = neuron_dose_response(model, layer, index, [prompts[i] for i in keep], factors=factors,
                         next_tokens=[contexts[i].next_token_id for i in keep])
    edges, counts = records.histogram(layer, index)
    brief = lambda r: {"mean_kl": r.mean_kl, "argmax_flip_fraction": r.argmax_flip_fraction,  # noqa: E731
                       "top_up": [asdict(t) for t in r.top_up], "top_down": [asdict(t) for t in r.top_down]}
    return NeuronProfile(model.spec, records.corpus, records.n_tokens, layer, index, records.stats(layer, index),
                         {"edges": edges, "counts": counts}, contexts, brief(zero), brief(mean), dose)
