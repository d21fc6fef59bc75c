"""Tuned lens (Belrose et al. 2023): one affine translator per layer, trained so that reading layer L's residual
stream through it and the model's own final norm + unembedding matches the model's final distribution.

    logits_L = unembed(h + A_L h + b_L),    A_L = 0, b_L = 0 at init (the identity translator = the logit lens)
    loss     = KL(final || lens), summed over layers (each layer's translator is trained independently)

The model is frozen and never reimplemented: `model.run` reads resid_post.*, `model.unembed` does the readout.
Training streams the corpus in batches of windows (bounded memory: one batch of residuals and final log-probs at
a time); each Adam step uses `positions_per_step` random positions of the current batch at every layer (the full
vocabulary softmax is the cost). The last layer's translator stays the identity: the logit lens is exact there.

Held-out evaluation: documents are split by a hash of their id (`_held_out(doc_id)`), so evaluation text never
shares a document with training text, whatever the seeds.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from lmscope.core.checks import check_count
from lmscope.core.errors import InputError
from lmscope.core.fingerprint import check_identity, model_identity
from lmscope.data.corpora import iter_token_windows
from lmscope.results import Result, atomic_path, check_output

FORMAT = "lmscope-tuned-lens/1"


def _split(doc_id: str) -> str:
    """By a stable hash of the document id: 1 in 10 documents is evaluation text ("test"), 1 in 10 validation text
    (model selection while training), the rest training text. No window is ever shared between the three."""
    bucket = zlib.crc32(doc_id.encode()) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _held_out(doc_id: str) -> bool:
    return _split(doc_id) == "test"


def _batches(model, corpus: str, n_tokens: int, window: int, batch_windows: int, seed: int, split: str):
    """Batches (lists of token-id lists) from one side of the document split, `n_tokens` in all (or fewer)."""
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise InputError(f"the number of tokens must be a positive integer, got {n_tokens!r}")
    remaining, batch = n_tokens, []
    for w in iter_token_windows(model.tokenizer, corpus, n_tokens=10**12, window=window, seed=seed):
        if _split(w.doc_id) != split:
            continue
        piece = w.input_ids[:remaining]
        if len(piece) < 2:
            break
        batch.append(piece)
        remaining -= len(piece)
        if len(batch) == batch_windows or remaining == 0:
            yield batch
            batch = []
        if remaining == 0:
            return
    if batch:
        yield batch


def _forward(model, rows):
    """Residuals of layers 0..L-2 at real positions [L-1, N, d], final log-probs [N, V] (float32), and the next
    token of each position (-1 where the window ends)."""
    run = model.run(rows, read=[f"resid_post.{i}" for i in range(model.n_layers - 1)])
    mask = run.attention_mask.bool()
    nxt = torch.full_like(run.input_ids, -1)
    nxt[:, :-1] = torch.where(mask[:, 1:], run.input_ids[:, 1:], -1)
    resid = torch.stack([run.acts[f"resid_post.{i}"][mask] for i in range(model.n_layers - 1)])
    return resid.float(), torch.log_softmax(run.logits[mask].float(), -1), nxt[mask]


@dataclass
class TunedLens:
    weight: torch.Tensor            # [n_layers, d_model, d_model]: A_L (the last layer's stays 0)
    bias: torch.Tensor              # [n_layers, d_model]: b_L
    meta: dict = field(default_factory=dict)   # model, d_model, n_layers, vocab_size, tokens, seed, training stats

    @classmethod
    def identity(cls, model, **meta) -> "TunedLens":
        d, n = model.d_model, model.n_layers
        return cls(torch.zeros(n, d, d), torch.zeros(n, d),
                   {"format": FORMAT, "model": model.spec, "d_model": d, "n_layers": n,
                    "vocab_size": model.vocab_size, "identity": model_identity(model), **meta})

    def translate(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        a, b = self.weight[layer].to(resid), self.bias[layer].to(resid)
        return resid + resid @ a.T + b

    def logits(self, model, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Tuned-lens logits of layer `layer` (negative counts from the end) for a residual [..., d_model]."""
        self.check(model)
        n = model.n_layers
        if not -n <= layer < n:
            raise InputError(f"layer {layer} out of range for a {n}-layer model")
        return model.unembed(self.translate(layer % n, resid))

    def check(self, model) -> None:
        """One clear error when the lens is another model's: by its config hash (core.fingerprint) where the file
        records one, by the model name and shapes otherwise (files written before it did)."""
        m = self.meta
        keys = ("model", "d_model", "n_layers", "vocab_size")
        if "identity" in m:   # the same model loaded another way (a local folder, another dtype) still matches
            check_identity({**m["identity"], "d_model": m.get("d_model")}, model, "this tuned lens")
            keys = ("d_model", "n_layers", "vocab_size")
        have_of = {"model": model.spec, "d_model": model.d_model, "n_layers": model.n_layers,
                   "vocab_size": model.vocab_size}
        for key, have in ((k, have_of[k]) for k in keys):
            if m.get(key) != have:
                raise InputError(f"this tuned lens was trained for {m.get('model')!r} ({key} {m.get(key)}), "
                                 f"not for {model.spec!r} ({key} {have})")

    # -- files: safetensors, the metadata as JSON in its header (no pickle) --------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        path = check_output(path, overwrite=overwrite, suffixes=(".safetensors",))
        with atomic_path(path) as tmp:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(tmp),
                      metadata={"lmscope": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path, model=None) -> "TunedLens":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no tuned lens file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("lmscope")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path} is not a safetensors file ({exc})") from None
        meta = json.loads(header) if header else {}
        if meta.get("format") != FORMAT or set(tensors) != {"weight", "bias"}:
            raise InputError(f"{path} is not an lmscope tuned lens (format {meta.get('format')!r})")
        lens = cls(tensors["weight"], tensors["bias"], meta)
        n, d = meta["n_layers"], meta["d_model"]
        if lens.weight.shape != (n, d, d) or lens.bias.shape != (n, d):
            raise InputError(f"{path}: tensor shapes {tuple(lens.weight.shape)}, {tuple(lens.bias.shape)} do not "
                             f"match its metadata ({n} layers, d_model {d})")
        if model is not None:
            lens.check(model)
        return lens

    # -- a result like the others -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return dict(self.meta)

    def summary(self) -> str:
        m = self.meta
        lines = [f"tuned lens | {m['model']} | {m['n_layers']} layers, d_model {m['d_model']}"]
        if "train_tokens" in m:
            lines.append(f"trained on {m['train_tokens']} tokens of {m['corpus']!r} (seed {m['seed']}), "
                         f"{m['steps']} Adam steps x {m['positions_per_step']} positions per layer, "
                         f"lr {m['lr']}, {m['wall_s']:.1f} s")
            lines.append(f"training KL(final || lens), mean over layers 0..{m['n_layers'] - 2}: "
                         f"first step {m['loss_first']:.4f}, last 10 steps {m['loss_last']:.4f} nats")
        return "\n".join(lines)


def train_tuned_lens(model, corpus: str = "wiki", *, n_tokens: int = 20_000, steps: int = 200,
                     positions_per_step: int = 16, lr: float = 1e-3, window: int = 128, batch_windows: int = 4,
                     seed: int = 0, bf16: bool | None = None, validation_tokens: int = 256,
                     progress: bool = False) -> TunedLens:
    """Train translators for layers 0..L-2 on the training side of `corpus` (Adam, float32 parameters), then
    choose each layer's scale on `validation_tokens` tokens of its validation side (_select_layer_scales).
    `bf16` runs the unembedding matmuls of the training steps under bfloat16 autocast (default: on CPU, where it
    is ~3x faster); evaluation is always float32."""
    for name, v in (("steps", steps), ("positions_per_step", positions_per_step), ("batch_windows", batch_windows),
                    ("validation_tokens", validation_tokens)):
        check_count(name, v)
    if model.n_layers < 2:
        raise InputError("a tuned lens needs a model with at least 2 layers")
    if bf16 is None:
        bf16 = model.device.type == "cpu"
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_train = model.n_layers - 1
    lens = TunedLens.identity(model)
    weight = torch.zeros(n_train, model.d_model, model.d_model, device=model.device, requires_grad=True)
    bias = torch.zeros(n_train, model.d_model, device=model.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    losses, seen, step = [], 0, 0
    bar = None
    if progress:
        bar = tqdm(total=steps, desc="tuned lens", unit="step")
    for rows in _batches(model, corpus, n_tokens, window, batch_windows, seed, "train"):
        with torch.no_grad():
            resid, logp, _ = _forward(model, rows)
        before, seen = seen, seen + logp.shape[0]
        p = logp.exp()
        # steps spread over the stream in proportion to its tokens: `steps` in all once n_tokens are seen
        for _ in range(steps * min(seen, n_tokens) // n_tokens - steps * before // n_tokens):
            idx = torch.randint(0, logp.shape[0], (positions_per_step,), generator=gen).to(model.device)
            x = resid[:, idx]                                                   # [layers, T, d]
            y = x + torch.einsum("ltd,led->lte", x, weight) + bias[:, None]
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model.unembed(y.reshape(-1, model.d_model).to(model.dtype))
            logq = torch.log_softmax(logits.float(), -1).view(n_train, positions_per_step, -1)
            kl = (p[idx] * (logp[idx] - logq)).sum(-1).mean(-1)                # [layers]
            gw, gb = torch.autograd.grad(kl.sum(), [weight, bias])
            weight.grad, bias.grad = gw, gb
            opt.step()
            losses.append(float(kl.detach().mean()))
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(kl=f"{losses[-1]:.3f}", tokens=seen)
    if bar is not None:
        bar.close()
    if not losses:
        raise InputError(f"corpus {corpus!r} gave no training text")
    lens.weight[:n_train] = weight.detach().cpu()
    lens.bias[:n_train] = bias.detach().cpu()
    identity_layers, validated = _select_layer_scales(model, lens, corpus, window, seed, validation_tokens)
    lens.meta.update(corpus=corpus, train_tokens=seen, tokens=seen, seed=seed, steps=step,
                     identity_layers=identity_layers, validation_tokens=validated,
                     positions_per_step=positions_per_step, lr=lr, window=window, bf16=bf16,
                     wall_s=round(time.perf_counter() - start, 2), loss_first=round(losses[0], 6),
                     loss_last=round(sum(losses[-10:]) / len(losses[-10:]), 6))
    return lens


@torch.no_grad()
def _select_layer_scales(model, lens: "TunedLens", corpus: str, window: int, seed: int,
                         n_tokens: int = 256) -> tuple[list[int], int]:
    """Model selection on validation documents (neither trained on nor used by evaluate_tuned_lens): per layer, the
    trained translator scaled by the best of 1, 1/2, 1/4 or 0 (0 = the identity, i.e. the logit lens). Short
    training overshoots at late layers, where the logit lens is already good (Adam moves every layer alike).
    Returns the layers left at the identity and the number of validation positions scored."""
    scales = (1.0, 0.5, 0.25, 0.0)
    trained_w, trained_b = lens.weight.clone(), lens.bias.clone()
    sums = torch.zeros(len(scales), model.n_layers - 1, dtype=torch.float64)
    scored = 0
    for rows in _batches(model, corpus, n_tokens, window, 4, seed, "validation"):
        resid, logp, _ = _forward(model, rows)
        scored += logp.shape[0]
        p = logp.exp()
        for layer in range(model.n_layers - 1):
            for k, scale in enumerate(scales):
                lens.weight[layer], lens.bias[layer] = trained_w[layer] * scale, trained_b[layer] * scale
                logq = torch.log_softmax(lens.logits(model, layer, resid[layer]).float(), -1)
                sums[k, layer] += (p * (logp - logq)).sum(-1).double().sum()
    best = sums.argmin(0)
    for layer in range(model.n_layers - 1):
        scale = scales[int(best[layer])]
        lens.weight[layer], lens.bias[layer] = trained_w[layer] * scale, trained_b[layer] * scale
    lens.meta["layer_scales"] = [scales[int(k)] for k in best]
    return [layer for layer in range(model.n_layers - 1) if scales[int(best[layer])] == 0.0], scored


@dataclass
class TunedLensEval(Result, kind="tuned_lens_eval"):
    model: str
    corpus: str
    n_tokens: int                   # held-out positions scored (each has a next token)
    kl_logit: list[float]           # per layer: mean KL(final || lens) in nats
    kl_tuned: list[float]
    ppl_logit: list[float]          # per layer: perplexity of the actual next token under the lens
    ppl_tuned: list[float]
    wall_s: float

    @property
    def tuned_worse(self) -> list[int]:
        """Layers (the last excluded: both lenses are the model's output there) where the tuned lens's KL is not
        lower than the logit lens's."""
        return [i for i in range(len(self.kl_logit) - 1) if not self.kl_tuned[i] < self.kl_logit[i]]

    def json_extras(self) -> dict:
        return {"tuned_worse": self.tuned_worse}

    def figure(self):
        """KL and perplexity per layer on log axes; the KL panel stops before the last layer, where both lenses are
        the model's output and the KL is 0 (no point on a log axis)."""
        layers = list(range(len(self.kl_logit)))
        fig = make_subplots(rows=1, cols=2, subplot_titles=("KL(final || lens), nats (0 at the last layer)",
                                                            "next-token perplexity"))
        kl = (self.kl_logit[:-1], self.kl_tuned[:-1])
        for col, (a, b) in enumerate((kl, (self.ppl_logit, self.ppl_tuned)), 1):
            fig.add_trace(go.Scatter(x=layers[:len(a)], y=a, name="logit lens", mode="lines+markers",
                                     line={"color": "#1f77b4"}, showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Scatter(x=layers[:len(b)], y=b, name="tuned lens", mode="lines+markers",
                                     line={"color": "#d62728"}, showlegend=col == 1), row=1, col=col)
        fig.update_yaxes(type="log")
        fig.update_xaxes(title_text="layer", range=[-0.5, len(layers) - 0.5])
        fig.update_layout(title=f"Tuned vs logit lens on held-out {self.corpus!r} text ({self.n_tokens} tokens): "
                                f"{self.model}", height=450, width=1100)
        return fig

    def title(self) -> str:
        return f"Tuned lens - {self.model}"

    def page_intro(self) -> str:
        return ("Per layer: mean KL(final || lens), from the model's final distribution to the lens's (lower is "
                "closer to the output), and perplexity of the actual next token, on held-out documents. The last "
                "layer is the model's output for both lenses.")

    def summary(self) -> str:
        lines = [f"tuned lens vs logit lens | {self.model} | held-out {self.corpus!r}, {self.n_tokens} tokens, "
                 f"{self.wall_s:.1f} s",
                 "layer   KL logit   KL tuned   ppl logit   ppl tuned"]
        for i in range(len(self.kl_logit)):
            lines.append(f"{i:>5}  {self.kl_logit[i]:>9.4f}  {self.kl_tuned[i]:>9.4f}  {self.ppl_logit[i]:>10.1f}  "
                         f"{self.ppl_tuned[i]:>10.1f}")
        worse = self.tuned_worse
        lines.append("tuned lens has lower KL than the logit lens at every layer but the last" if not worse else
                     "tuned lens NOT lower at layers " + ", ".join(
                         f"{i} ({self.kl_tuned[i]:.4f} vs {self.kl_logit[i]:.4f})" for i in worse))
        return "\n".join(lines)


@torch.no_grad()
def evaluate_tuned_lens(model, lens: TunedLens, corpus: str = "wiki", *, n_tokens: int = 2048, window: int = 128,
                        batch_windows: int = 4, seed: int = 1) -> TunedLensEval:
    """Mean KL(final || lens) and next-token perplexity per layer, logit lens vs tuned lens, on held-out documents
    (float32 logits, float64 sums). Positions without a next token in their window are not scored."""
    lens.check(model)
    start = time.perf_counter()
    n = model.n_layers
    kl = torch.zeros(2, n, dtype=torch.float64)
    nll = torch.zeros(2, n, dtype=torch.float64)
    count = 0
    for rows in _batches(model, corpus, n_tokens + len(range(0, n_tokens, window)) + 1, window, batch_windows,
                         seed, "test"):
        resid, logp, nxt = _forward(model, rows)
        keep = nxt >= 0
        resid, logp, nxt = resid[:, keep], logp[keep], nxt[keep]
        take = min(nxt.shape[0], n_tokens - count)
        resid, logp, nxt = resid[:, :take], logp[:take], nxt[:take]
        p = logp.exp()
        nll[:, n - 1] -= logp.gather(-1, nxt[:, None]).double().sum()
        for layer in range(n - 1):
            for k, h in enumerate((resid[layer], lens.translate(layer, resid[layer]))):
                logq = torch.log_softmax(model.unembed(h.to(model.dtype)).float(), -1)
                kl[k, layer] += (p * (logp - logq)).sum(-1).double().sum()
                nll[k, layer] -= logq.gather(-1, nxt[:, None]).double().sum()
        count += take
        if count >= n_tokens:
            break
    if count == 0:
        raise InputError(f"corpus {corpus!r} gave no held-out text")
    kl, ppl = (kl / count).tolist(), torch.exp(nll / count).tolist()
    return TunedLensEval(model.spec, corpus, count, [round(v, 6) for v in kl[0]], [round(v, 6) for v in kl[1]],
                         [round(v, 4) for v in ppl[0]], [round(v, 4) for v in ppl[1]],
                         round(time.perf_counter() - start, 2))
