"""The model a benchmark runs on: `lmscope.load(spec)`, or for spec "random:smollm2-size" a randomly initialised
Llama with SmolLM2-135M's exact shape (30 layers, d_model 576, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152),
for machines without the default model's weights (speed does not depend on the weights' values)."""
from __future__ import annotations

import torch
import transformers as tf

import lmscope
from lmscope.core.models.model import Model
from lmscope.core.models.random_models import byte_tokenizer

SMOLLM2_SHAPE = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                     rope_theta=100000.0, rms_norm_eps=1e-5)


def bench_model(spec: str, *, dtype="float32", device=None) -> Model:
    if spec != "random:smollm2-size":
        return lmscope.load(spec, dtype=dtype, device=device)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(**SMOLLM2_SHAPE)).to(torch_dtype)
    return Model(hf.eval().to(device or "cpu"), byte_tokenizer(), spec)


def n_params(model: Model) -> int:
    """Parameters used per token in a forward (the tied embedding counted once, as the unembedding matmul)."""
    return sum(p.numel() for p in model.hf.parameters())
