"""Evaluate an SAE (or transcoder) inside the model it was trained on.

Over held-out windows (documents a harvest never read, when the SAE records its harvest folder), per batch:
  clean       the unmodified model; read site_in and site_out
  sae         site_out replaced by the SAE's prediction from site_in (lmscope.replace: hooks on the real modules)
  zero        site_out set to 0
  mean        site_out set to its mean over the evaluated tokens (computed first, in a pass that stops there)
at every text position (the prefix token at position 0 and rows the SAE was not trained on, norm > max_norm,
are left untouched in every variant, so the four runs differ only where the SAE acts). Then

  fvu           sum |t - t_hat|^2 / sum |t - mean t|^2 (float64) over the spliced tokens
  l0            mean number of active latents per token; dead_frac: latents that never fire here
  ce_*          next-token cross-entropy (nats) of each run; targets are the window's text tokens
  ce_recovered  (CE_zero - CE_sae) / (CE_zero - CE_clean); ce_recovered_mean uses mean ablation instead
  kl            mean KL(clean || sae) of the next-token distributions, per scored position
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmscope.core.edits import mean_ablate, replace, zero

from lmscope.core.errors import InputError
from lmscope.core.metrics import kl_reference_edited
from lmscope.results.base import Result
from lmscope.results.html import table
from lmscope.sae.data import evaluation_windows, prefix_token
from lmscope.sae.interop import check_against_model


@dataclass
class EvalResult(Result, kind="sae_eval"):
    model: str
    site_in: str
    site_out: str
    architecture: str
    d_sae: int
    texts: str
    held_out: bool
    n_tokens: int                 # text tokens evaluated
    n_spliced: int                # of which replaced by the SAE (the rest: norm > max_norm)
    fvu: float
    l0: float
    dead_frac: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_mean: float
    ce_recovered: float
    ce_recovered_mean: float
    kl: float
    kl_zero: float
    kl_mean: float

    def summary(self) -> str:
        where = self.site_in if self.site_in == self.site_out else f"{self.site_in} -> {self.site_out}"
        return (f"SAE evaluation | {self.model} | {self.architecture} d_sae {self.d_sae} at {where} | "
                f"{self.n_tokens} tokens of {self.texts}" + (" (held out)" if self.held_out else
                                                              " (NOT known to be held out)")
                + f"\nFVU {self.fvu:.4f}  L0 {self.l0:.1f}  dead {self.dead_frac:.1%}  "
                f"spliced {self.n_spliced}/{self.n_tokens} tokens"
                + f"\nCE clean {self.ce_clean:.4f}  with SAE {self.ce_sae:.4f}  zero-ablated {self.ce_zero:.4f}  "
                  f"mean-ablated {self.ce_mean:.4f}"
                + f"\nCE loss recovered: {self.ce_recovered:.4f} (vs zero ablation), {self.ce_recovered_mean:.4f} "
                  f"(vs mean ablation)\nKL(clean || SAE) {self.kl:.4f}  (zero {self.kl_zero:.4f}, mean "
                  f"{self.kl_mean:.4f}) nats/token")

    def figure(self):
        names = ["clean", "SAE spliced", "mean ablation", "zero ablation"]
        fig = go.Figure(go.Bar(x=names, y=[self.ce_clean, self.ce_sae, self.ce_mean, self.ce_zero]))
        fig.update_layout(title=f"Next-token cross-entropy with {self.site_out} replaced (CE recovered "
                                f"{self.ce_recovered:.3f} vs zero, {self.ce_recovered_mean:.3f} vs mean)",
                          yaxis_title="nats / token", height=420, width=800)
        return fig

    def title(self) -> str:
        return "SAE evaluation"

    def page_intro(self) -> str:
        return self.summary().replace("\n", "; ")

    def page_body(self) -> str:
        rows = [[k, f"{v:.6g}" if isinstance(v, float) else v] for k, v in self.to_json().items()]
        return table(["key", "value"], rows)


def _ce_kl(logits, clean_logits, targets, valid, rows: int = 256):
    """Summed CE over valid positions, and summed KL(clean || this) (core.metrics.kl_reference_edited, in chunks of
    `rows` positions to bound the float64 memory)."""
    logp = F.log_softmax(logits.float(), -1)
    ce = -logp.gather(-1, targets[..., None])[..., 0]
    mine, clean = logits[valid], clean_logits[valid]
    kl = sum(float(kl_reference_edited(clean[i:i + rows], mine[i:i + rows]).sum()) for i in range(0, len(mine), rows))
    return float(ce[valid].double().sum()), kl


@torch.no_grad()
def evaluate_sae(model, sae, texts="wiki", *, n_tokens: int = 16_384, seq_len: int = 128, batch_windows: int = 8,
                 harvest: "str | None" = None, corpus_seed: int = 0, progress: bool = True) -> EvalResult:
    """`texts`: a corpus name (held out from `harvest`, default the SAE's own harvest folder, when it exists) or a
    list of texts."""
    cfg = sae.cfg
    check_against_model(cfg, model)
    windows, held_out, name = evaluation_windows(model, cfg, texts, harvest, corpus_seed, n_tokens, seq_len)
    has_prefix = prefix_token(model.tokenizer) is not None
    sae = sae.to(model.device)
    batches = [windows[i:i + batch_windows] for i in range(0, len(windows), batch_windows)]
    sites = list(dict.fromkeys([cfg.site_in, cfg.site_out]))
    bar = _bar(len(batches), progress)

    def splice_mask(mask, x):
        text = mask.bool().clone()
        if has_prefix:
            text[:, 0] = False
        return text, text & ((x.norm(dim=-1) <= cfg.max_norm) if cfg.max_norm else True)

    # the mean of site_out over the spliced tokens, for mean ablation (a pass that stops at the site)
    out_sum, n_out = torch.zeros(cfg.d_out, dtype=torch.float64), 0
    for group in batches:
        ids, mask = model.encode(group)
        run = model.run(ids, read=sites, stop_early=True)
        _, splice = splice_mask(mask, run[cfg.site_in])
        out_sum += run[cfg.site_out][splice].double().sum(0).cpu()
        n_out += int(splice.sum())
    if n_out == 0:
        raise InputError("no token to evaluate: every row is above the SAE's max_norm")
    mean = out_sum / n_out
    mean_act = mean.to(model.dtype).to(model.device)
    names = ("err", "sq", "active", "n_spliced", "n_text", "ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae",
             "kl_zero", "kl_mean", "n_scored")
    acc = dict.fromkeys(names, 0.0)
    fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
    for group in batches:
        ids, mask = model.encode(group)
        clean = model.run(ids, read=sites)
        x, t = clean[cfg.site_in], clean[cfg.site_out]
        text, splice = splice_mask(mask, x)
        z = sae.encode(x[splice])
        recon = sae.decode(z).to(model.dtype)
        fired |= (z > 0).any(0).cpu()
        ts = t[splice].double()
        acc["err"] += float((ts - recon.double()).pow(2).sum())
        acc["sq"] += float((ts - mean.to(ts.device)).pow(2).sum())
        acc["active"] += float((z > 0).sum())
        acc["n_spliced"] += len(ts)
        acc["n_text"] += int(text.sum())
        value = t.clone()
        value[splice] = recon
        targets, scored = ids[:, 1:], mask[:, 1:].bool()          # predictions of real next tokens
        clean_logits = clean.logits[:, :-1]
        acc["ce_clean"] += _ce_kl(clean_logits, clean_logits, targets, scored)[0]
        acc["n_scored"] += int(scored.sum())
        for key, edit in (("sae", replace(cfg.site_out, value, positions=splice)),
                          ("zero", zero(cfg.site_out, positions=splice)),
                          ("mean", mean_ablate(cfg.site_out, mean_act, positions=splice))):
            ce, kl = _ce_kl(model.run(ids, edits=[edit]).logits[:, :-1], clean_logits, targets, scored)
            acc[f"ce_{key}"] += ce
            acc[f"kl_{key}"] += kl
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    n = acc["n_scored"]
    ce = {k: acc[f"ce_{k}"] / n for k in ("clean", "sae", "zero", "mean")}
    return EvalResult(model.spec, cfg.site_in, cfg.site_out, cfg.architecture, cfg.d_sae, name, held_out,
                      int(acc["n_text"]), int(acc["n_spliced"]), acc["err"] / acc["sq"],
                      acc["active"] / acc["n_spliced"], float((~fired).float().mean()), ce["clean"], ce["sae"],
                      ce["zero"], ce["mean"], _recovered(ce["zero"], ce["sae"], ce["clean"]),
                      _recovered(ce["mean"], ce["sae"], ce["clean"]), acc["kl_sae"] / n, acc["kl_zero"] / n,
                      acc["kl_mean"] / n)


def _recovered(ablated: float, with_sae: float, clean: float) -> float:
    gap = ablated - clean
    return (ablated - with_sae) / gap if abs(gap) > 1e-12 else float("nan")


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, unit="batch", desc="evaluating SAE", file=sys.stderr, dynamic_ncols=True)
