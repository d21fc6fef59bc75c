"""Linear relational embeddings (Hernandez et al. 2024, arXiv 2308.09124).

A relation is a template where {} stands for the subject ("The capital of {} is") and [subject, object] pairs. Each
prompt is few-shot: `n_demo` demonstrations "template(subject) object" (one per line) from the training pairs, then
the query "template(subject)". At layer l:

    s = resid_post.l at the query subject's last token       o = resid_post of the last layer at the last position
    W_i = d o / d s (the Jacobian, d_model x d_model, float32; d_model backward passes batched through a replace-edit
          whose value requires grad, the shared prefix before the subject run once and cached)
    b_i = o_i - W_i s_i          W, b = means over the training examples (float64)
    LRE(s) = beta * W s + b, decoded through the model's own final norm + unembedding (model.unembed)

Faithfulness: among held-out subjects the model gets right (its greedy next token is the first token of
' ' + object), the fraction where the LRE's top-1 token equals the model's top-1 token.
Causality: for held-out pairs (s, s') with different objects, replace s by s + W_r^+ (o' - o) (o, o': the model's
outputs for the two prompts; W_r^+: pseudo-inverse of W through its top-r singular vectors) and count how often the
edited model's top-1 is the first token of the other subject's object. The rank r is chosen per layer among
`ranks` on those same pairs (reported per rank too; the best is an optimistic choice).
"""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import plotly.graph_objects as go
import torch
from tqdm import tqdm

from lmscope.core import edits
from lmscope.core.checks import check_count, check_layers, check_numbers
from lmscope.core.config import option
from lmscope.core.errors import InputError
from lmscope.core.runs import prefix_cache
from lmscope.lenses.patchscope import configured
from lmscope.results import Result


@dataclass
class LreConfig:
    """The options of one LRE fit (also the CLI's flags and the `config` stored in the result)."""
    layers: "list[int] | None" = option(None, "layer(s) of s, comma-separated (None: every 3rd layer)",
                                        flag="--layer")
    betas: list[float] = option([1.0, 2.0, 4.0, 8.0], "scales of W s, comma-separated", flag="--beta")
    ranks: list[int] = option([32, 96, 256], "ranks of the pseudo-inverse for causality, comma-separated")
    n_train: int = option(5, "pairs to fit W and b on", flag="--train")
    n_demo: int = option(3, "few-shot demonstrations per prompt")
    seed: int = option(0, "train / test split")


@dataclass(frozen=True)
class Relation:
    name: str
    template: str
    pairs: tuple[tuple[str, str], ...]


def check_template(template) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(f"a relation template needs exactly one '{{}}' for the subject, got {template!r}")
    return template


def _check_pairs(pairs, what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for p in pairs:
        if (not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(x, str) and x.strip() for x in p)):
            raise InputError(f"{what}: each pair needs a non-empty subject and object, got {p!r}")
        out.append((p[0].strip(), p[1].strip()))
    if len(out) < 2:
        raise InputError(f"{what} has {len(out)} pair(s); a relation needs at least 2 (one to fit, one to test)")
    return tuple(out)


@cache
def _bundled() -> dict:
    return json.loads(resources.files("lmscope.data").joinpath("relations.json").read_text(encoding="utf-8"))


def relation_names() -> list[str]:
    return [k for k in _bundled() if not k.startswith("_")]


def load_relation(name: str) -> Relation:
    data = _bundled()
    if name not in relation_names():
        raise InputError(f"unknown relation {name!r}; bundled: {', '.join(relation_names())}")
    return Relation(name, check_template(data[name]["template"]), _check_pairs(data[name]["pairs"], name))


def relation_from_pairs(path, template: str, name: str | None = None) -> Relation:
    """A custom relation: a jsonl file of {"subject": ..., "object": ...} lines and a template with {}."""
    check_template(template)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such pairs file: {path}")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{n}: not JSON") from None
        if not isinstance(row, dict) or "subject" not in row or "object" not in row:
            raise InputError(f"{path}:{n}: each line needs \"subject\" and \"object\"")
        pairs.append((row["subject"], row["object"]))
    return Relation(name or path.stem, template, _check_pairs(pairs, str(path)))


def relation_prompt(model, relation: Relation, demos, subject: str) -> tuple[torch.Tensor, int]:
    """Few-shot prompt ids [1, seq] and the position of the query subject's last token."""
    context = "".join(f"{relation.template.format(s)} {o}\n" for s, o in demos)
    text = context + relation.template.format(subject)
    upto = len(context) + relation.template.index("{}") + len(subject)
    ids, _ = model.encode(text)
    prefix = model.tokenizer(text[:upto], add_special_tokens=True)["input_ids"]
    return ids, min(len(prefix), ids.shape[1]) - 1


def object_token(model, obj: str) -> int:
    """Objects are judged by the first token of ' ' + object."""
    return model.tokenizer(" " + obj, add_special_tokens=False)["input_ids"][0]


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def jacobian(model, ids: torch.Tensor, pos: int, layer: int, *, chunk: int = 192):
    """W = d o / d s at one prompt: s = resid_post.layer at `pos`, o = last layer's resid_post at the last position.
    Returns (W [d, d], s [d], o [d]) in float32. Row i of W is the gradient of o_i; `chunk` rows per backward."""
    last = model.n_layers - 1
    site_s, site_o = f"resid_post.{layer}", f"resid_post.{last}"
    run = model.run(ids, read=[site_s, site_o], stop_early=True)
    s, o = run.acts[site_s][0, pos], run.acts[site_o][0, -1]
    d = model.d_model
    prefix = None
    if pos > 0:  # the tokens before the subject do not depend on s: run them once, reuse their KV cache
        with torch.no_grad():
            prefix = prefix_cache(model, ids[:, :pos])
    rows = []
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    for start in range(0, d, chunk):
        n = min(chunk, d - start)
        kwargs = {}
        if prefix is not None:
            cache_n = copy.deepcopy(prefix)
            cache_n.batch_repeat_interleave(n)
            kwargs[_cache_kwarg(model)] = cache_n
        value = s.detach().expand(n, d).clone().requires_grad_(True)
        edit = edits.replace(site_s, value[:, None], positions=[pos])
        with torch.enable_grad(), model.trace(read=[site_o], edits=[edit], grad=True, stop_early=True) as tr:
            model.hf(input_ids=(ids[:, pos:] if prefix is not None else ids).expand(n, -1),
                     use_cache=prefix is not None, **kwargs)
        out = tr[site_o][:, -1]
        (g,) = torch.autograd.grad(out, value, eye[start:start + n])
        rows.append(g.float())
    return torch.cat(rows), s.detach().float(), o.detach().float()


@dataclass
class LayerFit:
    layer: int
    faithfulness: dict[str, float]      # beta -> fraction
    causality: dict[str, float]         # rank -> fraction
    best_rank: int


@dataclass
class LreResult(Result, kind="lre"):
    model: str
    relation: str
    template: str
    layer: int
    beta: float
    faithfulness: float
    causality: float
    rank: int
    n_test: int
    n_train: int
    n_pairs: int
    n_causal_pairs: int
    train: list[str]
    layers: list[LayerFit] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)   # subject, object, model top-1, LRE top-1 (best layer, beta)
    config: LreConfig = field(default_factory=LreConfig)

    def title(self) -> str:
        return f"LRE - {self.relation}"

    def page_intro(self) -> str:
        return self.summary()

    def summary(self) -> str:
        lines = [f"LRE | {self.model} | {self.relation}: {self.template!r} | {self.n_pairs} pairs, "
                 f"{self.n_train} to fit, {self.n_test} held-out subjects the model gets right",
                 f"best layer {self.layer}, beta {self.beta:g}: faithfulness {self.faithfulness:.1%} "
                 f"({self.n_test} subjects), causality {self.causality:.1%} at rank {self.rank} "
                 f"({self.n_causal_pairs} pairs)"]
        if self.layers:
            betas = list(self.layers[0].faithfulness)
            ranks = list(self.layers[0].causality)
            lines.append("layer  " + "".join(f"faith b={b:<4}" for b in betas) + "".join(
                f"caus r={r:<5}" for r in ranks))
            for f in self.layers:
                lines.append(f"{f.layer:>5}  " + "".join(f"{v:>10.1%}  " for v in f.faithfulness.values())
                             + "".join(f"{v:>10.1%}  " for v in f.causality.values()))
        return "\n".join(lines)

    def figure(self):
        fig = go.Figure()
        layers = [f.layer for f in self.layers]
        for b in (self.layers[0].faithfulness if self.layers else {}):
            fig.add_trace(go.Scatter(x=layers, y=[f.faithfulness[b] for f in self.layers],
                                     name=f"faithfulness, beta={b}", mode="lines+markers"))
        fig.add_trace(go.Scatter(x=layers, y=[max(f.causality.values()) for f in self.layers],
                                 name="causality (best rank)", mode="lines+markers", line_dash="dot"))
        fig.update_layout(title=f"Linear relational embedding: {self.relation} ({self.model})",
                          xaxis_title="layer of s", yaxis={"range": [0, 1], "title": "fraction of held-out subjects"},
                          height=420, width=800)
        return fig


def _top1(model, resid: torch.Tensor) -> torch.Tensor:
    return model.unembed(resid.to(model.dtype)).argmax(-1)


@torch.no_grad()
def _outputs(model, prompts, layer: int, edit_values=None):
    """Per prompt (ids, pos): s at `layer`, o (last layer, last position), model top-1; optional replace of s."""
    last = model.n_layers - 1
    out = []
    for i, (ids, pos) in enumerate(prompts):
        ed = [] if edit_values is None else [edits.replace(f"resid_post.{layer}", edit_values[i].to(model.dtype),
                                                            positions=[pos])]
        run = model.run(ids, read=[f"resid_post.{layer}", f"resid_post.{last}"], edits=ed,
                        forward_kwargs={"logits_to_keep": 1})
        out.append((run.acts[f"resid_post.{layer}"][0, pos].float(), run.acts[f"resid_post.{last}"][0, -1].float(),
                    int(run.logits[0, -1].argmax())))
    return out


def lre(model, relation: Relation, config: LreConfig | None = None, *, progress: bool = False,
        **overrides) -> LreResult:
    """Fit an LRE per layer on `n_train` pairs, measure faithfulness (per beta) and causality (per rank) on the
    held-out subjects the model gets right; the best layer and beta are those of the highest faithfulness.
    `config` holds the options (LreConfig); keyword arguments override its fields (e.g. layers=[6], n_train=4)."""
    if not isinstance(relation, Relation):
        raise InputError("give a Relation (load_relation(name) or relation_from_pairs(path, template))")
    config = configured(LreConfig, config, overrides)
    n_train, n_demo, seed = config.n_train, config.n_demo, config.seed
    check_count("n_train", n_train)
    check_count("n_demo", n_demo, minimum=0)
    layers = (list(range(0, model.n_layers - 1, 3)) if config.layers is None
              else check_layers(model, config.layers, what="layers"))
    betas = check_numbers("betas", config.betas)
    ranks = [min(check_count("ranks", r), model.d_model) for r in list(config.ranks) or [0]]
    pairs = list(relation.pairs)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    pairs = [pairs[i] for i in order]
    k = min(n_train, len(pairs) - 1)
    train, held = pairs[:k], pairs[k:]
    demos_for = lambda subj: [p for p in train if p[0] != subj][:n_demo]  # noqa: E731
    prompt = {s: relation_prompt(model, relation, demos_for(s), s) for s, _ in pairs}
    target = {s: object_token(model, o) for s, o in pairs}
    base = _outputs(model, [prompt[s] for s, _ in pairs], layers[0])
    known = {s for (s, _), (_, _, top) in zip(pairs, base) if top == target[s]}
    fit = [p for p in train if p[0] in known]
    fit = fit if len(fit) >= 2 else train      # fit on pairs the model knows, where there are at least two
    test = [p for p in held if p[0] in known]
    # causal pairs: each test subject is sent to the next one with a different object token
    cpairs = []
    for i, (s, _) in enumerate(test):
        for j in list(range(i + 1, len(test))) + list(range(i)):
            if target[test[j][0]] != target[s]:
                cpairs.append((i, j))
                break
    fits, per_test = [], {}
    iterator = layers
    if progress:
        iterator = tqdm(layers, desc=f"LRE {relation.name}", unit="layer")
    for layer in iterator:
        W = torch.zeros(model.d_model, model.d_model, dtype=torch.float64)
        b = torch.zeros(model.d_model, dtype=torch.float64)
        for s_name, _ in fit:
            ids, pos = prompt[s_name]
            J, s, o = jacobian(model, ids, pos, layer)
            W += J.double()
            b += o.double() - J.double() @ s.double()
        W, b = (W / len(fit)).float(), (b / len(fit)).float()
        outs = _outputs(model, [prompt[s] for s, _ in test], layer) if test else []
        faith, preds = {}, {}
        for beta in betas:
            if not test:
                faith[f"{beta:g}"] = 0.0
                continue
            S = torch.stack([x[0] for x in outs])
            lre_top = _top1(model, beta * S @ W.T + b).tolist()
            preds[beta] = lre_top
            faith[f"{beta:g}"] = sum(a == x[2] for a, x in zip(lre_top, outs)) / len(test)
        caus = {}
        if cpairs:
            U, sig, Vh = torch.linalg.svd(W.double())
            for r in ranks:
                pinv = Vh[:r].T @ torch.diag(1 / sig[:r]) @ U[:, :r].T
                new = [outs[i][0] + (pinv @ (outs[j][1] - outs[i][1]).double()).float() for i, j in cpairs]
                edited = _outputs(model, [prompt[test[i][0]] for i, _ in cpairs], layer, new)
                caus[str(r)] = sum(e[2] == target[test[j][0]] for e, (_, j) in zip(edited, cpairs)) / len(cpairs)
        else:
            caus = {str(r): 0.0 for r in ranks}
        best_rank = int(max(caus, key=lambda r: (caus[r], -int(r))))
        fits.append(LayerFit(layer, faith, caus, best_rank))
        per_test[layer] = (outs, preds)
    best = max(((f, bt) for f in fits for bt in betas),
               key=lambda fb: (fb[0].faithfulness[f"{fb[1]:g}"], -fb[0].layer, -fb[1]))
    f, beta = best
    outs, preds = per_test[f.layer]
    rows = [{"subject": s, "object": o, "model_top1": model.tokenizer.decode([x[2]]),
             "lre_top1": model.tokenizer.decode([preds[beta][i]]) if preds else None}
            for i, ((s, o), x) in enumerate(zip(test, outs))]
    return LreResult(model.spec, relation.name, relation.template, f.layer, beta, f.faithfulness[f"{beta:g}"],
                     f.causality[str(f.best_rank)], f.best_rank, len(test), len(fit), len(pairs), len(cpairs),
                     [s for s, _ in fit], fits, rows, config)
