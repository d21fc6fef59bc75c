"""Linear relational embeddings (Hernandez et al. 2024, arXiv 2308.09124).

A relation is a template where {} stands for the subject ("The capital of {} is") and [subject, object] pairs. Each
prompt is few-shot: `n_demo` demonstrations "template(subject) object" (one per line) from the training pairs, then
the query "template(subject)". At layer l:

    s = resid_post.l at the query subject's last token       o = resid_post of the last layer at the last position
    W_i = d o / d s (the Jacobian, d_model x d_model, float32)
    b_i = o_i - W_i s_i          W, b = means over the training examples (float64)
    LRE(s) = beta * W s + b, decoded through the model's own final norm + unembedding (model.unembed)

Faithfulness: among held-out subjects the model gets right (its greedy next token is the first token of
' ' + object), the fraction where the LRE's top-1 token equals the model's top-1 token.
Causality: for held-out pairs (s, s') with different objects, replace s by s + W_r^+ (o' - o) (o, o': the model's
outputs for the two prompts; W_r^+: pseudo-inverse of W through its top-r singular vectors) and count how often the
edited model's top-1 is the first token of the other subject's object.
Majority baseline: always predict the relation's most common object (its first token); the share of held-out
subjects it gets right is what a constant map reaches, shown beside faithfulness.

Selection never sees the held-out subjects: the layer, beta and rank are chosen by leave-one-out on the training
pairs (W, b fitted on the other training pairs; the layer and beta by faithfulness on the left-out pair, ties to
the earlier layer and smaller beta; the rank, at the chosen layer, by causality between training pairs, each sent
to the next training pair with another object and edited with the W of the pairs other than itself, ties broken by
the mean probability of the other object, then the smaller rank). Held-out
faithfulness and causality are then measured once, at that choice.

Speed: nothing before the query subject's last token changes when s is edited. Prompts with the same length and
subject position form a block that runs as one batch: its tokens before the subject's last one run once into a
key/value cache, and every pass after that (the clean run, the Jacobians, the edited passes) runs only the tokens
from there on, on that cache. resid_post.l is resid_pre.(l+1), so every pass that edits s resumes there
(model.run's resume) from the clean stream, and all the edits of one layer on one block (the leave-one-out pairs
at every rank; the held-out pairs) run as one batch. The Jacobians of all layers of a prompt come from one resumed
pass with a zero added to s at every layer and one backward pass whose d_model rows are batched vector-Jacobian
products. A model whose forward takes no key/value cache runs whole prompts in those passes, still
batched and resumed. resume=False runs the plain path instead (each prompt alone, every pass over the whole
prompt from the embedding, one per edit, d_model copies of the prompt for the Jacobian): the same numbers to float
round-off.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmscope.core import edits
from lmscope.core.checks import check_count, check_layers, check_numbers, read_text_file
from lmscope.core.config import option, with_overrides
from lmscope.core.errors import InputError
from lmscope.core.runs import on_cache, prefix_cache, supports_kv_cache
from lmscope.results import Result


@dataclass
class LreConfig:
    """The options of one LRE fit (also the CLI's flags and the `config` stored in the result)."""
    layers: "list[int] | None" = option(None, "layer(s) of s, comma-separated (None: every 3rd layer)",
                                        flag="--layer")
    betas: list[float] = option([1.0, 2.0, 4.0, 8.0], "scales of W s, comma-separated", flag="--beta")
    ranks: list[int] = option([32, 96, 256], "ranks of the pseudo-inverse for causality, comma-separated")
    n_train: int = option(5, "pairs to fit W and b on (and to choose layer, beta, rank by leave-one-out)",
                          flag="--train")
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
    for n, line in enumerate(read_text_file(path, "pairs file").splitlines(), 1):
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


def jacobian(model, ids: torch.Tensor, pos: int, layer: int, *, chunk: int | None = None, resume: bool = True):
    """W = d o / d s at one prompt: s = resid_post.layer at `pos`, o = last layer's resid_post at the last position.
    Returns (W [d, d], s [d], o [d]) in float32. Row i of W is the gradient of o_i. See `jacobians`."""
    return jacobians(model, ids, pos, [layer], chunk=chunk, resume=resume)[layer]


def jacobians(model, ids: torch.Tensor, pos: int, layers, *, chunk: int | None = None, resume: bool = True) -> dict:
    """{layer: (W, s, o)} for several layers of one prompt (see `jacobian`).
    resume=True: a zero that requires grad is added to s at every layer, in one forward from resid_pre.(l + 1) of
    the lowest layer l over the tokens from `pos` on (those before it cached); one backward pass then gives every
    layer's W (d o / d s counts every path, through the higher layers' s too), its rows as batched vector-Jacobian
    products, at most `chunk` rows each, split evenly (None: about 192, the fastest here). resume=False: the plain
    path, per layer d_model copies of the prompt through every layer, `chunk` (default 192) rows per forward and
    backward."""
    layers = sorted(set(layers))
    if not resume:
        return {layer: _jacobian_plain(model, ids, pos, layer, chunk=chunk or 192) for layer in layers}
    clean = _clean_runs(model, {0: (ids, pos)}, layers, batched=True)[0]
    return _jacobians_resumed(model, clean, layers, chunk)


def _jacobians_resumed(model, clean: "_Clean", layers, chunk: int | None) -> dict:
    """jacobians(resume=True) from a prompt's clean run: its cached prefix and its stream at every layer."""
    last = model.n_layers - 1
    site_o, block, row = f"resid_post.{last}", clean.block, [clean.row]
    sites = {layer: f"resid_pre.{layer + 1}" if layer < last else site_o for layer in layers}   # = resid_post.layer
    zeros = {layer: torch.zeros(1, 1, model.d_model, dtype=model.dtype, device=model.device, requires_grad=True)
             for layer in layers}
    adds = [edits.add(sites[layer], zeros[layer], positions=[block.pos]) for layer in layers]
    start = {} if layers[0] == last else {"resume": (layers[0] + 1, block.states[layers[0]][row])}
    with torch.enable_grad():
        _, tr = block.forward(model, row, read=[site_o], edits=adds, grad=True, stop_early=True, **start)
    out = tr[site_o][0, -1]
    d = model.d_model
    n_chunks = -(-d // (chunk or 192))
    step = -(-d // n_chunks)
    # every batch has `step` rows (the last padded with zeros): autograd's batched backward wants one batch size
    eye = torch.eye(n_chunks * step, d, dtype=out.dtype, device=out.device)
    rows = {layer: [] for layer in layers}
    for c in range(n_chunks):
        grads = torch.autograd.grad(out, [zeros[layer] for layer in layers], eye[c * step:(c + 1) * step],
                                    retain_graph=c + 1 < n_chunks, is_grads_batched=True, allow_unused=True)
        for layer, g in zip(layers, grads):
            rows[layer].append(torch.zeros(step, d) if g is None else g[:, 0, 0].float())
    return {layer: (torch.cat(rows[layer])[:d], clean.s(layer), clean.o) for layer in layers}


def _jacobian_plain(model, ids: torch.Tensor, pos: int, layer: int, *, chunk: int):
    """jacobian(resume=False): d_model copies of the prompt (`chunk` per pass) through every layer."""
    last = model.n_layers - 1
    site_s, site_o = f"resid_post.{layer}", f"resid_post.{last}"
    run = model.run(ids, read=[site_s, site_o], stop_early=True)
    s, o = run.acts[site_s][0, pos], run.acts[site_o][0, -1]
    d = model.d_model
    begin = pos if supports_kv_cache(model) else 0
    with torch.no_grad():
        prefix = prefix_cache(model, ids[:, :begin]) if begin > 0 else None
    rows = []
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    for first in range(0, d, chunk):
        n = min(chunk, d - first)
        value = s.detach().expand(n, d).clone().requires_grad_(True)
        edit = edits.replace(site_s, value[:, None], positions=[pos])
        with torch.enable_grad(), model.trace(read=[site_o], edits=[edit], grad=True, stop_early=True) as tr:
            model.hf(input_ids=ids[:, begin:].expand(n, -1), **on_cache(model, prefix, n))
        (g,) = torch.autograd.grad(tr[site_o][:, -1], value, eye[first:first + n])
        rows.append(g.float())
    return torch.cat(rows), s.detach().float(), o.detach().float()


@dataclass
class LayerFit:
    """Leave-one-out scores on the training pairs at one layer (what the layer, beta and rank are chosen by)."""
    layer: int
    loo_faithfulness: dict[str, float]    # beta -> fraction of training pairs
    loo_causality: dict[str, float]       # rank -> fraction of training pairs (i -> j, different objects)
    loo_object_prob: dict[str, float]     # rank -> mean P(other object) after the edit (the tie-break)
    best_rank: int


@dataclass
class LreResult(Result, kind="lre"):
    model: str
    relation: str
    template: str
    layer: int                  # chosen by leave-one-out on the training pairs, as are beta and rank
    beta: float
    faithfulness: float         # held-out, at (layer, beta): measured once
    causality: float            # held-out, at (layer, rank): measured once
    rank: int
    n_test: int
    n_train: int
    n_pairs: int
    n_causal_pairs: int
    train: list[str]
    majority_baseline: float = 0.0     # held-out share whose object is the relation's most common one
    majority_object: str = ""
    n_loo_causal_pairs: int = 0
    layers: list[LayerFit] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)   # subject, object, model top-1, LRE top-1 (chosen layer, beta)
    config: LreConfig = field(default_factory=LreConfig)

    def title(self) -> str:
        return f"LRE - {self.relation}"

    def page_intro(self) -> str:
        return self.summary()

    def summary(self) -> str:
        lines = [f"LRE | {self.model} | {self.relation}: {self.template!r} | {self.n_pairs} pairs, "
                 f"{self.n_train} to fit, {self.n_test} held-out subjects the model gets right",
                 f"chosen by leave-one-out on the {self.n_train} training pairs: layer {self.layer}, beta "
                 f"{self.beta:g}, rank {self.rank}",
                 f"held-out (measured once): faithfulness {self.faithfulness:.1%} ({self.n_test} subjects; majority "
                 f"object {self.majority_object!r}: {self.majority_baseline:.1%}), causality {self.causality:.1%} "
                 f"({self.n_causal_pairs} pairs)"]
        if self.layers:
            betas = list(self.layers[0].loo_faithfulness)
            ranks = list(self.layers[0].loo_causality)
            lines.append(f"leave-one-out on training pairs ({self.n_loo_causal_pairs} causal pairs):")
            lines.append("layer  " + "".join(f"faith b={b:<4}" for b in betas) + "".join(
                f"caus r={r:<5}" for r in ranks))
            for f in self.layers:
                lines.append(f"{f.layer:>5}  " + "".join(f"{v:>10.1%}  " for v in f.loo_faithfulness.values())
                             + "".join(f"{v:>10.1%}  " for v in f.loo_causality.values()))
        return "\n".join(lines)

    def figure(self):
        fig = go.Figure()
        layers = [f.layer for f in self.layers]
        for b in (self.layers[0].loo_faithfulness if self.layers else {}):
            fig.add_trace(go.Scatter(x=layers, y=[f.loo_faithfulness[b] for f in self.layers],
                                     name=f"leave-one-out faithfulness, beta={b}", mode="lines+markers"))
        fig.add_trace(go.Scatter(x=layers, y=[f.loo_causality[str(f.best_rank)] for f in self.layers],
                                 name="leave-one-out causality (best rank)", mode="lines+markers", line_dash="dot"))
        fig.add_trace(go.Scatter(x=[self.layer, self.layer], y=[self.faithfulness, self.causality],
                                 mode="markers+text", text=["held-out faithfulness", "held-out causality"],
                                 # the labels point into the plot, whichever side the chosen layer is on
                                 textposition="middle left" if self.layer > (min(layers, default=0)
                                                                             + max(layers, default=0)) / 2
                                 else "middle right", cliponaxis=False, marker={"size": 12, "symbol": "star"},
                                 name="held-out, at the chosen layer"))
        fig.add_hline(y=self.majority_baseline, line_dash="dash", annotation_text="majority object (held-out)")
        fig.update_layout(title=f"Linear relational embedding: {self.relation} ({self.model})",
                          xaxis_title="layer of s", yaxis={"range": [0, 1.05], "title": "fraction"},
                          height=420, width=800)
        return fig


@dataclass
class _Block:
    """Prompts with the same length and subject position, run as one batch. The tokens before `start` are in the
    key/value cache `prefix` (one row per prompt), and no pass runs them again."""
    ids: torch.Tensor                   # [rows, seq]
    pos: int                            # the query subject's last token
    start: int                          # pos on the cached path, else 0 (and prefix None)
    prefix: object
    states: dict = field(default_factory=dict)   # layer -> resid_post.layer [rows, seq, d], zeros before start

    def forward(self, model, rows: list[int], **trace_options):
        """The last position's logits of the prompts `rows` (repeats allowed) run from `start` on a copy of their
        cached prefix in model.trace(**trace_options): (logits [len(rows), vocab] or None if stopped early, trace)."""
        out = None
        with model.trace(**trace_options) as tr:
            out = model.hf(input_ids=self.ids[rows, self.start:], logits_to_keep=1,
                           **on_cache(model, self.prefix, select=rows))
        return (None if out is None else out.logits[:, -1]), tr


@dataclass
class _Clean:
    """One prompt's clean run: its block and row there, o and the model's top-1."""
    block: _Block
    row: int
    o: torch.Tensor                     # [d] float32
    top: int

    @property
    def pos(self) -> int:
        return self.block.pos

    def s(self, layer: int) -> torch.Tensor:
        """resid_post.layer at the subject's last token, [d] float32."""
        return self.block.states[layer][self.row, self.block.pos].float()


_BLOCK_ROWS = 64    # prompts per batch at most


@torch.no_grad()
def _clean_runs(model, prompts: dict, layers, batched: bool) -> dict:
    """{key: _Clean} for prompts {key: (ids [1, seq], pos)}. batched: prompts with the same length and subject
    position run as one block, on a model with a key/value cache their tokens before pos first into a cache, then
    those from pos on; else (the plain path) each prompt alone, whole, from the embedding."""
    cached = batched and supports_kv_cache(model)
    last = model.n_layers - 1
    reads = sorted({f"resid_post.{layer}" for layer in layers} | {f"resid_post.{last}"})
    same = {}
    for key, (ids, pos) in prompts.items():
        same.setdefault((ids.shape[1], pos) if batched else key, []).append(key)
    out = {}
    for keys in (k[i:i + _BLOCK_ROWS] for k in same.values() for i in range(0, len(k), _BLOCK_ROWS)):
        ids, pos = torch.cat([prompts[key][0] for key in keys]), prompts[keys[0]][1]
        start = pos if cached else 0
        block = _Block(ids, pos, start, prefix_cache(model, ids[:, :start]) if start else None)
        logits, tr = block.forward(model, list(range(len(keys))), read=reads)
        block.states = {layer: F.pad(tr[f"resid_post.{layer}"], (0, 0, start, 0)) for layer in layers}
        o = tr[f"resid_post.{last}"][:, -1].float()
        out.update({key: _Clean(block, row, o[row], int(logits[row].argmax())) for row, key in enumerate(keys)})
    return out


@torch.no_grad()
def _edited_logits(model, clean: dict, layer: int, requests, resume: bool) -> torch.Tensor:
    """Last-position logits [len(requests), vocab] (float32) for requests (key, s_new): the prompt `key` with s
    replaced by s_new. resume: the requests on one block as one batch on its cached prefix, resumed from
    resid_pre.(layer + 1); else one pass per request over the whole prompt from the embedding (the plain path)."""
    last = model.n_layers - 1
    out = torch.empty(len(requests), model.vocab_size)
    batches = {}
    for n, (key, s_new) in enumerate(requests):
        batches.setdefault(id(clean[key].block) if resume else n, []).append((n, clean[key], s_new))
    for batch in batches.values():
        index, rows = [n for n, _, _ in batch], [c.row for _, c, _ in batch]
        block = batch[0][1].block
        values = torch.stack([s_new for _, _, s_new in batch]).to(model.dtype)[:, None]     # [n, 1, d]
        site, start = ((f"resid_pre.{layer + 1}", {"resume": (layer + 1, block.states[layer][rows])})
                       if resume and layer < last else (f"resid_post.{layer}", {}))
        edit = edits.replace(site, values, positions=[block.pos])
        out[index] = block.forward(model, rows, edits=[edit], **start)[0].float().cpu()
    return out


def _pinvs(W: torch.Tensor, ranks) -> dict[int, torch.Tensor]:
    """{rank: pseudo-inverse of W through its top-rank singular vectors} (float64), from one SVD."""
    U, sig, Vh = torch.linalg.svd(W.double())
    return {r: Vh[:r].T @ torch.diag(1 / sig[:r]) @ U[:, :r].T for r in ranks}


def _causal_pairs(subjects, target) -> list[tuple[int, int]]:
    """Each subject is sent to the next one (cyclically) with a different object token."""
    out = []
    for i, s in enumerate(subjects):
        for j in list(range(i + 1, len(subjects))) + list(range(i)):
            if target[subjects[j]] != target[s]:
                out.append((i, j))
                break
    return out


def _affine(jacs) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b = float64 means of J_i and o_i - J_i s_i over (J, s, o) triples, returned as float32."""
    W = torch.stack([J.double() for J, _, _ in jacs]).mean(0)
    b = torch.stack([o.double() - J.double() @ s.double() for J, s, o in jacs]).mean(0)
    return W.float(), b.float()


def _leave_one_out(model, layer, fit, jacs, clean, target, betas, ranks, resume) -> LayerFit:
    """Faithfulness per beta and causality per rank on the training pairs, each pair scored by W, b fitted on the
    other training pairs."""
    k = len(fit)
    loo = [_affine([jacs[j] for j in range(k) if j != i]) for i in range(k)]
    with torch.no_grad():
        lres = torch.stack([beta * W @ jacs[i][1] + b for beta in betas for i, (W, b) in enumerate(loo)])
        preds = model.unembed(lres.to(model.dtype)).argmax(-1).view(len(betas), k).cpu()
    tops = torch.tensor([clean[name].top for name in fit])
    faith = {f"{beta:g}": int((p == tops).sum()) / k for beta, p in zip(betas, preds)}
    cpairs = _causal_pairs(fit, target)
    requests = []
    for i, j in cpairs:                                  # one edit per rank, sent to the other pair's o
        pinvs, delta = _pinvs(loo[i][0], ranks), (clean[fit[j]].o - clean[fit[i]].o).double()
        requests += [(fit[i], jacs[i][1] + (pinvs[r] @ delta).float()) for r in ranks]
    logits = _edited_logits(model, clean, layer, requests, resume).view(len(cpairs), len(ranks), model.vocab_size)
    others = torch.tensor([target[fit[j]] for _, j in cpairs], dtype=torch.long)
    n = max(1, len(cpairs))
    hits = (logits.argmax(-1) == others[:, None]).sum(0)
    p_other = torch.softmax(logits.double(), -1).gather(-1, others[:, None, None].expand(-1, len(ranks), 1))[..., 0]
    caus = {str(r): int(h) / n for r, h in zip(ranks, hits)}
    prob = {str(r): float(q) / n for r, q in zip(ranks, p_other.sum(0))}
    best = max(ranks, key=lambda r: (caus[str(r)], prob[str(r)], -r))
    return LayerFit(layer, faith, caus, prob, best)


def lre(model, relation: Relation, config: LreConfig | None = None, *, progress: bool = False, resume: bool = True,
        **overrides) -> LreResult:
    """Fit an LRE per layer on `n_train` pairs, choose the layer, beta and rank by leave-one-out on them, then
    measure faithfulness and causality once on the held-out subjects the model gets right (module docstring).
    `config` holds the options (LreConfig); keyword arguments override its fields (e.g. layers=[6], n_train=4).
    resume=False runs the plain path (no resumed passes): the same numbers, slower (for checks and benchmarks)."""
    if not isinstance(relation, Relation):
        raise InputError("give a Relation (load_relation(name) or relation_from_pairs(path, template))")
    config = with_overrides(LreConfig, config, overrides)
    n_train, n_demo, seed = config.n_train, config.n_demo, config.seed
    check_count("n_train", n_train, minimum=2)
    check_count("n_demo", n_demo, minimum=0)
    layers = (list(range(0, model.n_layers - 1, 3)) if config.layers is None
              else check_layers(model, config.layers, what="layers"))
    betas = check_numbers("betas", config.betas)
    ranks = [min(check_count("ranks", r), model.d_model) for r in list(config.ranks) or [0]]
    pairs = list(relation.pairs)
    if len(pairs) < 3:
        raise InputError(f"{relation.name} has {len(pairs)} pairs; leave-one-out needs 2 to fit and 1 to test")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    pairs = [pairs[i] for i in order]
    k = min(n_train, len(pairs) - 1)
    train, held = pairs[:k], pairs[k:]
    demos_for = lambda subj: [p for p in train if p[0] != subj][:n_demo]  # noqa: E731
    target = {s: object_token(model, o) for s, o in pairs}
    prompts = {s: relation_prompt(model, relation, demos_for(s), s) for s, _ in pairs}
    clean = _clean_runs(model, prompts, layers, batched=resume)
    known = {s for s, _ in pairs if clean[s].top == target[s]}
    fit = [s for s, _ in train if s in known]
    fit = fit if len(fit) >= 2 else [s for s, _ in train]   # fit on pairs the model knows, where there are two
    test = [s for s, _ in held if s in known]
    fits, affine = [], {}
    subjects = tqdm(fit, desc=f"LRE {relation.name} Jacobians", unit="prompt") if progress else fit
    per_subject = {s: _jacobians_resumed(model, clean[s], layers, None) if resume
                   else jacobians(model, *prompts[s], layers, resume=False) for s in subjects}
    for layer in layers:
        jacs = [per_subject[s][layer] for s in fit]
        affine[layer] = _affine(jacs)
        fits.append(_leave_one_out(model, layer, fit, jacs, clean, target, betas, ranks, resume))
    best, beta = max(((f, bt) for f in fits for bt in betas),
                     key=lambda fb: (fb[0].loo_faithfulness[f"{fb[1]:g}"], -fb[0].layer, -fb[1]))
    layer, rank = best.layer, best.best_rank
    faith, rows, caus, cpairs = _held_out(model, layer, beta, rank, affine[layer], test, clean, target, resume)
    objects = [target[s] for s, _ in pairs]
    top_object = max(objects, key=lambda t: (objects.count(t), -objects.index(t)))
    baseline = sum(target[s] == top_object for s in test) / len(test) if test else 0.0
    obj = dict(pairs)
    rows = [{"subject": s, "object": obj[s], "model_top1": model.tokenizer.decode([clean[s].top]),
             "lre_top1": model.tokenizer.decode([t])} for s, t in zip(test, rows)]
    return LreResult(model.spec, relation.name, relation.template, layer, beta, faith, caus, rank, len(test),
                     len(fit), len(pairs), cpairs, list(fit), baseline, model.tokenizer.decode([top_object]),
                     len(_causal_pairs(fit, target)), fits, rows, config)


def _held_out(model, layer, beta, rank, affine, test, clean, target, resume):
    """Faithfulness and causality on the held-out subjects at the chosen layer, beta and rank (measured once)."""
    if not test:
        return 0.0, [], 0.0, 0
    W, b = affine
    S = torch.stack([clean[s].s(layer) for s in test])
    preds = model.unembed((beta * S @ W.T + b).to(model.dtype)).argmax(-1).tolist()
    faith = sum(p == clean[s].top for p, s in zip(preds, test)) / len(test)
    cpairs = _causal_pairs(test, target)
    pinv = _pinvs(W, [rank])[rank]
    requests = [(test[i], S[i] + (pinv @ (clean[test[j]].o - clean[test[i]].o).double()).float()) for i, j in cpairs]
    tops = _edited_logits(model, clean, layer, requests, resume).argmax(-1).tolist()
    hits = sum(t == target[test[j]] for t, (_, j) in zip(tops, cpairs))
    return faith, preds, hits / len(cpairs) if cpairs else 0.0, len(cpairs)
