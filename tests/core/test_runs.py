"""core.runs: a prefix's KV cache, and running the next tokens on copies of it."""
import pytest
import torch

from conftest import random_model
from lmscope.core.runs import on_cache, prefix_cache


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_on_cache_repeats_and_tiles_the_rows(family):
    m = random_model(family)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    cache = prefix_cache(m, ids[:, :4])
    with torch.no_grad():
        full = m.hf(input_ids=ids).logits[:, 4:]
        tiled = m.hf(input_ids=ids[:, 4:].repeat(3, 1), **on_cache(m, cache, copies=3)).logits
        repeated = m.hf(input_ids=ids[:, 4:].repeat_interleave(2, 0), **on_cache(m, cache, rows=2)).logits
    torch.testing.assert_close(tiled, full.repeat(3, 1, 1), rtol=1e-5, atol=1e-5)      # row j * 2 + b
    torch.testing.assert_close(repeated, full.repeat_interleave(2, 0), rtol=1e-5, atol=1e-5)   # row b * 2 + j
    assert cache.get_seq_length() == 4                     # the cache given is left as it was
    assert on_cache(m, None) == {"use_cache": False}
