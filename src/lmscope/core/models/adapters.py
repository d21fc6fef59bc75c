"""Where each site lives, per architecture family. An adapter only names modules; it never computes anything
the model computes itself (the final soft-capping of logits is read from the config and applied as the model does).

To add a family: add an `Adapter` to `ADAPTERS` naming its modules (dotted paths as printed by `print(model)`),
then add a tiny config to `random_models.py` so the parity tests cover it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmscope.core.errors import ModelSpecError


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    layers: str            # the ModuleList of decoder blocks
    embed: str             # token embedding
    final_norm: str
    lm_head: str
    # Paths relative to one block:
    attn: str              # attention module; with eager attention its output[1] is the pattern
    attn_out: str          # module whose output is exactly what attention adds to the residual
    mlp_out: str           # module whose output is exactly what the MLP adds to the residual
    mlp_in_norm: str       # norm whose input is resid_mid (sequential blocks only)
    down_proj: str         # its input is the neurons site
    o_proj: str            # its input is the z site (heads merged)
    parallel_attr: str | None = None  # config flag that makes attention and MLP read the same resid_pre
    notes: str = field(default="", compare=False)

    def is_parallel(self, config) -> bool:
        return bool(self.parallel_attr and getattr(config, self.parallel_attr, False))


_LLAMA_LIKE = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
                   attn="self_attn", attn_out="self_attn", mlp_out="mlp", mlp_in_norm="post_attention_layernorm",
                   down_proj="mlp.down_proj", o_proj="self_attn.o_proj")
# Gemma 2/3 normalise each sublayer's output before adding it: what is added is the post-norm's output.
_GEMMA_LIKE = dict(_LLAMA_LIKE, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                   mlp_in_norm="pre_feedforward_layernorm")

ADAPTERS: tuple[Adapter, ...] = (
    Adapter("gpt2", ("gpt2",), layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
            lm_head="lm_head", attn="attn", attn_out="attn", mlp_out="mlp", mlp_in_norm="ln_2",
            down_proj="mlp.c_proj", o_proj="attn.c_proj",
            notes="resid_pre.0 = token + position embedding; embed is the token embedding alone"),
    Adapter("gpt_neox", ("gpt_neox",), layers="gpt_neox.layers", embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm", lm_head="lm_head", attn="attention",
            attn_out="post_attention_dropout", mlp_out="post_mlp_dropout", mlp_in_norm="post_attention_layernorm",
            down_proj="mlp.dense_4h_to_h", o_proj="attention.dense", parallel_attr="use_parallel_residual",
            notes="Pythia uses parallel attention: resid_post = resid_pre + attn_out + mlp_out"),
    Adapter("llama", ("llama", "mistral", "qwen2", "qwen3"), **_LLAMA_LIKE),
    Adapter("gemma", ("gemma2", "gemma3_text"), **_GEMMA_LIKE),
    Adapter("phi3", ("phi3",), **dict(_LLAMA_LIKE, attn_out="resid_attn_dropout", mlp_out="resid_mlp_dropout")),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(hf_model: nn.Module) -> Adapter:
    model_type = getattr(hf_model.config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ModelSpecError(
        f"architecture '{model_type}' ({type(hf_model).__name__}) is not supported; supported: "
        f"{', '.join(supported_model_types())}. To add one, name its modules in an Adapter in "
        f"lmscope/models/adapters.py and a tiny config in lmscope/models/random_models.py")


def in_features(module: nn.Module) -> int:
    """Input width of a projection: nn.Linear or GPT-2's Conv1D (whose weight is [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and hasattr(module, "nf"):
        return weight.shape[0]
    raise ModelSpecError(f"cannot read the input width of {type(module).__name__}")


def final_logit_softcap(config) -> float | None:
    return getattr(config, "final_logit_softcapping", None) or None
