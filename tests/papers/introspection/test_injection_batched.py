"""Introspection's injection edits (one vector per row, from position `start` on) in one left-padded batch of
prompts of different lengths: the same answers as each prompt generated alone with its own vector."""
import torch

from conftest import random_model
from lmscope.papers.introspection.trials import generate_injected, injection_edits


def test_injections_batched_over_lengths_equal_each_row_alone():
    m = random_model("llama")
    g = torch.Generator().manual_seed(0)
    rows = [m.tokenizer(p)["input_ids"] for p in ["I think that", "Do you detect a thought?", "ok"]]
    injections = [(1, torch.randn(m.d_model, generator=g) * 8), (2, torch.randn(m.d_model, generator=g) * 8),
                  (1, torch.randn(m.d_model, generator=g) * 8)]
    start = 1
    batched = m.generate_batch(rows, injection_edits(injections, start), max_new_tokens=6)
    alone = [m.generate_rows([r], injection_edits([inj], start), max_new_tokens=6)[0]
             for r, inj in zip(rows, injections)]
    assert batched == alone
    assert alone != [m.generate_rows([r], max_new_tokens=6)[0] for r in rows]     # the injections act


def test_generate_injected_takes_rows_of_different_lengths():
    m = random_model("qwen2")
    g = torch.Generator().manual_seed(1)
    rows = [m.tokenizer(p)["input_ids"] for p in ["a longer prompt here", "short"]]
    injections = [(1, torch.randn(m.d_model, generator=g) * 8), (0, torch.randn(m.d_model, generator=g) * 8)]
    got = generate_injected(m, rows, injections, 2, 4, max_new_tokens=5)
    assert got == [generate_injected(m, [r], [inj], 2, 4, max_new_tokens=5)[0] for r, inj in zip(rows, injections)]
