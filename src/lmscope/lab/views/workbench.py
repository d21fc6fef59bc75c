"""Prompt workbench: logit lens (lmscope.logit_lens), attention patterns (the model's `pattern.L` site) and direct
logit attribution (lmscope.lenses.dla)."""
from __future__ import annotations

from lmscope.lab import recipes
from lmscope.lab.http import FieldError, blame, choice, integer, layer, text
from lmscope.lenses import direct_logit_attribution, logit_lens


def lens_view(state, data: dict) -> dict:
    model = state.model
    prompt = text(data, "prompt")
    target = text(data, "target", required=False)
    top_k = integer(data, "top_k", 1, 20, default=5)
    if target is not None:
        with blame("target"):
            model.token_id(target)
    with blame("prompt"):
        r = logit_lens(model, prompt, target=target, top_k=top_k)
    figures = [r.figure()] + ([r.target_figure()] if r.target is not None else [])
    py = recipes.python(state.spec, [], [f"r = lmscope.logit_lens(model, {prompt!r}, target={target!r}, "
                                         f"top_k={top_k})", "print(r.summary())", "r.figure().show()"])
    return recipes.payload(r.to_json(), figures, py,
                           recipes.cli("lens", prompt, model=state.spec, target=target, top_k=top_k))


def attention_view(state, data: dict) -> dict:
    model = state.model
    prompt = text(data, "prompt")
    at = layer(data, model)
    with blame("prompt"):
        run = model.run(prompt, read=[f"pattern.{at}"])
    if run.input_ids.shape[0] != 1:
        raise FieldError("prompt", "one prompt at a time")
    pattern = run[f"pattern.{at}"][0].float()           # [heads, query, key]
    tokens = model.to_str_tokens(run.input_ids[0])
    result = {"model": state.spec, "prompt": prompt, "layer": at, "tokens": tokens, "n_heads": pattern.shape[0],
              "patterns": [[[round(v, 4) for v in row] for row in head] for head in pattern.tolist()]}
    py = recipes.python(state.spec, [], [f"run = model.run({prompt!r}, read=['pattern.{at}'])",
                                         f"pattern = run['pattern.{at}'][0]   # [heads, query, key]",
                                         "print(model.to_str_tokens(run.input_ids[0]))", "print(pattern[0])"])
    return recipes.payload(result, [], py, None)


def dla_view(state, data: dict) -> dict:
    model = state.model
    prompt = text(data, "prompt")
    target = text(data, "target")
    with blame("target"):
        model.token_id(target)
    n_tokens = len(model.encode(prompt)[0][0]) if prompt.strip() else 0
    position = integer(data, "position", -max(1, n_tokens), max(0, n_tokens - 1), default=-1,
                       what=f" (the prompt has {n_tokens} tokens)")
    heads = choice(data, "heads", ["auto", "off"], default="auto")
    with blame("prompt"):
        r = direct_logit_attribution(model, prompt, target, position=position,
                                     heads=None if heads == "auto" else False)
    figures = [r.figure()] + ([r.heads_figure()] if r.heads is not None else [])
    py = recipes.python(state.spec, ["from lmscope.lenses import direct_logit_attribution"],
                        [f"r = direct_logit_attribution(model, {prompt!r}, {target!r}, position={position}"
                         + (", heads=False" if heads == "off" else "") + ")", "print(r.summary())",
                         "r.figure().show()"])
    return recipes.payload(r.to_json(), figures, py,
                           recipes.cli("dla", prompt, model=state.spec, target=target, position=position))
