"""Papers: concept injection (Lindsey 2025; lmscope.introspection.introspect) with injected, control and
random-direction transcripts side by side, and the in-context learning rank-1 update check (Dherin et al. 2025;
lmscope.icl_dynamics.icl_update). Both are jobs."""
from __future__ import annotations

from lmscope.lab import recipes
from lmscope.lab.http import FieldError, integer, text
from lmscope.papers.icl_update.dynamics import icl_update
from lmscope.papers.introspection.injection import introspect


def _numbers(data: dict, name: str, kind, lo, hi, default: str) -> list:
    raw = data.get(name) or default
    if not isinstance(raw, str):
        raise FieldError(name, f"{name}: comma-separated numbers")
    try:
        values = [kind(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise FieldError(name, f"{name}: comma-separated numbers, got {raw!r}") from None
    if not values or len(values) > 12 or any(not lo <= v <= hi for v in values):
        raise FieldError(name, f"{name}: 1 to 12 numbers in {lo}..{hi}")
    return values


def introspect_job(state, data: dict):
    model = state.model
    words = text(data, "concepts", required=False, default="2", strip=True)
    concepts = int(words) if words.isdigit() else [w.strip() for w in words.split(",") if w.strip()]
    if isinstance(concepts, int) and not 2 <= concepts <= 60:
        raise FieldError("concepts", "concepts: a count 2..60 or comma-separated words")
    default_layers = ",".join(str(x) for x in sorted({model.n_layers // 4, model.n_layers // 2}))
    layers = _numbers(data, "layers", int, 0, model.n_layers - 1, default_layers)
    strengths = _numbers(data, "strengths", float, 0.0, 16.0, "0.25,0.5")
    max_new = integer(data, "max_new_tokens", 1, 100, default=16)
    params = {"concepts": concepts, "layers": layers, "strengths": strengths, "max_new_tokens": max_new}

    def run(model):
        r = introspect(model, concepts=concepts, layers=layers, strengths=strengths, max_new_tokens=max_new)
        py = recipes.python(state.spec, ["from lmscope.papers.introspection.injection import introspect"], [
            f"r = introspect(model, concepts={concepts!r}, layers={layers!r}, strengths={strengths!r}, "
            f"max_new_tokens={max_new})", "print(r.summary())", "r.figure().show()"])
        cli = recipes.cli("introspect", model=state.spec,
                          concepts=concepts if isinstance(concepts, int) else ",".join(concepts),
                          layers=layers, strengths=strengths, max_new_tokens=max_new)
        return recipes.payload(r.to_json(), [r.figure()], py, cli)
    n_trials = (concepts if isinstance(concepts, int) else len(concepts)) * len(layers) * len(strengths)
    return params, run, "concept injection", None if n_trials < 0 else n_trials * 3 * (200 + max_new)


def icl_job(state, data: dict):
    prompt = text(data, "prompt")
    orders = integer(data, "orders", 1, 8, default=2)
    params = {"prompt": prompt, "orders": orders}

    def run(model):
        r = icl_update(model, prompt, n_orders=orders)
        py = recipes.python(state.spec, ["from lmscope.papers.icl_update.dynamics import icl_update"], [
            f"r = icl_update(model, {prompt!r}, n_orders={orders})", "print(r.summary())", "r.figure().show()"])
        cli = recipes.cli("icl-update", model=state.spec, dtype=str(model.dtype).replace("torch.", ""),
                          prompt=prompt, orders=orders)
        return recipes.payload(r.to_json(), [r.figure(), r.token_figure(), r.layer_figure()], py, cli)
    return params, run, "ICL rank-1 update", None
