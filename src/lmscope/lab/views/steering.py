"""Steering playground: a direction from a bundled contrast set (lmscope.directions.contrast, difference of means
at one layer) or a saved vector file (lmscope.vector_files), generations with and without the edit side by side
(lmscope.steering.steer) and the KL cost of the edit on the prompt's own tokens (lmscope.steering_eval.kl_cost)."""
from __future__ import annotations

from lmscope.core.runs import prompt_rows
from lmscope.data.contrast import SETS, load_contrast
from lmscope.directions import contrast, kl_cost, load_vector, steer
from lmscope.directions.steering import edits_for_length, scaled
from lmscope.lab import recipes, runs_index
from lmscope.lab.http import FieldError, blame, choice, integer, layer, number, text


def contrast_sets() -> list[str]:
    return sorted(SETS)


def _direction(state, data: dict):
    """(direction, how it was made: for the recipes)."""
    model = state.model
    vector_id = data.get("vector")
    if vector_id:
        entry = runs_index.lookup(state.runs, vector_id, "vector", field="vector")
        with blame("vector"):
            d = load_vector(entry.path, model)
        return d, {"vector": str(entry.path)}
    name = choice(data, "set", contrast_sets())
    at = layer(data, model)
    key = (name, at)
    if key not in state.directions:
        s = load_contrast(name)
        c = contrast(model, s.positive, s.negative, layers=[at], probe=False)
        state.directions[key] = c.direction(at, -1, dtype=model.dtype)
    return state.directions[key], {"set": name, "layer": at}


def steering_view(state, data: dict) -> dict:
    model = state.model
    prompt = text(data, "prompt")
    mode = choice(data, "mode", ["add", "ablate"], default="add")
    coef = number(data, "coef", -20, 20, default=0.5)
    max_new = integer(data, "max_new_tokens", 1, 200, default=20)
    d, source = _direction(state, data)
    with blame("prompt"):
        r = steer(model, [prompt], d, coefs=[0.0, coef], mode=mode, max_new_tokens=max_new)
        rows = prompt_rows(model, [prompt])
    used = 1.0 if mode == "ablate" else coef
    edits = edits_for_length(model, scaled(d, "resid"), mode, used, None, "all")(len(rows[0]))
    kl = kl_cost(model, edits, rows) if edits else 0.0
    result = r.to_json()
    result.update({"baseline": r.texts[0][0], "steered": r.texts[-1][0], "kl_prompt": kl,
                   "direction": d.to_json(), "source": source})
    make = (f"d = load_vector({source['vector']!r}, model)" if "vector" in source else
            f"s = load_contrast({source['set']!r})\n"
            f"d = contrast(model, s.positive, s.negative, layers=[{source['layer']}], probe=False)"
            f".direction({source['layer']}, -1, dtype=model.dtype)")
    imports = (["from lmscope.directions import load_vector"] if "vector" in source else
               ["from lmscope.data import load_contrast", "from lmscope.directions import contrast"])
    py = recipes.python(state.spec, imports + ["from lmscope.directions import steer"], [
        make, f"r = steer(model, [{prompt!r}], d, coefs=[0.0, {coef!r}], mode={mode!r}, max_new_tokens={max_new})",
        "print(r.summary())"])
    cli = recipes.cli("steer", prompt, model=state.spec, vector=source.get("vector"), set=source.get("set"),
                      layer=source.get("layer"), mode=mode, coefs=[0, coef], max_new_tokens=max_new)
    return recipes.payload(result, [], py, cli)


def check_source(state, data: dict) -> None:
    if not data.get("vector") and not data.get("set"):
        raise FieldError("set", "choose a contrast set or a vector file")
