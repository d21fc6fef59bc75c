"""Neuron view: one MLP neuron profiled over a corpus (lmscope.neurons.profile_neuron): statistics, top contexts
with the firing token highlighted, zero and mean ablation at those contexts, dose-response. A background job."""
from __future__ import annotations

from lmscope.data.corpora import CORPORA
from lmscope.lab import recipes
from lmscope.lab.http import choice, integer, layer
from lmscope.neurons import profile_neuron


def corpora() -> list[str]:
    return sorted(CORPORA)


def neuron_job(state, data: dict):
    model = state.model
    at = layer(data, model)
    index = integer(data, "index", 0, model.d_mlp - 1, what=f" (layer {at} has {model.d_mlp} neurons)")
    corpus = choice(data, "corpus", corpora(), default="wiki")
    n_tokens = integer(data, "n_tokens", 256, 2_000_000, default=20_000)
    k = integer(data, "top_k", 1, 100, default=20)
    params = {"layer": at, "index": index, "corpus": corpus, "n_tokens": n_tokens, "top_k": k}

    def run(model):
        p = profile_neuron(model, at, index, corpus, n_tokens=n_tokens, k=k, progress=False)
        result = p.to_json()
        py = recipes.python(state.spec, ["from lmscope.neurons import profile_neuron"], [
            f"p = profile_neuron(model, {at}, {index}, {corpus!r}, n_tokens={n_tokens}, k={k})",
            "print(p.summary())", "for fig in p.figures():", "    fig.show()"])
        cli = recipes.cli("neuron", at, index, model=state.spec, corpus=corpus, tokens=n_tokens, top_k=k)
        return recipes.payload(result, p.figures(), py, cli)
    return params, run, f"neuron {at}.{index}", int(n_tokens * 1.15)
