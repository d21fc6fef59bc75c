"""Batched generation over prompts of different lengths (left padding) equals one-by-one generation, token for
token, with edits whose positions and per-position values count each row's own tokens."""
import pytest
import torch

import lmscope
from lmscope.core.errors import InputError

PROMPTS = ["Hello there, how", "ab", "The capital of France is"]


def one_by_one(model, prompts, edits_for, n):
    """The reference: each prompt alone, unpadded (generate_rows' path, no row offsets)."""
    out = []
    for i, p in enumerate(prompts):
        row = model.encode(p)[0][0].tolist()
        ids = model.generate_rows([row], edits_for(i), max_new_tokens=n)
        out.append(ids[0])
    return out


def test_batched_equals_one_by_one_with_shared_edits(model):
    g = torch.Generator().manual_seed(0)
    edits = [lmscope.add("resid_pre.1", (torch.randn(model.d_model, generator=g) * 20).to(model.dtype),
                         positions=slice(0, 2)),
             lmscope.add("resid_post.1", (torch.randn(model.d_model, generator=g) * 4).to(model.dtype), positions=[-1])]
    batched = model.generate_batch(PROMPTS, edits, max_new_tokens=8)
    alone = one_by_one(model, PROMPTS, lambda i: edits, 8)
    assert batched == alone
    # the early-position edit changes the short row's answer: counted on the padded batch instead of the row's own
    # tokens, it would land on padding and the comparison above would fail
    assert alone[1] != one_by_one(model, PROMPTS, lambda i: edits[-1:], 8)[1]


def test_per_row_edits_and_per_position_values():
    model = lmscope.load("random:llama")
    g = torch.Generator().manual_seed(3)
    longest = max(len(model.encode(p)[0][0]) for p in PROMPTS) + 8
    per_pos = torch.randn(longest, model.d_model, generator=g) * 3          # row-local positions
    own = [[lmscope.add("resid_pre.1", torch.randn(model.d_model, generator=g) * 5, positions=slice(1, None))]
           for _ in PROMPTS]
    shared = [lmscope.add("resid_post.0", per_pos)]
    edits_for = lambda i: own[i] + shared                                     # noqa: E731
    batched = model.generate_batch(PROMPTS, [edits_for(i) for i in range(len(PROMPTS))], max_new_tokens=6,
                                   token_ids=True)
    alone = [model.generate_batch([p], [edits_for(i)], max_new_tokens=6, token_ids=True)[0]
             for i, p in enumerate(PROMPTS)]
    assert batched == alone
    assert [model.tokenizer.decode(r, skip_special_tokens=True) for r in batched] == \
        one_by_one(model, PROMPTS, edits_for, 6)


def test_padding_is_never_edited_and_errors():
    model = lmscope.load("random:llama")
    # an edit of every position must leave padding alone (else the pad keys would change nothing, as they are
    # masked, but a replace of positions 1.. must start at each row's own token 1)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 20
    edits = [lmscope.add("resid_pre.1", v, positions=[1])]
    assert model.generate_batch(PROMPTS, edits, max_new_tokens=5) == one_by_one(model, PROMPTS, lambda i: edits, 5)
    with pytest.raises(InputError, match="edit lists"):
        model.generate_batch(PROMPTS, [[], []], max_new_tokens=2)
    with pytest.raises(InputError, match="non-empty list"):
        model.generate_batch("one prompt", max_new_tokens=2)
    assert not model.has_hooks()
