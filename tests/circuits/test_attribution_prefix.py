"""EAP and EAP-IG on a prefix cache: the positions before the first clean/corrupt difference run once per batch,
and the node and edge scores are those of the full passes (prefix_cache=False) up to float rounding."""
import pytest
import torch

from conftest import random_model
from lmscope.circuits import attribution
from lmscope.circuits.attribution import attribute
from lmscope.circuits.tasks import TaskSet, align_changes


def _task(firsts=(4, 5, 4, 6, 4), length=9):
    """Prompts that share their first tokens with their corruption up to firsts[i] (one shorter prompt: padding)."""
    g = torch.Generator().manual_seed(7)
    n = len(firsts)
    clean = torch.randint(0, 256, (n, length), generator=g).tolist()
    corrupt = [row[:f] + [(row[f] + 11) % 256] + row[f + 1:] for row, f in zip(clean, firsts)]
    clean[2], corrupt[2] = clean[2][:-2], corrupt[2][:-2]
    return TaskSet(name="toy", clean=clean, corrupt=corrupt, answer=[30 + i for i in range(n)],
                   wrong=[60 + i for i in range(n)], metric_name="logit_diff", n_filtered=0, filtered={},
                   templates=[0] * n)


def _run(model, task, **kw):
    """The result and the token count of every forward call of the model over the task (the edge plan's
    calibration probe, 4 tokens once per call, not counted)."""
    lengths, probing = [], []
    calibrate = attribution._EdgePlan.calibrate

    def quiet(self, m):
        probing.append(True)
        try:
            calibrate(self, m)
        finally:
            probing.pop()
    attribution._EdgePlan.calibrate = quiet
    handle = model.hf.register_forward_pre_hook(
        lambda m, a, k: None if probing else lengths.append(k["input_ids"].shape[1]), with_kwargs=True)
    try:
        return attribute(model, task, **kw), lengths
    finally:
        handle.remove()
        attribution._EdgePlan.calibrate = calibrate


def _close(new, old, edges: bool):
    """new == old within 1e-5 of the largest score (and tiny relative error everywhere)."""
    def check(a, b):
        a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        scale = float(b.abs().max())
        assert scale > 1e-4                                       # scores that are not all zero
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    check(new.heads, old.heads)
    check(new.mlps + [new.embed], old.mlps + [old.embed])
    if edges:
        assert [[v is None for v in row] for row in new.edges] == [[v is None for v in row] for row in old.edges]
        check([[v or 0.0 for v in row] for row in new.edges], [[v or 0.0 for v in row] for row in old.edges])
    assert new.clean_metric == pytest.approx(old.clean_metric, rel=1e-5, abs=1e-6)
    assert new.corrupt_metric == pytest.approx(old.corrupt_metric, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "sparse_gpt"])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_prefix_cache_gives_the_full_pass_scores(family, method):
    m = random_model(family)
    task = _task()
    edges = not m.adapter.nonadditive_heads       # the weight-sparse model: node scores (its heads' AbsTopK write)
    kw = dict(method=method, steps=3, edges=edges, batch_size=3)     # 2 batches; 3 steps batched as copies
    old, old_lengths = _run(m, task, prefix_cache=False, step_rows=0, **kw)
    new, new_lengths = _run(m, task, **kw)
    _close(new, old, edges=edges)
    # the fast path ran: prompts ordered by their first difference, batches of first differences (4, 4, 4) and
    # (5, 6): prefixes of 4 and 5 tokens, then passes over the 5 and 4 positions after them; the old path ran all 9
    assert set(old_lengths) == {9}
    assert sorted(set(new_lengths)) == [4, 5]
    assert new.notes and "2 of 2 batches" in new.notes[0] and not old.notes


def test_prefix_cache_nodes_on_gemma3_sliding_window():
    m = random_model("gemma3")            # a sliding window of 4 tokens, shorter than the prefix
    task = _task()
    old = attribute(m, task, "eap-ig", steps=2, prefix_cache=False)
    new = attribute(m, task, "eap-ig", steps=2)
    _close(new, old, edges=False)
    assert new.notes


def test_first_tokens_differ_no_prefix():
    m = random_model("llama")
    task = _task(firsts=(0, 3, 0, 2, 5))      # the batch of all prompts differs at its first token
    old = attribute(m, task, "eap-ig", steps=2, edges=True, batch_size=8, prefix_cache=False)
    new, lengths = _run(m, task, method="eap-ig", steps=2, edges=True, batch_size=8)
    _close(new, old, edges=True)
    assert set(lengths) == {9} and not new.notes


def test_model_without_kv_cache_runs_the_full_passes(monkeypatch):
    m = random_model("llama")
    monkeypatch.setattr(attribution, "supports_kv_cache", lambda model: False)     # as a model whose forward takes none
    task = _task()
    old = attribute(m, task, "eap-ig", steps=2, edges=True, batch_size=3, prefix_cache=False)
    new, lengths = _run(m, task, method="eap-ig", steps=2, edges=True, batch_size=3)
    assert set(lengths) == {9} and not new.notes
    assert {**new.to_json(), "seconds": 0} == {**old.to_json(), "seconds": 0}      # the same path, bit for bit


def _ragged_task():
    """Rows whose first changes differ (2, 6, 6) and the row that changes first is the shortest (5 tokens, the
    others 9): one shared prefix (2 tokens) would leave 7 positions a pass; each row's own leaves 3."""
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(0, 256, (3, 9), generator=g).tolist()
    clean[0] = clean[0][:5]
    corrupt = [row[:f] + [(row[f] + 13) % 256] + row[f + 1:] for row, f in zip(clean, (2, 6, 6))]
    return TaskSet(name="toy", clean=clean, corrupt=corrupt, answer=[30, 31, 32], wrong=[60, 61, 62],
                   metric_name="logit_diff", n_filtered=0, filtered={}, templates=[0] * 3)


def test_align_changes_moves_each_row_to_its_own_first_change():
    m = random_model("llama")
    task = _ragged_task()
    (clean, corrupt, mask, _), = task.batches(m, 3)
    c, k, msk, pos, start = align_changes(clean, corrupt, mask)
    assert start == 6 and c.shape == (3, 9)       # 6 columns for the prefixes, 3 for what follows each change
    assert msk.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1]] + [[1] * 9] * 2
    assert c[0, 4:].tolist() == task.clean[0] and c[1].tolist() == task.clean[1]
    assert k[0, 4:].tolist() == task.corrupt[0] and (c[:, :start] == k[:, :start]).all()   # prefixes: no change
    assert (c[:, start] != k[:, start]).all()                                 # every row's first change at start
    assert pos.tolist() == [[0, 0, 0, 0, 0, 1, 2, 3, 4]] + [list(range(9))] * 2
    # a batch where one shared prefix is as short: returned as it is
    same = align_changes(clean[1:], corrupt[1:], mask[1:])
    assert same[3] is None and same[4] == 6 and torch.equal(same[0], clean[1:]) and torch.equal(same[2], mask[1:])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma3", "sparse_gpt"])
def test_rows_with_their_own_prefixes_give_the_full_pass_scores(family):
    m = random_model(family)
    task = _ragged_task()
    edges = not m.adapter.nonadditive_heads
    kw = dict(method="eap-ig", steps=3, edges=edges, batch_size=3)
    old, _ = _run(m, task, prefix_cache=False, step_rows=0, **kw)
    new, lengths = _run(m, task, **kw)
    _close(new, old, edges=edges)
    assert sorted(set(lengths)) == [3, 6]         # the 6 prefix columns once, then 3 positions a pass (not 7)
