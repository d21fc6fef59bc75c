"""Model folders and checkpoints of sparse training, all safetensors + JSON, each written to a temporary folder and
renamed into place (a crash never leaves half a checkpoint).

    prepare_out(out, overwrite, resume)   check the output folder BEFORE any work
    save_folder(folder, model, tok, files) a loadable HF folder (config.json, model.safetensors, tokenizer) + JSON
    save_checkpoint / latest_checkpoint / load_checkpoint   resumable state: weights, AdamW state, step, log
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmscope.core.errors import InputError
from lmscope.core.models import load
from lmscope.core.models.loading import no_progress_bar
from lmscope.papers.weight_sparse.model import MODEL_TYPE
from lmscope.results import check_output

CONFIG_FILE, LOG_FILE, STATE_FILE, OPT_FILE = "train_config.json", "train_log.json", "trainer_state.json", "optimizer.safetensors"
CHECKPOINTS = "checkpoints"


def prepare_out(out: str, overwrite: bool, resume: bool) -> Path:
    """The one output rule (lmscope.results.check_output), and --overwrite replaces only an earlier sparse run."""
    if not out:
        raise InputError("give an output folder (--out)")
    path = check_output(Path(out).expanduser(), overwrite=overwrite or resume, folder=True, what="--out")
    if resume:
        if not (path / CONFIG_FILE).is_file():
            raise InputError(f"cannot resume: {path} holds no sparse training run ({CONFIG_FILE} missing)")
        return path
    if path.exists() and any(path.iterdir()):  # check_output let it through: --overwrite was given
        if not (path / CONFIG_FILE).is_file():
            raise InputError(f"{path} is not empty and holds no sparse training run ({CONFIG_FILE} missing): "
                             f"--overwrite only replaces earlier runs; choose another folder")
        shutil.rmtree(path)
    path.mkdir(exist_ok=True)
    return path


def _write_json(folder: Path, name: str, data) -> None:
    (folder / name).write_text(json.dumps(data, indent=1), encoding="utf-8")


def save_folder(folder: Path, model, tokenizer, files: dict, tensors: "dict[str, dict] | None" = None) -> None:
    """Write model + tokenizer + JSON `files` (+ safetensors `tensors`) into `folder`: built in a temporary
    sibling, then each file moved into place (so an existing folder, e.g. the run's own, keeps its other files)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        with no_progress_bar():    # a few MB: no bar needed
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for name, data in files.items():
                _write_json(tmp, name, data)
            for name, named in (tensors or {}).items():
                save_file({k: v.contiguous() for k, v in named.items()}, str(tmp / name))
            for item in tmp.iterdir():
                os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """AdamW state as (tensors for safetensors, JSON for the rest)."""
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value for idx, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, config: dict, log: dict) -> Path:
    folder = out / CHECKPOINTS / f"step_{step:07d}"
    tensors, groups = optimizer_tensors(optimizer)
    tmp_parent = folder.parent
    tmp_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tmp_parent, prefix=".staging-"))
    try:
        save_folder(staging / "c", model, tokenizer, {CONFIG_FILE: config, LOG_FILE: log,
                                                      STATE_FILE: {"step": step, **groups}}, {OPT_FILE: tensors})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging / "c", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def latest_checkpoint(out: Path) -> "Path | None":
    found = sorted(p for p in (out / CHECKPOINTS).glob("step_*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def load_checkpoint(folder: Path, model, optimizer) -> tuple[int, dict]:
    """Weights and AdamW state into `model` / `optimizer`; returns (step, log)."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    state = json.loads((folder / STATE_FILE).read_text())
    flat = load_file(str(folder / OPT_FILE))
    per_param: dict[int, dict] = {}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state["step"], json.loads((folder / LOG_FILE).read_text())


def open_model(folder: str):
    """A saved sparse model (or checkpoint) folder as an lmscope Model, checked first: a folder, a config of
    model_type lmscope_sparse_gpt, a tokenizer whose size matches the model's vocabulary."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a model folder (no config.json)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != MODEL_TYPE:
        raise InputError(f"{path} is not a weight-sparse model: its model_type is {model_type!r}, not {MODEL_TYPE!r}")
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"{path} has no tokenizer.json")
    model = load(f"hf:{path}")
    if len(model.tokenizer) != model.hf.config.vocab_size:
        raise InputError(f"{path}: the tokenizer has {len(model.tokenizer)} tokens but the model's vocabulary is "
                         f"{model.hf.config.vocab_size}; they do not belong together")
    return model
