"""The key/value cache of a prefix (core.runs.prefix_cache / on_cache) continues a forward with the full run's
logits, for every family that keeps one (the weight-sparse model included), also with its rows repeated, the
whole batch tiled or some rows picked, and a copy leaves the cache unchanged."""
import torch

from conftest import plain_logits
from lmscope.core.runs import on_cache, prefix_cache, supports_kv_cache


def test_a_cached_prefix_continues_with_the_full_runs_logits(model, ids):
    assert supports_kv_cache(model)
    full = plain_logits(model, ids)
    cache = prefix_cache(model, ids[:, :4])
    length = cache.get_seq_length()
    with torch.no_grad():
        rest = model.hf(input_ids=ids[:, 4:], **on_cache(model, cache)).logits
        rows = model.hf(input_ids=ids[:, 4:].repeat_interleave(3, 0), **on_cache(model, cache, rows=3)).logits
        tiled = model.hf(input_ids=ids[:, 4:].repeat(2, 1), **on_cache(model, cache, copies=2)).logits
        picked = model.hf(input_ids=ids[[1, 0, 1], 4:], **on_cache(model, cache, select=[1, 0, 1])).logits
    assert torch.allclose(rest, full[:, 4:], atol=1e-5, rtol=1e-4)
    assert torch.allclose(rows, full[:, 4:].repeat_interleave(3, 0), atol=1e-5, rtol=1e-4)   # row b * 3 + j
    assert torch.allclose(tiled, full[:, 4:].repeat(2, 1, 1), atol=1e-5, rtol=1e-4)          # row j * 2 + b
    assert torch.allclose(picked, full[[1, 0, 1], 4:], atol=1e-5, rtol=1e-4)                 # rows 1, 0, 1
    assert cache.get_seq_length() == length == 4             # on_cache ran on copies


def test_the_sparse_models_cache_is_its_own_positions():
    from conftest import random_model
    m = random_model("sparse_gpt")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    cache = prefix_cache(m, ids[:, :5])
    with torch.no_grad():
        shifted = m.hf(input_ids=ids[:, 5:], **on_cache(m, cache)).logits
        fresh = m.hf(input_ids=ids[:, 5:]).logits            # the same tokens at positions 0..3: different
    full = plain_logits(m, ids)
    assert torch.allclose(shifted, full[:, 5:], atol=1e-5)
    assert not torch.allclose(fresh, full[:, 5:], atol=1e-3)
