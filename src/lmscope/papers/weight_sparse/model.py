"""The weight-sparse transformer of Gao et al. 2025 ("Weight-sparse transformers have interpretable circuits",
arXiv 2511.13653) as an ordinary Hugging Face causal LM of its own model_type, `lmscope_sparse_gpt`.

    AbsTopK                 keep the k largest |x| per row (k = round(afrac * width)), zero the rest; the gradient
                            flows through the kept entries only
    SparseGPTConfig         the config (registered with AutoConfig)
    SparseGPTForCausalLM    the model (registered with AutoModelForCausalLM): transformer.{wte, wpe, h[i], ln_f}
                            and an untied lm_head, GPT-2 module names so lmscope's adapter can name every site

A block (GPT-2 layout, pre-norm):
    x = resid_pre
    a = attn(ln_1(x))          attn: read AbsTopK -> q_proj/k_proj/v_proj, each AbsTopK'd -> causal attention
                               with a learned per-head sink logit -> c_proj -> write AbsTopK
    resid_mid = x + a
    m = mlp(ln_2(resid_mid))   mlp: read AbsTopK -> c_fc -> GELU -> AbsTopK (the neurons) -> c_proj -> write AbsTopK
    resid_post = resid_mid + m
Weight sparsity is not in the model: training keeps each weight matrix's top-k entries (train.py); a saved model
is an ordinary dense tensor file whose zeros are the pruned weights.

Differences from the paper, as far as we know it: no biases anywhere (they would be dense parameters); learned
absolute position embeddings as in GPT-2 and the embedding sum (wte + wpe) is not AbsTopK'd, so resid_pre.0 =
embed + wpe; no bigram table; the RMSNorm gains are kept as separate dense vectors (not folded into the next
weights); one AbsTopK fraction `afrac` for every location.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "lmscope_sparse_gpt"


def abstopk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest magnitude in each row (last dim), zero the rest. The mask carries no
    gradient, so the gradient reaches x only at the kept entries."""
    if k >= x.shape[-1]:
        return x
    index = x.abs().topk(k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(x).scatter_(-1, index, 1.0)
    return x * mask


class AbsTopK(nn.Module):
    """AbsTopK over the last dim as a module (so it shows in print(model) and can be hooked)."""

    def __init__(self, width: int, afrac: float):
        super().__init__()
        self.k = max(1, round(afrac * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return abstopk(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


class SparseGPTConfig(PretrainedConfig):
    """Shape of a weight-sparse transformer. n_head = n_embd // d_head."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 2048, n_positions: int = 256, n_embd: int = 128, n_layer: int = 2,
                 d_head: int = 16, n_inner: int = 512, afrac: float = 0.25, rms_norm_eps: float = 1e-6,
                 initializer_range: float = 0.02, bos_token_id: int = 0, eos_token_id: int = 0,
                 pad_token_id: "int | None" = None, tie_word_embeddings: bool = False, **kwargs):
        if n_embd % d_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of d_head ({d_head})")
        self.vocab_size, self.n_positions, self.n_embd, self.n_layer = vocab_size, n_positions, n_embd, n_layer
        self.d_head, self.n_head, self.n_inner, self.afrac = d_head, n_embd // d_head, n_inner, afrac
        self.rms_norm_eps, self.initializer_range = rms_norm_eps, initializer_range
        # HF-generic names that generation and lmscope read
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = n_embd, n_layer, n_embd // d_head
        self.max_position_embeddings = n_positions
        kwargs.pop("n_head", None)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            kwargs.pop(name, None)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=False, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SparseAttention(nn.Module):
    """Causal multi-head attention with a learned sink logit per head: softmax over [scores, sink], the sink's
    share is dropped (it is attention to nothing). Returns (output, pattern [b, heads, q, k]); a pattern row sums
    to 1 minus the sink's share."""

    def __init__(self, config: SparseGPTConfig):
        super().__init__()
        d, self.n_head, self.d_head = config.n_embd, config.n_head, config.d_head
        self.read = AbsTopK(d, config.afrac)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.q_act, self.k_act, self.v_act = (AbsTopK(d, config.afrac) for _ in range(3))
        self.sink = nn.Parameter(torch.zeros(self.n_head))
        self.c_proj = nn.Linear(d, d, bias=False)
        self.write = AbsTopK(d, config.afrac)

    def forward(self, x: torch.Tensor, key_mask: "torch.Tensor | None" = None, cache=None, layer: int = 0):
        """cache: a transformers Cache holding the keys and values of earlier positions (this layer's entry is
        extended in place); key_mask then covers the earlier positions and these."""
        b, t, d = x.shape
        x = self.read(x)
        heads = lambda y: y.view(b, t, self.n_head, self.d_head).transpose(1, 2)  # noqa: E731
        q = heads(self.q_act(self.q_proj(x)))
        k = heads(self.k_act(self.k_proj(x)))
        v = heads(self.v_act(self.v_proj(x)))
        if cache is not None:
            k, v = cache.update(k, v, layer)
        past = k.shape[2] - t
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)             # [b, h, t, past + t]
        allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~allowed, float("-inf"))
        sink = self.sink.view(1, -1, 1, 1).expand(b, -1, t, 1).to(scores.dtype)
        pattern = torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]
        z = (pattern @ v).transpose(1, 2).reshape(b, t, d)                      # heads merged: the z site
        return self.write(self.c_proj(z)), pattern


class SparseMLP(nn.Module):
    def __init__(self, config: SparseGPTConfig):
        super().__init__()
        self.read = AbsTopK(config.n_embd, config.afrac)
        self.c_fc = nn.Linear(config.n_embd, config.n_inner, bias=False)
        self.act = AbsTopK(config.n_inner, config.afrac)   # its output is the neurons site
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, bias=False)
        self.write = AbsTopK(config.n_embd, config.afrac)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.write(self.c_proj(self.act(F.gelu(self.c_fc(self.read(x))))))


class SparseBlock(nn.Module):
    def __init__(self, config: SparseGPTConfig):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.attn = SparseAttention(config)
        self.ln_2 = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SparseMLP(config)

    def forward(self, x: torch.Tensor, key_mask: "torch.Tensor | None" = None, cache=None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask, cache, layer)[0]
        return x + self.mlp(self.ln_2(x))


class SparseGPTPreTrainedModel(PreTrainedModel):
    config_class = SparseGPTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["SparseBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and getattr(module, "_is_residual_write", False):
            nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        if isinstance(module, SparseAttention):
            nn.init.zeros_(module.sink)


class SparseGPTModel(SparseGPTPreTrainedModel):
    def __init__(self, config: SparseGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(SparseBlock(config) for _ in range(config.n_layer))
        self.ln_f = RMSNorm(config.n_embd, config.rms_norm_eps)
        for block in self.h:
            block.attn.c_proj._is_residual_write = block.mlp.c_proj._is_residual_write = True
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: "torch.Tensor | None" = None,
                position_ids: "torch.Tensor | None" = None, cache=None) -> torch.Tensor:
        """cache: keys and values of the positions before input_ids (extended in place); positions continue
        after them, and attention_mask, if given, covers them too."""
        t = input_ids.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if past + t > self.config.n_positions:
            raise ValueError(f"sequence of {past + t} tokens is longer than the model's context "
                             f"({self.config.n_positions})")
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)
        for i, block in enumerate(self.h):
            x = block(x, attention_mask, cache, i)
        return self.ln_f(x)


class SparseGPTForCausalLM(SparseGPTPreTrainedModel, GenerationMixin):
    def __init__(self, config: SparseGPTConfig):
        super().__init__(config)
        self.transformer = SparseGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: "torch.Tensor | None" = None,
                position_ids: "torch.Tensor | None" = None, cache=None, labels: "torch.Tensor | None" = None,
                use_cache: bool = False, logits_to_keep: "int | torch.Tensor" = 0, **kwargs) -> CausalLMOutputWithPast:
        """A key/value cache as in transformers: `cache` (or `past_key_values`) holds earlier positions and is
        extended in place; use_cache=True without one starts a new cache, returned as `.cache`. logits_to_keep=n:
        logits of the last n positions only (0: all); a 1-D tensor: of those positions (as transformers' models).
        Generation runs without a cache (prepare_inputs_for_generation).
        Other generation kwargs are accepted and ignored."""
        cache = cache if cache is not None else kwargs.get("past_key_values")
        if cache is None and use_cache:
            cache = DynamicCache()
        hidden = self.transformer(input_ids, attention_mask, position_ids, cache if use_cache else None)
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


AutoConfig.register(MODEL_TYPE, SparseGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(SparseGPTConfig, SparseGPTForCausalLM, exist_ok=True)
