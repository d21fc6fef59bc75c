"""Training checkpoints of an SAE, and resuming from them (issue 14: an interrupted run continues to the same
weights as an uninterrupted one).

    <out>/train_config.json                  the run's TrainConfig (a resumed run must match it)
    <out>/checkpoints/step_000040/           one unit (results.files.atomic_folder):
        cfg.json, sae.safetensors            the SAE at that step (loadable with load_sae like any SAE folder)
        train_state.safetensors              Adam's moments and step counts, the steps since each latent fired
        train_state.json                     step, tokens, history, the scheduler, timings so far

check_train_folder(cfg, overwrite) decides before any work: a new or empty folder starts afresh; a folder holding
an unfinished run of the same config (train_config.json equal, no train.json) resumes from its last checkpoint;
anything else is refused (or replaced with overwrite=True).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmscope.core.errors import InputError
from lmscope.results.base import to_plain
from lmscope.results.files import atomic_folder
from lmscope.results.output import check_output
from lmscope.sae.interop import load_sae, write_sae_files

STATE_JSON, STATE_TENSORS, CONFIG = "train_state.json", "train_state.safetensors", "train_config.json"
_NOT_COMPARED = ("out", "threads")          # where the run is written and how many threads: not the run itself


def same_run(saved: dict, cfg) -> bool:
    mine = cfg.to_json()
    return isinstance(saved, dict) and all(saved.get(k) == v for k, v in mine.items() if k not in _NOT_COMPARED)


def check_train_folder(cfg, *, overwrite: bool = False) -> "Path | None":
    """The output rule for `sae train --out`, with resuming as its exception: returns the checkpoint to resume
    from (None: start afresh); InputError when the folder holds something else and overwrite is not given."""
    if not cfg.out:
        return None
    out = check_output(cfg.out, overwrite=True, folder=True, what="--out")
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return None
    saved = _read_json(out / CONFIG) if (out / CONFIG).is_file() else None
    if saved is None or not same_run(saved, cfg) or (out / "train.json").exists():
        what = "a finished run" if (out / "train.json").exists() else "another run" if saved is not None else \
            "other files"
        raise InputError(f"--out: folder {out} is not empty (it holds {what}); pass --overwrite (overwrite=True) to "
                         f"replace it (an unfinished run of the same command resumes from its last checkpoint)")
    return latest_sae_checkpoint(out)


def latest_sae_checkpoint(out: Path) -> "Path | None":
    steps = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / STATE_JSON).is_file())
    return steps[-1] if steps else None


def save_sae_checkpoint(out, step: int, sae, opt, sched, since_fired: torch.Tensor, state: dict) -> Path:
    """One checkpoint folder, written as one unit."""
    folder = Path(out) / "checkpoints" / f"step_{step:06d}"
    folder.parent.mkdir(exist_ok=True)
    tensors, groups = {"since_fired": since_fired.detach().cpu().contiguous()}, opt.state_dict()
    for index, values in groups["state"].items():
        for key, value in values.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    with atomic_folder(folder) as tmp:
        write_sae_files(sae, tmp)
        save_file(tensors, str(tmp / STATE_TENSORS))
        data = to_plain({**state, "step": step, "param_groups": groups["param_groups"], "scheduler": sched_state})
        (tmp / STATE_JSON).write_text(json.dumps(data, allow_nan=False), encoding="utf-8")
    return folder


def load_sae_checkpoint(folder: Path, sae, opt, sched, since_fired: torch.Tensor) -> dict:
    """Restore the SAE's weights, Adam, the scheduler and `since_fired` in place; return the saved state dict."""
    state = _read_json(folder / STATE_JSON)
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"checkpoint {folder} cannot be read ({exc}); remove it to resume from an earlier one")
    saved = load_sae(folder, device=since_fired.device)
    if saved.cfg.d_sae != sae.cfg.d_sae or saved.cfg.d_in != sae.cfg.d_in:
        raise InputError(f"checkpoint {folder} holds another SAE (d_sae {saved.cfg.d_sae})")
    sae.load_state_dict(saved.state_dict())     # weights and buffers (scales, batchtopk's threshold)
    adam = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            adam.setdefault(int(index), {})[name] = value.to(since_fired.device) if name != "step" else value
    opt.load_state_dict({"state": adam, "param_groups": state["param_groups"]})
    sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(opt.param_groups)})
    since_fired.copy_(tensors["since_fired"])
    return state


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data
