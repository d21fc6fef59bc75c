"""SAE features: open an SAE folder of the runs folder (lmscope.sae.load_sae), stream text through it
(lmscope.sae.feature_stats, a job), list its live features (searchable by top token, sortable by density), show
one feature's dashboard (FeatureStats.feature) and steer with it (lmscope.sae.steer)."""
from __future__ import annotations

from lmscope.lab import recipes, runs_index
from lmscope.lab.http import FieldError, blame, choice, integer, number, text
from lmscope.lab.views.neurons import corpora
from lmscope.results import to_plain
from lmscope.sae import feature_stats, load_sae
from lmscope.sae import sae_steer
from lmscope.sae.dashboard import density_figure, feature_histogram


def sae_list(state) -> list[dict]:
    return [e.to_json() for e in runs_index.scan(state.runs) if e.kind == "sae"]


def _overview(stats) -> list[dict]:
    tok = stats.model.tokenizer
    rows = []
    for i in stats.live():
        r, p = divmod(int(stats.top_where[i, 0]), stats.width)
        rows.append({"index": i, "density": float(stats.density[i]), "max": float(stats.top_values[i, 0]),
                     "top_token": tok.decode([stats.windows[r][p]])})
    return rows


def open_sae_job(state, data: dict):
    entry = runs_index.lookup(state.runs, data.get("id"), "sae", field="id")
    corpus = choice(data, "corpus", corpora(), default="wiki")
    n_tokens = integer(data, "n_tokens", 128, 1_000_000, default=8192)
    params = {"id": entry.id, "corpus": corpus, "n_tokens": n_tokens}

    def run(model):
        with blame("id"):
            sae = load_sae(entry.path, model=model)
        stats = feature_stats(model, sae, corpus, n_tokens=n_tokens, progress=False)
        state.sae[entry.id] = stats
        cfg = sae.cfg
        py = recipes.python(state.spec, ["from lmscope.sae import feature_stats, load_sae"], [
            f"sae = load_sae({str(entry.path)!r}, model=model)",
            f"stats = feature_stats(model, sae, {corpus!r}, n_tokens={n_tokens})",
            "print(stats.live()[:20])", "print(stats.feature(stats.live()[0]))"])
        cli = recipes.cli("sae", "features", str(entry.path), model=state.spec, corpus=corpus, tokens=n_tokens,
                          html="sae_pages")
        return recipes.payload({"sae": entry.to_json(), "architecture": cfg.architecture, "site": cfg.site_in,
                                "d_sae": cfg.d_sae, "n_tokens": stats.n_tokens, "texts": stats.texts,
                                "features": _overview(stats)}, [density_figure(stats)], py, cli)
    return params, run, f"SAE {entry.name}", n_tokens


def _stats(state, data: dict):
    sae_id = data.get("id")
    if not isinstance(sae_id, str) or sae_id not in state.sae:
        raise FieldError("id", "open this SAE first (its statistics are computed by the 'open' job)")
    return sae_id, state.sae[sae_id]


def sae_feature_view(state, data: dict) -> dict:
    sae_id, stats = _stats(state, data)
    index = integer(data, "index", 0, stats.sae.cfg.d_sae - 1)
    with blame("index"):
        f = stats.feature(index)
    entry = runs_index.lookup(state.runs, sae_id, "sae")
    py = recipes.python(state.spec, ["from lmscope.sae import feature_stats, load_sae"], [
        f"sae = load_sae({str(entry.path)!r}, model=model)",
        f"stats = feature_stats(model, sae, {stats.texts!r}, n_tokens={stats.n_tokens})",
        f"print(stats.feature({index}))"])
    cli = recipes.cli("sae", "features", str(entry.path), model=state.spec, latents=[index], html="sae_pages")
    return recipes.payload(to_plain(f), [feature_histogram(f)], py, cli)


def sae_steer_view(state, data: dict) -> dict:
    sae_id, stats = _stats(state, data)
    index = integer(data, "index", 0, stats.sae.cfg.d_sae - 1)
    prompt = text(data, "prompt")
    value = number(data, "value", -1000, 1000, default=5.0)
    mode = choice(data, "mode", ["add", "clamp"], default="add")
    max_new = integer(data, "max_new_tokens", 1, 100, default=12)
    with blame("prompt"):
        r = sae_steer(state.model, stats.sae, prompt, index, value, mode=mode, max_new_tokens=max_new)
    entry = runs_index.lookup(state.runs, sae_id, "sae")
    py = recipes.python(state.spec, ["from lmscope.sae import load_sae, sae_steer"], [
        f"sae = load_sae({str(entry.path)!r}, model=model)",
        f"print(sae_steer(model, sae, {prompt!r}, {index}, {value!r}, mode={mode!r}, max_new_tokens={max_new})"
        ".summary())"])
    cli = recipes.cli("sae", "steer", str(entry.path), prompt, model=state.spec, latent=index, value=value,
                      mode=mode, max_new_tokens=max_new)
    return recipes.payload(r.to_json(), [], py, cli)
