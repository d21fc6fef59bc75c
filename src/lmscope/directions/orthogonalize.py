"""Weight orthogonalisation (Arditi et al. 2024): directional ablation baked into a copy of the weights.

Every matrix that writes into the residual stream loses its output component along u (unit direction):

    W_out <- W_out - u u^T W_out      attention output projections, MLP down projections (and their biases)
    E     <- E - (E u) u^T            the token embedding (rows are residual vectors), and GPT-2's position embedding

so the residual stream never has a component on u, exactly as with the hook-based `steering.ablation_edits`.
Tied embeddings are untied in the copy: the unembedding must keep reading the original vectors.
Gemma 2/3 and OLMo 2 normalise each sublayer's output before adding it to the residual stream, and the
weight-sparse model keeps only the top-k of each residual write: the written vector is not a linear function of the
projection's output, so the edit cannot be baked into weights. These families, and mixture-of-experts blocks
(Mixtral), are refused with a clear error; tests/directions/test_orthogonalize.py checks every other family.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from lmscope.core import __version__
from lmscope.core.errors import InputError
from lmscope.core.models.loading import no_progress_bar
from lmscope.core.models.model import Model
from lmscope.directions.steering import as_vector
from lmscope.directions.vector_files import Direction
from lmscope.results.files import current_umask
from lmscope.results.output import check_output

REFUSED_FAMILIES = {"gemma": "Gemma 2/3 pass each sublayer's output through a norm before the residual stream, so "
                             "a projection in the weights is not a projection of what is added; use the hook-based "
                             "ablation (lmscope.steering.ablation_edits) instead",
                    "olmo2": "OLMo 2 normalises each sublayer's output before the residual stream (post-norm), so a "
                             "projection in the weights is not a projection of what is added; use the hook-based "
                             "ablation (lmscope.steering.ablation_edits) instead",
                    "sparse_gpt": "the weight-sparse model keeps the top-k of every residual write (AbsTopK), which "
                                  "is not linear in the projection's output; use the hook-based ablation "
                                  "(lmscope.steering.ablation_edits) instead",
                    "mixtral": "a mixture-of-experts block has no single down projection to edit; use the "
                               "hook-based ablation (lmscope.steering.ablation_edits) instead"}


def writers(model) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every parameterised module whose output is added to the residual stream.
    kind: 'embedding' (rows are residual vectors), 'linear' (weight [d_out, d_in]), 'conv1d' (GPT-2: [d_in, d_out])."""
    a = model.adapter
    found = [(a.embed, model.module(a.embed), "embedding")]
    if a.family == "gpt2":
        found.append(("transformer.wpe", model.module("transformer.wpe"), "embedding"))
    for layer in range(model.n_layers):
        for rel in (a.o_proj, a.down_proj):
            module = model.block_module(layer, rel)
            kind = "linear" if isinstance(module, nn.Linear) else "conv1d"
            found.append((f"{a.layers}.{layer}.{rel}", module, kind))
    return found


@torch.no_grad()
def orthogonalize(model, direction):
    """A new lmscope Model: a deep copy of `model` whose weights no longer write anything along `direction`."""
    if model.adapter.family in REFUSED_FAMILIES:
        raise InputError(f"cannot orthogonalise {model.adapter.family} weights exactly: "
                         f"{REFUSED_FAMILIES[model.adapter.family]}")
    if any(p.is_meta for p in model.hf.parameters()):
        # accelerate's hooks would load the stored weights over the copy's edited ones: silently the original model
        raise InputError("cannot orthogonalise an offloaded model (device_map with CPU or disk offload): its weights "
                         "are loaded from the offload store at each forward; load it without offload")
    v = as_vector(model, direction).double()
    if float(v.norm()) == 0:
        raise InputError("cannot orthogonalise against a zero direction")
    u = v / v.norm()
    hf = copy.deepcopy(model.hf)
    clone = Model(hf, model.tokenizer, f"{model.spec}+orthogonalized")
    _untie(clone)
    for _, module, kind in writers(clone):
        w = module.weight
        uu = u.to(w.device)
        w64 = w.double()
        if kind == "linear":                       # output dim first
            new = w64 - torch.outer(uu, uu @ w64)
        else:                                      # embedding / Conv1D: output dim last
            new = w64 - torch.outer(w64 @ uu, uu)
        w.copy_(new.to(w.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None and kind != "embedding":
            b64 = bias.double()
            bias.copy_((b64 - (b64 @ uu) * uu).to(bias.dtype))
    return clone


def _untie(model) -> None:
    head = model.module(model.adapter.lm_head)
    embed = model.module(model.adapter.embed)
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(embed.weight.detach().clone())
    config = model.hf.config
    config.tie_word_embeddings = False
    text = getattr(config, "get_text_config", None)
    if text is not None:
        text(decoder=True).tie_word_embeddings = False


def save_model(model, folder, *, metadata: "dict | None" = None, overwrite: bool = False) -> Path:
    """Write a Model's weights (safetensors), config and tokenizer into a new folder, loadable with
    lmscope.load('hf:<folder>'). Written into a temporary folder renamed into place; an existing non-empty folder
    is refused unless overwrite=True (then it is replaced once the new one is complete)."""
    folder = check_output(folder, overwrite=overwrite, folder=True, what="output folder")
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        with no_progress_bar():                # a one-shard write needs no progress bar
            model.hf.save_pretrained(tmp, safe_serialization=True)
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(tmp)
            if metadata is not None:
                (tmp / "lmscope_orthogonalization.json").write_text(json.dumps(metadata, indent=1), encoding="utf-8")
            if folder.exists():                    # empty, or overwrite=True: replaced by the finished folder
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            os.chmod(folder, 0o777 & ~current_umask())
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save_orthogonalized(model, direction, folder, *, overwrite: bool = False) -> Path:
    """orthogonalize + save_model, with a note of the direction (its metadata and hash) beside the weights."""
    check_output(folder, overwrite=overwrite, folder=True, what="output folder")
    clone = orthogonalize(model, direction)
    v = as_vector(model, direction).to("cpu", torch.float32).contiguous()
    meta = {"source_model": model.spec, "lmscope_version": __version__,
            "direction_sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest(),
            "direction": direction.to_json() if isinstance(direction, Direction) else None,
            "edited": [name for name, _, _ in writers(clone)]}
    return save_model(clone, folder, metadata=meta, overwrite=overwrite)
