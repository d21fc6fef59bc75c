"""Weight-sparse training (Gao et al. 2025) and its dense baseline: one loop, `weight_frac=1` is the baseline.

A step: the global batch (split over ranks under torchrun; DistributedDataParallel averages the gradients),
next-token cross-entropy, gradient clipping, AdamW, then every weight matrix back to its scheduled top-k
(sparsity.apply_masks). Learning rate: linear warm-up, constant, linear decay to 10% over the last `decay_frac`.
Logged: train loss, learning rate, kept fraction, nonzero parameters, tokens/s every step; held-out (validation)
loss, per-matrix density and dead MLP neurons (never kept by AbsTopK on the held-out windows) every `eval_every`.
At the end: test loss (once) and the accuracy of every task. Checkpoints are loadable model folders that also
resume the run exactly (same weights as an uninterrupted run: the batch order is a function of the step).

Differences from the paper: plain linear warm-up/decay instead of their "sharkfin" schedule; gradient clipping by
global norm (they clip the gradient's root-mean-square); no bigram table; far smaller models and data.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lmscope.core.errors import InputError
from lmscope.harvest import barrier, ensure_group, on_rank0
from lmscope.results import Result
from lmscope.papers.weight_sparse import checkpoints as ck
from lmscope.papers.weight_sparse.config import SparseTrainConfig
from lmscope.papers.weight_sparse.data import batch_rows, code_windows, split_texts, train_tokenizer
from lmscope.papers.weight_sparse.model import SparseGPTConfig, SparseGPTForCausalLM
from lmscope.papers.weight_sparse.sparsity import apply_masks, density_report, kept_fraction, nonzero_params
from lmscope.papers.weight_sparse.tasks import task_accuracies


@dataclass
class SparseTrainResult(Result, kind="sparse_training"):
    """What a training run measured; `history` has one row per evaluation."""
    out: str
    config: dict
    history: list[dict]
    final: dict                       # last held-out loss, test loss, nonzero params, wall time, tokens/s
    tasks: dict = field(default_factory=dict)   # task -> accuracy on its held-out prompts (or the reason none)

    def summary(self) -> str:
        f = self.final
        kind = "dense baseline" if self.config["weight_frac"] >= 1 else f"weight-sparse ({self.config['weight_frac']:.4g} kept)"
        lines = [f"{kind} model in {self.out}: {f['steps']} steps, {f['tokens']:,} tokens, {f['wall_s']:.0f} s "
                 f"({f['tokens_per_s']:.0f} tokens/s)",
                 f"held-out loss {f['val_loss']:.4f} (validation), {f['test_loss']:.4f} (test); "
                 f"nonzero parameters {f['nonzero_params']:,} of {f['total_params']:,}"]
        lines += [f"  task {name}: " + (f"accuracy {v['accuracy']:.3f} on {v['n']} held-out prompts"
                                          if "accuracy" in v else v.get("error", "")) for name, v in self.tasks.items()]
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "nonzero parameters", "dead neurons"))
        steps = [h["step"] for h in self.history]
        for key in ("train_loss", "val_loss"):
            fig.add_trace(go.Scatter(x=steps, y=[h[key] for h in self.history], name=key), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[h["nonzero_params"] for h in self.history], name="nonzero"), row=1, col=2)
        fig.add_trace(go.Scatter(x=steps, y=[sum(h["dead_neurons"]) for h in self.history], name="dead"), row=1, col=3)
        fig.update_layout(title="sparse training", height=380, width=1100)
        return fig


def learning_rate(step: int, cfg: SparseTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps * (1 - cfg.decay_frac)
    if step < decay_start or cfg.decay_frac == 0:
        return cfg.lr
    return cfg.lr * (1 - 0.9 * (step - decay_start) / max(cfg.steps - decay_start, 1))


def build_model(cfg: SparseTrainConfig, tokenizer) -> SparseGPTForCausalLM:
    eot = tokenizer.eos_token_id
    config = SparseGPTConfig(vocab_size=cfg.vocab_size, n_positions=cfg.ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                             d_head=cfg.d_head, n_inner=cfg.n_inner, afrac=cfg.afrac, bos_token_id=eot,
                             eos_token_id=eot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SparseGPTForCausalLM(config)
    return model


def get_tokenizer(cfg: SparseTrainConfig, train_texts: list[str]):
    if not cfg.tokenizer:
        return train_tokenizer(train_texts, cfg.vocab_size)
    from transformers import PreTrainedTokenizerFast
    path = Path(cfg.tokenizer).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"--tokenizer {path}: no tokenizer.json there")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    if len(tok) != cfg.vocab_size:
        raise InputError(f"tokenizer in {path} has {len(tok)} tokens but the model is configured for "
                         f"{cfg.vocab_size} (--vocab-size)")
    return tok


def make_optimizer(model, cfg: SparseTrainConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() == 2]
    vectors = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                              {"params": vectors, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate_loss(model, windows: torch.Tensor, batch: int = 8) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        x = windows[start:start + batch].to(model.device)
        total += float(model(x, labels=x).loss) * len(x)
        count += len(x)
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def dead_neurons(model, windows: torch.Tensor) -> list[int]:
    """Per layer: MLP neurons that AbsTopK never kept on any token of `windows`."""
    alive = [torch.zeros(model.config.n_inner, dtype=torch.bool, device=model.device) for _ in model.transformer.h]
    def hook(i):
        def seen(module, args, out):
            alive[i] |= (out != 0).flatten(0, -2).any(0)  # returns None: the output is unchanged
        return seen
    hooks = [block.mlp.act.register_forward_hook(hook(i)) for i, block in enumerate(model.transformer.h)]
    try:
        model.eval()
        model(windows[:8].to(model.device))
    finally:
        for h in hooks:
            h.remove()
        model.train()
    return [int((~a).sum()) for a in alive]


@dataclass
class _Run:
    """Everything a training loop holds, set up by `_setup`."""
    out: Path
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    train_windows: torch.Tensor
    val_windows: torch.Tensor
    model: SparseGPTForCausalLM
    optimizer: torch.optim.Optimizer
    start: int
    log: dict


def train_sparse(cfg: SparseTrainConfig, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
          stop_after: int = 0, on_step=None) -> SparseTrainResult:
    """Train per `cfg` into cfg.out. `stop_after` > 0 stops after that many steps (as if interrupted; tests);
    `on_step(step, model)` is called after every step's masks (tests, monitoring)."""
    run = _setup(cfg, overwrite, resume)
    model, log, rank, world = run.model, run.log, run.rank, run.world
    step_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    bar = _bar(cfg.steps, run.start, progress and rank == 0)
    t0, tokens0, losses = time.perf_counter(), log["tokens"], []
    end = cfg.steps if not stop_after else min(cfg.steps, run.start + stop_after)
    for step in range(run.start, end):
        rows = batch_rows(step, cfg.batch_size, len(run.train_windows), cfg.seed)[rank::world]
        loss = train_step(step_model, model, run.optimizer, run.train_windows[rows].to(run.device),
                          learning_rate(step, cfg), kept_fraction(step + 1, cfg.steps, cfg.weight_frac, cfg.anneal),
                          cfg)
        if on_step is not None:
            on_step(step + 1, model)
        losses.append(_mean_over_ranks(loss))
        log["tokens"] += cfg.batch_size * cfg.ctx
        wall, done = log["wall_s"] + time.perf_counter() - t0, step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            tok_s=f"{(log['tokens'] - tokens0) / (time.perf_counter() - t0):.0f}")
        evaluate = done % cfg.eval_every == 0 or done == cfg.steps
        save = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps)
        if rank == 0 and evaluate:
            log["history"].append(_eval_row(model, cfg, done, losses, run.val_windows, log["tokens"], wall))
            losses = []
        if rank == 0 and save:
            ck.save_checkpoint(run.out, done, model, run.tokenizer, run.optimizer, cfg.to_json(),
                               {**log, "wall_s": wall})
        if evaluate or save:
            barrier()
    if bar is not None:
        bar.close()
    log["wall_s"] += time.perf_counter() - t0
    if end < cfg.steps:
        return SparseTrainResult(str(run.out), cfg.to_json(), log["history"], {"steps": end, "stopped": True})
    return _finish(run, cfg)


def _setup(cfg: SparseTrainConfig, overwrite: bool, resume: bool) -> _Run:
    """Check the options and the output folder (before any work), then data, tokenizer, model, optimizer, and
    the last checkpoint's state when resuming."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = ensure_group(cfg.device)
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise InputError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} ranks")
    out = Path(on_rank0(_prepare, cfg, overwrite, resume))  # an error there stops every rank with its message
    texts = split_texts("train", cfg.max_train_chars)
    tokenizer = get_tokenizer(cfg, texts)
    train_windows = code_windows(tokenizer, texts, cfg.ctx)
    val_windows = code_windows(tokenizer, split_texts("validation", cfg.max_train_chars // 10), cfg.ctx)
    model = build_model(cfg, tokenizer).to(device)
    optimizer = make_optimizer(model, cfg)
    start, log = 0, {"history": [], "wall_s": 0.0, "tokens": 0}
    if resume and (found := ck.latest_checkpoint(out)) is not None:
        start, log = ck.load_checkpoint(found, model, optimizer)
    else:
        apply_masks(model, kept_fraction(0, cfg.steps, cfg.weight_frac, cfg.anneal), cfg.min_per_neuron)
    model.train()
    return _Run(out, rank, world, device, tokenizer, train_windows, val_windows[:cfg.eval_windows], model, optimizer,
                start, log)


def train_step(step_model, model, optimizer, x: torch.Tensor, lr: float, fraction: float,
               cfg: SparseTrainConfig) -> torch.Tensor:
    """One optimiser step on windows x; then every matrix back to `fraction` kept (1: the dense baseline, no
    masking). `step_model` is the model or its DistributedDataParallel wrapper. Returns the loss (detached)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = step_model(x, labels=x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    apply_masks(model, fraction, cfg.min_per_neuron)
    return loss.detach()


def _prepare(cfg: SparseTrainConfig, overwrite: bool, resume: bool) -> str:
    out = ck.prepare_out(cfg.out, overwrite, resume)
    if resume:
        saved = json.loads((out / ck.CONFIG_FILE).read_text())
        differ = [k for k, v in cfg.to_json().items() if k not in ("out", "threads") and saved.get(k) != v]
        if differ:
            raise InputError(f"cannot resume {out} with a different config: {', '.join(differ)} differ")
    else:
        (out / ck.CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=1))
    return str(out)


def _finish(run: _Run, cfg: SparseTrainConfig) -> SparseTrainResult:
    """Rank 0: test loss (once), the model folder, then the task accuracies (after the model is safe on disk)."""
    final, tasks, model, log = {}, {}, run.model, run.log
    if run.rank == 0:
        test = code_windows(run.tokenizer, split_texts("test", cfg.max_train_chars // 10), cfg.ctx)
        test = test[:cfg.eval_windows * 4]
        final = {"steps": cfg.steps, "tokens": log["tokens"], "wall_s": log["wall_s"],
                 "tokens_per_s": log["tokens"] / max(log["wall_s"], 1e-9), "val_loss": log["history"][-1]["val_loss"],
                 "test_loss": evaluate_loss(model, test), "test_windows": len(test),
                 "nonzero_params": nonzero_params(model), "total_params": sum(p.numel() for p in model.parameters())}
        partial = SparseTrainResult(str(run.out), cfg.to_json(), log["history"], final)
        ck.save_folder(run.out, model, run.tokenizer, {ck.LOG_FILE: partial.to_json()})
        tasks = task_accuracies(model, run.tokenizer, n=cfg.task_prompts)
        result = SparseTrainResult(str(run.out), cfg.to_json(), log["history"], final, tasks)
        ck.save_folder(run.out, model, run.tokenizer, {ck.LOG_FILE: result.to_json()})
    barrier()
    return SparseTrainResult(str(run.out), cfg.to_json(), log["history"], final, tasks)


def _eval_row(model, cfg, step, losses, val_windows, tokens, wall) -> dict:
    return {"step": step, "tokens": tokens, "wall_s": wall, "train_loss": sum(losses) / max(len(losses), 1),
            "val_loss": evaluate_loss(model, val_windows), "lr": learning_rate(step - 1, cfg),
            "kept_fraction": kept_fraction(step, cfg.steps, cfg.weight_frac, cfg.anneal),
            "nonzero_params": nonzero_params(model), "tokens_per_s": tokens / max(wall, 1e-9),
            "density": density_report(model), "dead_neurons": dead_neurons(model, val_windows)}


def _mean_over_ranks(loss: torch.Tensor) -> float:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    return float(loss)


def _bar(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", desc="sparse training", file=sys.stderr,
                dynamic_ncols=True, mininterval=2.0)
