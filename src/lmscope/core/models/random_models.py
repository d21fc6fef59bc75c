"""Tiny random-init models of every supported family, built from configs: no download, seconds to build.

They come with a byte-level tokenizer (256 byte tokens + bos/eos/pad), so text prompts work on them too.
"""
from __future__ import annotations

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from lmscope.core.errors import ModelSpecError
from lmscope.core.models.adapters import register_part_model_type

VOCAB = 260  # 256 bytes + <bos> <eos> <pad>, rounded up
BOS, EOS, PAD = 256, 257, 258

_COMMON = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
_DECODER = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=256, **_COMMON)

_CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=256, **_COMMON),
    "gpt_neox": lambda: tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                         intermediate_size=96, max_position_embeddings=256, rotary_pct=0.25,
                                         use_parallel_residual=True, **_COMMON),
    "llama": lambda: tf.LlamaConfig(**_DECODER),
    "mistral": lambda: tf.MistralConfig(**_DECODER, sliding_window=None),
    "qwen2": lambda: tf.Qwen2Config(**_DECODER),
    "qwen3": lambda: tf.Qwen3Config(**_DECODER, head_dim=16),
    # head_dim differs from hidden/heads on purpose (as in real Gemmas); soft-capping stays on (Gemma 2 default).
    "gemma2": lambda: tf.Gemma2Config(**_DECODER, head_dim=24, query_pre_attn_scalar=24),
    "gemma3": lambda: tf.Gemma3TextConfig(**_DECODER, head_dim=24, query_pre_attn_scalar=24, sliding_window=4,
                                          final_logit_softcapping=30.0),
    "phi3": lambda: tf.Phi3Config(**_DECODER),
    "sparse_gpt": lambda: _sparse_gpt_config(n_layer=3, n_embd=64, n_inner=96, **_COMMON),
    # --- added for issue 14; multipliers far from 1 on purpose, so a site that forgets one fails the parity tests
    "olmo2": lambda: tf.Olmo2Config(**_DECODER),
    "granite": lambda: tf.GraniteConfig(**_DECODER, embedding_multiplier=12.0, residual_multiplier=0.22,
                                        logits_scaling=8.0, attention_multiplier=0.0625),
    "stablelm": lambda: tf.StableLmConfig(**_DECODER, qk_layernorm=True),
    "falcon": lambda: tf.FalconConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_kv_heads=2,
                                      new_decoder_architecture=True, ffn_hidden_size=96,
                                      max_position_embeddings=256, **_COMMON),
    # Falcon-RW: sequential blocks, ALiBi positions, one norm per sublayer
    "falcon_rw": lambda: tf.FalconConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                         parallel_attn=False, alibi=True, multi_query=False, bias=True,
                                         ffn_hidden_size=96, max_position_embeddings=256, **_COMMON),
    # StableLM 2 12B: parallel blocks
    "stablelm_parallel": lambda: tf.StableLmConfig(**_DECODER, use_parallel_residual=True),
    "gptj": lambda: tf.GPTJConfig(n_layer=3, n_embd=64, n_head=4, n_inner=96, rotary_dim=8, n_positions=256,
                                  **_COMMON),
    "cohere": lambda: tf.CohereConfig(**_DECODER, logit_scale=0.5, use_qk_norm=True),
    "mixtral": lambda: tf.MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2),
}
ALIASES = {"pythia": "gpt_neox", "neox": "gpt_neox", "smollm2": "llama", "gemma3_text": "gemma3"}
FAMILIES = tuple(_CONFIGS)


def _sparse_gpt_config(**kwargs):
    register_part_model_type("lmscope_sparse_gpt")  # lmscope.papers.weight_sparse, imported on first use
    return tf.AutoConfig.for_model("lmscope_sparse_gpt", **kwargs)


def random_config(family: str):
    family = ALIASES.get(family, family)
    if family not in _CONFIGS:
        raise ModelSpecError(f"no random model for family '{family}'; choose one of {', '.join(FAMILIES)}")
    return _CONFIGS[family]()


def random_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    config = random_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), byte_tokenizer()


def byte_tokenizer() -> tf.PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<bos>": BOS, "<eos>": EOS, "<pad>": PAD})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
