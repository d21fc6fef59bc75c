"""Where each site lives, per architecture family. An adapter only names modules; it never computes anything
the model computes itself (the final soft-capping of logits is read from the config and applied as the model does).

To add a family: add an `Adapter` to `ADAPTERS` naming its modules (dotted paths as printed by `print(model)`),
then add a tiny config to `random_models.py` so the parity tests cover it.

Families that multiply inside the forward pass name the config attribute, and the multiplication is done where the
model does it, with the same operation, so the sites stay exact:
    residual_scale   what attention and the MLP add is module output x config[attr] (Granite residual_multiplier):
                     attn_out / mlp_out are that product, exactly the tensor the block adds
    logits_scale     logits = lm_head(final_norm(x)) x config[attr]  (Cohere logit_scale)
    logits_divisor   logits = lm_head(final_norm(x)) / config[attr]  (Granite logits_scaling)
`Model.unembed` applies them (and soft-capping), so unembed(last resid_post) is the model's logits.
"""
from __future__ import annotations

import importlib
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
    # q/k/v sites: the projection module(s) and how their output is laid out:
    #   "separate": three modules (q, k, v); "concat": one module whose output is [q | k | v] (k, v with the KV-head
    #   count); "per_head": one module whose output is [heads, 3 * d_head] per token, split q, k, v per head (NeoX)
    qkv: tuple[str, ...] = ()
    qkv_layout: str = "separate"
    attn_in_norm: str | None = None   # norm whose input is what attention reads (the attn_in site)
    notes: str = field(default="", compare=False)
    # --- families added for issue 14 (all optional) ---
    parallel_attrs: tuple[str, ...] = ()    # more such flags (any of them set: parallel)
    always_parallel: bool = False           # attention and MLP always read resid_pre (GPT-J, Cohere)
    residual_scale: str | None = None       # see the module docstring
    logits_scale: str | None = None
    logits_divisor: str | None = None
    mlp_out_reused: bool = False            # the model adds into the MLP's output tensor in place (Falcon): copy it
    block_returns_pair: bool = False        # a block returns (hidden_states, attention weights) (Falcon)
    # why one head's write into the residual stream is not defined (attention's output summed over heads passes a
    # norm or a top-k before it is added); empty: the heads' writes z_h W_O[h] (x residual scale) add up to attn_out
    nonadditive_heads: str = ""

    def is_parallel(self, config) -> bool:
        if self.always_parallel:
            return True
        flags = ((self.parallel_attr,) if self.parallel_attr else ()) + self.parallel_attrs
        return any(bool(getattr(config, flag, False)) for flag in flags)

    @property
    def has_neurons(self) -> bool:
        """False for mixture-of-experts MLPs, whose experts' weights are fused (no one down projection)."""
        return bool(self.down_proj)


_LLAMA_LIKE = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
                   attn="self_attn", attn_out="self_attn", mlp_out="mlp", mlp_in_norm="post_attention_layernorm",
                   down_proj="mlp.down_proj", o_proj="self_attn.o_proj",
                   qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), attn_in_norm="input_layernorm")
# Gemma 2/3 normalise each sublayer's output before adding it: what is added is the post-norm's output.
_GEMMA_LIKE = dict(_LLAMA_LIKE, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                   mlp_in_norm="pre_feedforward_layernorm")

ADAPTERS: tuple[Adapter, ...] = (
    Adapter("gpt2", ("gpt2",), layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
            lm_head="lm_head", attn="attn", attn_out="attn", mlp_out="mlp", mlp_in_norm="ln_2",
            down_proj="mlp.c_proj", o_proj="attn.c_proj", qkv=("attn.c_attn",), qkv_layout="concat",
            attn_in_norm="ln_1",
            notes="resid_pre.0 = token + position embedding; embed is the token embedding alone"),
    Adapter("gpt_neox", ("gpt_neox",), layers="gpt_neox.layers", embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm", lm_head="lm_head", attn="attention",
            attn_out="post_attention_dropout", mlp_out="post_mlp_dropout", mlp_in_norm="post_attention_layernorm",
            down_proj="mlp.dense_4h_to_h", o_proj="attention.dense", parallel_attr="use_parallel_residual",
            qkv=("attention.query_key_value",), qkv_layout="per_head", attn_in_norm="input_layernorm",
            notes="Pythia uses parallel attention: resid_post = resid_pre + attn_out + mlp_out"),
    Adapter("llama", ("llama", "mistral", "qwen2", "qwen3"), **_LLAMA_LIKE),
    Adapter("gemma", ("gemma2", "gemma3_text"), **_GEMMA_LIKE,
            nonadditive_heads="gemma normalises attention's output (its post-attention norm) after the heads are "
                              "summed"),
    Adapter("sparse_gpt", ("lmscope_sparse_gpt",), layers="transformer.h", embed="transformer.wte",
            final_norm="transformer.ln_f", lm_head="lm_head", attn="attn", attn_out="attn", mlp_out="mlp",
            mlp_in_norm="ln_2", down_proj="mlp.c_proj", o_proj="attn.c_proj",
            qkv=("attn.q_act", "attn.k_act", "attn.v_act"), attn_in_norm="ln_1",
            nonadditive_heads="the weight-sparse model keeps the top-k of attention's summed write (AbsTopK)",
            notes="lmscope's weight-sparse GPT (papers/weight_sparse): resid_pre.0 = embed + wpe; neurons are "
                  "after AbsTopK; attention has sinks, so a pattern row sums to less than 1; q/k/v are after "
                  "their AbsTopK"),
    Adapter("phi3", ("phi3",), **dict(_LLAMA_LIKE, attn_out="resid_attn_dropout", mlp_out="resid_mlp_dropout",
                                      qkv=("self_attn.qkv_proj",), qkv_layout="concat")),
    # --- added for issue 14 ---
    Adapter("olmo2", ("olmo2",), **dict(_GEMMA_LIKE, mlp_in_norm="mlp", attn_in_norm="self_attn"),
            nonadditive_heads="OLMo 2 normalises attention's output (post-norm) after the heads are summed",
            notes="no pre-norms: attention reads resid_pre and the MLP reads resid_mid directly; each sublayer's "
                  "output is normalised before it is added (attn_out / mlp_out are those norms' outputs)"),
    Adapter("granite", ("granite",), **_LLAMA_LIKE, residual_scale="residual_multiplier",
            logits_divisor="logits_scaling",
            notes="attn_out / mlp_out include residual_multiplier (exactly what is added); resid_pre.0 = "
                  "embed x embedding_multiplier; logits = lm_head(final_norm) / logits_scaling (in unembed too); "
                  "an edit of attn_out / mlp_out is written back divided by residual_multiplier"),
    Adapter("stablelm", ("stablelm",), **dict(_LLAMA_LIKE, mlp_out="dropout"),
            parallel_attr="use_parallel_residual",
            notes="parallel attention where the config sets use_parallel_residual (StableLM 2 12B)"),
    Adapter("falcon", ("falcon",), layers="transformer.h", embed="transformer.word_embeddings",
            final_norm="transformer.ln_f", lm_head="lm_head", attn="self_attention", attn_out="self_attention",
            mlp_out="mlp", mlp_in_norm="post_attention_layernorm", down_proj="mlp.dense_4h_to_h",
            o_proj="self_attention.dense", parallel_attr="parallel_attn", parallel_attrs=("new_decoder_architecture",),
            mlp_out_reused=True, block_returns_pair=True,
            notes="parallel attention where the config sets parallel_attn or new_decoder_architecture (Falcon 7B/40B/"
                  "180B): resid_post = resid_pre + attn_out + mlp_out"),
    Adapter("gptj", ("gptj",), layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
            lm_head="lm_head", attn="attn", attn_out="attn", mlp_out="mlp", mlp_in_norm="ln_1",
            down_proj="mlp.fc_out", o_proj="attn.out_proj", always_parallel=True,
            qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), attn_in_norm="ln_1",
            notes="parallel attention: resid_post = resid_pre + attn_out + mlp_out; the unembedding has a bias"),
    Adapter("cohere", ("cohere",), **dict(_LLAMA_LIKE, mlp_in_norm="input_layernorm"), always_parallel=True,
            logits_scale="logit_scale",
            notes="parallel attention: resid_post = resid_pre + attn_out + mlp_out; logits = lm_head(final_norm) x "
                  "logit_scale (in unembed too)"),
    Adapter("mixtral", ("mixtral",), **dict(_LLAMA_LIKE, down_proj=""),
            notes="mixture of experts: mlp_out is the sparse MoE block's output (the routed experts' weighted sum); "
                  "the experts' weights are fused 3-D tensors, so there is no neurons site"),
)


# Families whose position table has no row past the configured length (config max_position_embeddings /
# n_positions): a longer input is an error there. Other RoPE models only warn past their configured length.
FIXED_POSITIONS = {"gpt2": "learned position embeddings", "gptj": "a precomputed rotary table"}


# Model types whose Hugging Face classes live in an lmscope part (registered with the Auto classes when that package
# is imported): imported by name on first use, so core never imports a part and `import lmscope` stays light.
PART_MODEL_TYPES = {"lmscope_sparse_gpt": "lmscope.papers.weight_sparse"}


def register_part_model_type(model_type: "str | None") -> None:
    """Import the part that defines `model_type` (if a part does), so transformers' Auto classes know it."""
    if model_type in PART_MODEL_TYPES:
        importlib.import_module(PART_MODEL_TYPES[model_type])


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
        f"lmscope/core/models/adapters.py and a tiny config in lmscope/core/models/random_models.py")


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


def scale_logits(adapter: Adapter, config, logits: torch.Tensor) -> torch.Tensor:
    """The family's own multiplication of lm_head's output (Cohere, Granite), as the model does it."""
    if adapter.logits_scale and getattr(config, adapter.logits_scale, None) is not None:
        logits = logits * getattr(config, adapter.logits_scale)
    if adapter.logits_divisor and getattr(config, adapter.logits_divisor, None) is not None:
        logits = logits / getattr(config, adapter.logits_divisor)
    return logits


def residual_scale(adapter: Adapter, config) -> "float | None":
    """The factor by which attention and MLP outputs are multiplied before they are added (Granite), or None."""
    value = getattr(config, adapter.residual_scale, None) if adapter.residual_scale else None
    return None if value is None or value == 1 else float(value)
