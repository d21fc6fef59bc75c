"""Train an SAE (or transcoder) from a `Source` of activations.

One step: a global batch (split over ranks under torchrun; DistributedDataParallel averages the gradients), the
architecture's loss, Adam, then the decoder rows back to unit norm (topk, batchtopk, jumprelu; the relu SAE's L1 is
weighted by the row norms instead). Before the first step the activations' scale is estimated on the first batches
(float64, averaged over ranks) so the SAE sees unit mean squared norm; the decoder bias starts at the mean. Dead
latents (not fired for `dead_tokens` tokens, counted over all ranks) feed AuxK. Learning rate: linear warm-up,
constant, linear decay to 0 over the last `decay_frac` of the steps.
Checkpoints (`checkpoint_every`) hold the SAE, Adam, the scheduler and the dead-latent counters
(lmscope.sae.checkpoints); the same command on the same --out resumes from the last one, replaying the data stream
up to it, and ends with the weights an uninterrupted run gives.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import InitVar, dataclass, field
from itertools import chain
from pathlib import Path

import plotly.graph_objects as go
import torch
import torch.distributed as dist
from plotly.subplots import make_subplots
from tqdm import tqdm

from lmscope.core.errors import InputError
from lmscope.harvest import ensure_group
from lmscope.results.base import Result
from lmscope.results.files import write_atomic
from lmscope.results.output import check_output
from lmscope.sae.architectures import SAE, build_sae
from lmscope.sae.config import SAEConfig, TrainConfig
from lmscope.sae.data import Source
from lmscope.sae.checkpoints import CONFIG, check_train_folder, load_sae_checkpoint, save_sae_checkpoint
from lmscope.sae.interop import save_sae

NORMALIZED_DECODER = ("topk", "batchtopk", "jumprelu")


@dataclass
class TrainResult(Result, kind="sae_train"):
    config: TrainConfig
    sae_config: dict
    history: list[dict]              # one row per logged step
    n_tokens: int
    n_steps: int
    wall_s: float
    step_s: float                    # time inside the SAE's forward/backward/update only
    world_size: int
    out: str = ""
    final: dict = field(default_factory=dict)   # mean of the last logged rows: fvu, l0, dead_frac
    resumed_from: int = 0                        # the checkpoint's step this run continued from (0: a fresh start)
    sae: InitVar["SAE | None"] = None            # the trained SAE (result.sae); not in the JSON, None when read back

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / max(self.wall_s, 1e-9)

    def __post_init__(self, sae):
        self.sae = sae

    def json_extras(self) -> dict:
        return {"tokens_per_s": self.tokens_per_s, "sae_tokens_per_s": self.n_tokens / max(self.step_s, 1e-9)}

    def figure(self):
        fig = make_subplots(rows=1, cols=3, subplot_titles=("FVU (batch)", "L0", "dead fraction"))
        steps = [h["step"] for h in self.history]
        for col, key in enumerate(("fvu", "l0", "dead_frac"), 1):
            fig.add_trace(go.Scatter(x=steps, y=[h[key] for h in self.history], name=key), row=1, col=col)
        fig.update_layout(title=f"SAE training ({self.sae_config['architecture']}, d_sae "
                                f"{self.sae_config['d_sae']}, {self.n_tokens} tokens)", height=380, width=1100,
                          showlegend=False)
        return fig

    def title(self) -> str:
        return "SAE training"

    def page_intro(self) -> str:
        return self.summary()

    def summary(self) -> str:
        f = self.final
        return (f"trained {self.sae_config['architecture']} SAE {self.sae_config['site_in']}"
                + (f" -> {self.sae_config['site_out']}" if self.sae_config['site_out'] != self.sae_config['site_in']
                   else "")
                + f" d_in {self.sae_config['d_in']} d_sae {self.sae_config['d_sae']} on {self.n_tokens} tokens "
                f"({self.n_steps} steps, {self.world_size} rank(s)) in {self.wall_s:.1f} s: "
                f"{self.tokens_per_s:.0f} tokens/s overall, {self.n_tokens / max(self.step_s, 1e-9):.0f} tokens/s "
                f"in SAE steps\nlast steps: FVU {f.get('fvu', float('nan')):.4f}  L0 {f.get('l0', float('nan')):.1f}"
                f"  dead {f.get('dead_frac', float('nan')):.1%}"
                + (f"\nresumed from the checkpoint of step {self.resumed_from}" if self.resumed_from else "")
                + (f"\nsaved to {self.out}" if self.out else ""))


def _allreduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def check_out_folder(out: str, *, overwrite: bool = False) -> None:
    """The output rule for the SAE's folder (lmscope.results.output): new or empty in an existing folder; one that
    holds anything (another run) is refused, untouched, unless overwrite=True."""
    if out:
        check_output(out, overwrite=overwrite, folder=True, what="--out")


def lr_factor(step: int, n_steps: int, warmup: int, decay_frac: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    decay_start = int(n_steps * (1 - decay_frac))
    if decay_frac > 0 and step >= decay_start:
        return max(0.0, (n_steps - step) / max(1, n_steps - decay_start))
    return 1.0


def train_sae(cfg: TrainConfig, source: Source, *, progress: bool = True, device=None,
              overwrite: bool = False) -> TrainResult:
    """Train the SAE `cfg` describes on `source`; with cfg.out, save it there (a new or empty folder, or any folder
    with overwrite=True)."""
    # joins torchrun's group when launched by it; the group serves CPU tensors too (see ensure_group)
    cfg.check()
    rank, world = ensure_group("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.batch_size % world:
        raise InputError(f"batch size {cfg.batch_size} does not split over {world} ranks")
    resume = check_train_folder(cfg, overwrite=overwrite)      # before any work: the folder, and what it holds
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1:
        dist.barrier()  # every rank checked the folder before rank 0 creates it
    if device is None:
        device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    d_sae = cfg.d_sae or cfg.expansion * source.d_in
    sae_cfg = SAEConfig(architecture=cfg.architecture, d_in=source.d_in, d_sae=d_sae, d_out=source.d_out,
                        k=cfg.k, auxk_coeff=cfg.auxk_coeff, l1_coeff=cfg.l1_coeff, l0_coeff=cfg.l0_coeff,
                        seed=cfg.seed, model=source.model_spec, model_config_hash=source.model_config_hash,
                        site_in=source.site_in, site_out=source.site_out, skip_first=source.skip_first)
    n_steps = cfg.n_tokens // cfg.batch_size
    t0 = time.perf_counter()
    stream = source.batches(cfg.batch_size, rank=rank, world_size=world, seed=cfg.seed)
    first = []
    for _ in range(max(1, cfg.norm_batches)):
        item = next(stream, None)
        if item is None:
            break
        first.append(item)
    if not first:
        raise InputError("the data source gave no batch")
    if cfg.outlier_factor > 0:
        norms = torch.cat([x.norm(dim=1) for x, _ in first])
        sae_cfg.max_norm = float(cfg.outlier_factor * _allreduce(norms.median().reshape(1)) / world)
    kept = [_drop_outliers(x, t, sae_cfg.max_norm) if sae_cfg.max_norm else (x, t) for x, t in first]
    sae_cfg.harvest = os.path.abspath(cfg.harvest) if cfg.harvest else ""
    sae_cfg.input_scale, sae_cfg.output_scale = _scales(kept)
    sae = build_sae(sae_cfg)
    with torch.no_grad():
        targets = torch.cat([x if t is None else t for x, t in kept]).double() * sae_cfg.output_scale
        mean = _allreduce(torch.cat([targets.sum(0), torch.tensor([len(targets)], dtype=torch.float64)]))
        sae.b_dec.copy_((mean[:-1] / mean[-1]).float())
    sae.to(device)
    model = sae if world == 1 else torch.nn.parallel.DistributedDataParallel(
        sae, device_ids=[device.index] if device.type == "cuda" else None)
    lr = cfg.resolved_lr(d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, n_steps, cfg.warmup_steps,
                                                                        cfg.decay_frac))
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    history, step_s, tokens, dropped, wall_before = [], 0.0, 0, 0, 0.0
    batches = chain(first, stream)
    step = resumed_from = 0
    if resume is not None:      # the state at the checkpoint; the stream replayed up to it (same seed, same order)
        state = load_sae_checkpoint(resume, sae, opt, sched, since_fired)
        step, tokens, dropped = state["step"], state["tokens"], state["dropped"]
        resumed_from = step
        history, step_s, wall_before = state["history"], state["step_s"], state["wall_s"]
        for _ in range(step):
            next(batches, None)
    elif rank == 0 and cfg.out:
        _start_folder(cfg, overwrite)
    log_every = max(1, n_steps // 50)
    bar = _bar(n_steps * cfg.batch_size, progress and rank == 0, initial=step * cfg.batch_size)
    normalize = cfg.architecture in NORMALIZED_DECODER
    try:
        for x, t in batches:
            if step >= n_steps:
                break
            if world > 1 and int(_allreduce(torch.tensor([1]), dist.ReduceOp.MIN)) == 0:
                break
            ts = time.perf_counter()
            if sae_cfg.max_norm:
                n_before = len(x)
                x, t = _drop_outliers(x, t, sae_cfg.max_norm)
                dropped += n_before - len(x)
            x = x.to(device)
            t = None if t is None else t.to(device)
            dead = since_fired >= cfg.dead_tokens
            out = model(x, t, dead)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if normalize:
                sae.remove_parallel_grad()
            opt.step()
            sched.step()
            if normalize:
                sae.normalize_decoder()
            with torch.no_grad():
                fired = out.fired.to(torch.int32)
                fired = _allreduce(fired, dist.ReduceOp.MAX) if world > 1 else fired
                since_fired += cfg.batch_size
                since_fired[fired.bool()] = 0
            step_s += time.perf_counter() - ts
            tokens += cfg.batch_size
            step += 1
            if step % log_every == 0 or step == n_steps:
                history.append(_log_row(step, tokens, out, x, t, sae, since_fired, cfg, sched))
            if bar is not None:
                bar.update(cfg.batch_size)
                bar.set_postfix(fvu=f"{history[-1]['fvu']:.3f}" if history else "-", refresh=False)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and rank == 0 and cfg.out:
                sae_cfg.n_tokens_trained = tokens
                save_sae_checkpoint(cfg.out, step, sae, opt, sched, since_fired,
                                {"tokens": tokens, "dropped": dropped, "history": history, "step_s": step_s,
                                 "wall_s": wall_before + time.perf_counter() - t0})
        if world > 1 and step < n_steps:
            _allreduce(torch.tensor([0]), dist.ReduceOp.MIN)  # release ranks still waiting for this step
    finally:
        if bar is not None:
            bar.close()
    wall = wall_before + time.perf_counter() - t0
    if step == 0:
        raise InputError("the data source ran out before the first step")
    sae_cfg.n_tokens_trained = tokens
    sae.eval()
    last = history[-max(1, len(history) // 10):]
    final = {k: sum(h[k] for h in last) / len(last) for k in ("fvu", "l0", "dead_frac", "mse")}
    final["outlier_rows_dropped"] = dropped
    final["max_norm"] = sae_cfg.max_norm
    result = TrainResult(cfg, sae_cfg.to_json(), history, tokens, step, wall, step_s, world, cfg.out, final,
                         resumed_from, sae=sae)
    if rank == 0 and cfg.out:
        if not Path(cfg.out, CONFIG).is_file():
            _start_folder(cfg, overwrite)
        save_sae(sae, cfg.out, overwrite=True)    # its own folder, checked before training
        write_atomic(Path(cfg.out) / "train.json", json.dumps(result.to_json(), indent=1))
    return result


def _drop_outliers(x, t, max_norm):
    keep = x.norm(dim=1) <= max_norm
    if bool(keep.all()):
        return x, t
    return x[keep], None if t is None else t[keep]


def _scales(first) -> tuple[float, float]:
    """Scalars making inputs and targets unit mean squared norm (float64, averaged over ranks)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for x, t in first:
        sums[0] += x.double().pow(2).sum()
        sums[1] += (x if t is None else t).double().pow(2).sum()
        sums[2] += len(x)
    sums = _allreduce(sums)
    if sums[0] == 0 or sums[1] == 0:
        raise InputError("the activations are all zero; nothing to learn")
    return float((sums[2] / sums[0]).sqrt()), float((sums[2] / sums[1]).sqrt())


@torch.no_grad()
def _log_row(step, tokens, out, x, t, sae, since_fired, cfg, sched) -> dict:
    target = (x if t is None else t).double()
    err = (target - out.recon.double()).pow(2).sum()
    var = (target - target.mean(0)).pow(2).sum()
    vals = torch.tensor([float(err), float(var), float(out.terms["mse"]), float(out.terms["l0"]),
                         float(out.terms.get("auxk", 0.0))], dtype=torch.float64)
    if dist.is_initialized():
        vals = _allreduce(vals)
        vals[2:] /= dist.get_world_size()
    return {"step": step, "tokens": tokens, "fvu": float(vals[0] / vals[1]), "mse": float(vals[2]),
            "l0": float(vals[3]), "auxk": float(vals[4]),
            "dead_frac": float((since_fired >= cfg.dead_tokens).float().mean()), "lr": sched.get_last_lr()[0]}


def _bar(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc="training SAE", file=sys.stderr,
                dynamic_ncols=True, mininterval=2.0)


def _start_folder(cfg: TrainConfig, overwrite: bool) -> None:
    """A fresh run's folder: created, the run's config written; with overwrite, an earlier run's checkpoints go."""
    out = Path(cfg.out)
    out.mkdir(parents=False, exist_ok=True)
    if overwrite and (out / "checkpoints").is_dir():
        shutil.rmtree(out / "checkpoints")
    write_atomic(out / CONFIG, json.dumps(cfg.to_json(), indent=1))
