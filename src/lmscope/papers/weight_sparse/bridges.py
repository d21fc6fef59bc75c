"""Bridges between a dense and a sparse model (Gao et al. 2025, section on bridges).

For each bridged layer pair (dense layer a, sparse layer b; resid_post of each): an encoder dense -> sparse,
linear + AbsTopK (keep the k largest |x|, the sparse model's activation sparsity), and a decoder sparse -> dense,
linear. Trained jointly on code windows with

    NMSE(enc(h_dense), h_sparse) + NMSE(dec(h_sparse), h_dense)                       (reconstruction both ways)
  + KL(p_sparse || p_sparse with resid_post.b replaced by enc(h_dense))               (hybrid dense -> sparse)
  + KL(p_dense || p_dense with resid_post.a replaced by dec(h_sparse))                (hybrid sparse -> dense)

NMSE = sum |x_hat - x|^2 / sum |x - mean(x)|^2 over real tokens; KL(p || q) = sum p (log p - log q) per token,
averaged over real tokens, p the finishing model's own next-token distribution. A hybrid pass is the finishing
model's own forward with its residual stream replaced at the bridged layer (an lmscope.replace edit), so nothing is
reimplemented. Differences from the paper: layers pair by relative depth when the depths differ; one AbsTopK k for
every layer (default: the sparse model's config `afrac`, else 1/4 of its width).

    check_pair       same vocabulary and tokenizer (one clear error otherwise)
    Bridge           the encoder / decoder of one layer pair
    train_bridges    fit every layer pair; BridgeResult holds per-layer held-out NMSE and hybrid KL
    bridge_steering  carry a sparse-model node edit into the dense model through the decoder, vs a random
                     direction of the same norm
"""
from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmscope.core.edits import add, interpolate, replace
from lmscope.core.errors import InputError
from lmscope.core.metrics import kl_reference_edited
from lmscope.papers.weight_sparse.model import abstopk
from lmscope.results import Result, table
from lmscope.results import atomic_path, check_output

PROBE = "def f(x):\n    return 'a' + \"b\"  # [1, 2]\n"


def check_pair(dense, sparse) -> None:
    """Both models must share a vocabulary and split text identically."""
    if dense.vocab_size != sparse.vocab_size:
        raise InputError(f"bridges need one vocabulary: {dense.spec} has {dense.vocab_size} tokens, "
                         f"{sparse.spec} has {sparse.vocab_size}")
    if dense.tokenizer is not None and sparse.tokenizer is not None:
        a = dense.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        b = sparse.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        if a != b:
            raise InputError(f"bridges need one tokenizer: {dense.spec} and {sparse.spec} split text differently")


def layer_pairs(dense, sparse) -> list[tuple[int, int]]:
    """(dense layer, sparse layer): equal depths pair layer by layer, otherwise by relative depth."""
    nd, ns = dense.n_layers, sparse.n_layers
    return [(round(b * (nd - 1) / max(1, ns - 1)) if nd != ns else b, b) for b in range(ns)]


class Bridge(nn.Module):
    def __init__(self, d_dense: int, d_sparse: int, k: int):
        super().__init__()
        self.encoder = nn.Linear(d_dense, d_sparse)
        self.decoder = nn.Linear(d_sparse, d_dense)
        self.k = k

    def encode(self, h_dense: torch.Tensor) -> torch.Tensor:
        return abstopk(self.encoder(h_dense), self.k)

    def decode(self, h_sparse: torch.Tensor) -> torch.Tensor:
        return self.decoder(h_sparse)


def nmse(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)[..., None]
    n = m.sum()
    mean = (x * m).sum((0, 1)) / n
    return (((x_hat - x) ** 2) * m).sum() / (((x - mean) ** 2) * m).sum().clamp_min(1e-12)


def kl_model_to_hybrid(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(P_model || P_hybrid) (lmscope.core.metrics.kl_reference_edited) per token, mean over real tokens."""
    kl = kl_reference_edited(p_logits, q_logits)
    m = mask.to(kl.dtype)
    return ((kl * m).sum() / m.sum()).float()


@dataclass
class BridgeConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    kl_weight: float = 1.0      # weight of the two hybrid KL terms against the two NMSE terms
    k: "int | None" = None      # AbsTopK of the encoder; default: the sparse model's afrac x width (1/4 without)
    seed: int = 0


def _runs(dense, sparse, ids, pairs):
    reads_d = sorted({f"resid_post.{a}" for a, _ in pairs})
    reads_s = sorted({f"resid_post.{b}" for _, b in pairs})
    rd = dense.run(ids, read=reads_d)
    rs = sparse.run(ids, read=reads_s)
    return rd, rs


def bridge_losses(dense, sparse, bridges, pairs, ids, *, grad: bool) -> list[dict]:
    """Per layer pair: the four terms on one batch of token rows (equal length, no padding)."""
    rd, rs = _runs(dense, sparse, ids, pairs)
    mask = rd.attention_mask
    out = []
    for bridge, (a, b) in zip(bridges, pairs):
        h_d, h_s = rd[f"resid_post.{a}"], rs[f"resid_post.{b}"]
        with torch.set_grad_enabled(grad):
            enc, dec = bridge.encode(h_d), bridge.decode(h_s)
        hyb_s = sparse.run(ids, edits=[replace(f"resid_post.{b}", enc.to(sparse.dtype))], grad=grad).logits
        hyb_d = dense.run(ids, edits=[replace(f"resid_post.{a}", dec.to(dense.dtype))], grad=grad).logits
        out.append({"nmse_to_sparse": nmse(enc, h_s, mask), "nmse_to_dense": nmse(dec, h_d, mask),
                    "kl_dense_to_sparse": kl_model_to_hybrid(rs.logits, hyb_s, mask),
                    "kl_sparse_to_dense": kl_model_to_hybrid(rd.logits, hyb_d, mask)})
    return out


@dataclass
class BridgeResult(Result, kind="sparse_bridges"):
    dense: str
    sparse: str
    pairs: list                      # [[dense layer, sparse layer], ...]
    k: int
    per_layer: list                  # held-out: {"dense_layer", "sparse_layer", nmse_to_sparse, ...}
    n_train_windows: int
    n_heldout_windows: int
    training: dict = field(default_factory=dict)
    steering: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"bridges {self.sparse} <-> {self.dense} | AbsTopK k={self.k} | {self.n_train_windows} train, "
                 f"{self.n_heldout_windows} held-out windows",
                 "  layer (dense, sparse)  NMSE->sparse  NMSE->dense  KL hybrid d->s  KL hybrid s->d"]
        for r in self.per_layer:
            lines.append(f"  ({r['dense_layer']:>2}, {r['sparse_layer']:>2})            {r['nmse_to_sparse']:.3f}"
                         f"         {r['nmse_to_dense']:.3f}        {r['kl_dense_to_sparse']:.4f}          "
                         f"{r['kl_sparse_to_dense']:.4f}")
        if self.steering:
            lines.append(steering_summary(self.steering))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out NMSE", "held-out hybrid KL (nats/token)"))
        x = [r["sparse_layer"] for r in self.per_layer]
        for key, name, col in (("nmse_to_sparse", "dense -> sparse (encoder)", 1),
                               ("nmse_to_dense", "sparse -> dense (decoder)", 1),
                               ("kl_dense_to_sparse", "dense to L, finish in sparse", 2),
                               ("kl_sparse_to_dense", "sparse to L, finish in dense", 2)):
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in self.per_layer], mode="lines+markers", name=name),
                          row=1, col=col)
        fig.update_xaxes(title_text="sparse-model layer (resid_post)")
        fig.update_layout(title=f"Bridges {self.sparse} <-> {self.dense}", width=1000, height=420)
        return fig

    def figures(self) -> list:
        return [self.figure()] + ([steering_figure(self.steering)] if self.steering else [])

    def title(self) -> str:
        return f"Bridges {self.sparse} <-> {self.dense}"

    def page_intro(self) -> str:
        return "Per-layer bridges (Gao et al. 2025), held-out code windows."

    def page_body(self) -> str:
        rows = [[r["dense_layer"], r["sparse_layer"], f"{r['nmse_to_sparse']:.4f}", f"{r['nmse_to_dense']:.4f}",
                 f"{r['kl_dense_to_sparse']:.4f}", f"{r['kl_sparse_to_dense']:.4f}"] for r in self.per_layer]
        body = table(["dense layer", "sparse layer", "NMSE d->s", "NMSE s->d", "KL d->s", "KL s->d"], rows)
        return body + (f"<p>{html.escape(steering_summary(self.steering))}</p>" if self.steering else "")


def _batches(windows, batch_size, gen):
    order = torch.randperm(len(windows), generator=gen).tolist()
    for start in range(0, len(order), batch_size):
        yield [windows[i] for i in order[start:start + batch_size]]


def _check_windows(windows, what):
    if not windows or len({len(w) for w in windows}) != 1:
        raise InputError(f"{what}: give a non-empty list of token windows of one length")


def train_bridges(dense, sparse, train_windows, heldout_windows, config: BridgeConfig = BridgeConfig(), *,
                  progress: bool = False) -> tuple[list[Bridge], BridgeResult]:
    check_pair(dense, sparse)
    _check_windows(train_windows, "bridge training windows")
    _check_windows(heldout_windows, "bridge held-out windows")
    pairs = layer_pairs(dense, sparse)
    afrac = getattr(sparse.hf.config, "afrac", 0.25)
    k = config.k or max(1, round(afrac * sparse.d_model))
    torch.manual_seed(config.seed)
    bridges = [Bridge(dense.d_model, sparse.d_model, k).to(dense.device) for _ in pairs]
    params = [p for b in bridges for p in b.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    frozen = [(p, p.requires_grad) for m in (dense, sparse) for p in m.hf.parameters()]
    history, started, step = [], time.time(), 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, desc="bridges", unit="step")
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        while step < config.steps:
            for batch in _batches(train_windows, config.batch_size, gen):
                terms = bridge_losses(dense, sparse, bridges, pairs, batch, grad=True)
                loss = sum(t["nmse_to_sparse"] + t["nmse_to_dense"]
                           + config.kl_weight * (t["kl_dense_to_sparse"] + t["kl_sparse_to_dense"]) for t in terms)
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append({"step": step, "loss": float(loss.detach())})
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if step >= config.steps:
                    break
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    per_layer = evaluate_bridges(dense, sparse, bridges, pairs, heldout_windows, config.batch_size)
    result = BridgeResult(dense.spec, sparse.spec, [list(p) for p in pairs], k, per_layer,
                          len(train_windows), len(heldout_windows),
                          training={**asdict(config), "k": k, "seconds": round(time.time() - started, 1),
                                    "history": history[:: max(1, len(history) // 50)] + history[-1:]})
    return bridges, result


@torch.no_grad()
def evaluate_bridges(dense, sparse, bridges, pairs, windows, batch_size: int = 8) -> list[dict]:
    """Held-out per-layer terms, each averaged over batches weighted by their token count."""
    sums = [dict.fromkeys(("nmse_to_sparse", "nmse_to_dense", "kl_dense_to_sparse", "kl_sparse_to_dense"), 0.0)
            for _ in pairs]
    total = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        n = len(batch) * len(batch[0])
        for acc, terms in zip(sums, bridge_losses(dense, sparse, bridges, pairs, batch, grad=False)):
            for key in acc:
                acc[key] += float(terms[key]) * n
        total += n
    return [{"dense_layer": a, "sparse_layer": b, **{k: v / total for k, v in acc.items()}}
            for (a, b), acc in zip(pairs, sums)]


# ---------------------------------------------------------------------------------------------------------------
# Using a bridge: a sparse-model node edit carried into the dense model

def _node_patch(model, task, site: str, index: tuple, rows) -> list:
    """Edits that set one node (site[index]) to its value on the corrupt prompts of `rows` (a flip)."""
    corrupt = model.run([task.corrupt[r] for r in rows], read=[site])[site]
    weight = torch.ones(model.site_shape(site), dtype=model.dtype, device=model.device)
    weight[index] = 0
    return [interpolate(site, corrupt, weight)]


@torch.no_grad()
def bridge_steering(dense, sparse, bridge: Bridge, pair: tuple[int, int], task, site: str, index: tuple, *,
                    n_random: int = 5, seed: int = 0) -> dict:
    """Flip one sparse node to its corrupt-prompt value; the change it makes to the sparse resid_post.b goes through
    the decoder (decode(h + delta) - decode(h)) and is added to the dense resid_post.a. Reports the mean change of
    each model's task metric on the clean prompts, and the same for random sparse-side directions with the same
    norm per token."""
    a, b = pair
    rows = list(range(len(task)))
    ids = [task.clean[r] for r in rows]
    if len({len(r) for r in ids}) != 1:
        ids_len = {len(r) for r in ids}
        raise InputError(f"bridge steering needs prompts of one token length, got lengths {sorted(ids_len)}")
    edits = _node_patch(sparse, task, site, index, rows)
    site_b = f"resid_post.{b}"
    h = sparse.run(ids, read=[site_b])
    h_edit = sparse.run(ids, read=[site_b], edits=edits)
    delta_s = h_edit[site_b] - h[site_b]
    last = torch.arange(len(rows))

    def metric(model, run):
        return task.metric(run.logits[last, -1]).double().mean()

    def dense_change(delta):
        moved = bridge.decode(h[site_b] + delta) - bridge.decode(h[site_b])
        return float(metric(dense, dense.run(ids, edits=[add(f"resid_post.{a}", moved.to(dense.dtype))]))
                     - base_dense)

    base_dense = float(metric(dense, dense.run(ids)))
    base_sparse = float(metric(sparse, h))
    gen = torch.Generator().manual_seed(seed)
    randoms = []
    for _ in range(n_random):
        r = torch.randn(delta_s.shape, generator=gen, dtype=delta_s.dtype)
        r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12) * delta_s.norm(dim=-1, keepdim=True)
        randoms.append(dense_change(r.to(delta_s.device)))
    return {"site": site, "index": list(index), "pair": [a, b], "n_prompts": len(rows),
            "sparse_metric_clean": base_sparse, "sparse_change": float(metric(sparse, h_edit)) - base_sparse,
            "dense_metric_clean": base_dense, "dense_change": dense_change(delta_s),
            "dense_change_random": randoms, "delta_norm_mean": float(delta_s.norm(dim=-1).mean())}


def steering_summary(s: dict) -> str:
    rand = s["dense_change_random"]
    mean_r = sum(rand) / len(rand) if rand else float("nan")
    return (f"bridge steering: flip {s['site']}{s['index']} (sparse) -> sparse metric change "
            f"{s['sparse_change']:+.3f}; through the decoder into dense layer {s['pair'][0]}: dense metric change "
            f"{s['dense_change']:+.3f} (random same-norm directions: mean {mean_r:+.3f} over {len(rand)})")


def steering_figure(s: dict):
    import plotly.graph_objects as go
    fig = go.Figure(go.Bar(x=["sparse: node flipped", "dense: through bridge"]
                           + [f"dense: random {i}" for i in range(len(s["dense_change_random"]))],
                           y=[s["sparse_change"], s["dense_change"]] + s["dense_change_random"]))
    fig.update_layout(title="Task metric change from one sparse node flipped, carried through the bridge",
                      yaxis_title="change in mean logit difference", width=900, height=420)
    return fig


def save_bridges(bridges: list[Bridge], path, *, overwrite: bool = False) -> Path:
    """The bridges' weights as safetensors (atomic)."""
    from safetensors.torch import save_file
    tensors = {f"{i}.{name}": p.detach().contiguous().cpu() for i, b in enumerate(bridges)
               for name, p in b.state_dict().items()}
    with atomic_path(check_output(path, overwrite=overwrite, suffixes=(".safetensors",), what="bridges")) as tmp:
        save_file(tensors, str(tmp))
    return Path(path)
