"""LRE's fast path (lre(resume=True): prompts in blocks of one length and subject position, a cached prefix, each
layer's edits of a block in one resumed batch) against the plain path (resume=False: each prompt alone, every pass
from the embedding, one pass per edit): the same fit, on families with a KV cache and on a model without one
(supports_kv_cache patched to say so, as for a forward that takes none: the fallback runs whole prompts)."""
import importlib

import pytest
import torch
from conftest import random_model

from lmscope.lenses.lre import Relation, jacobian, lre, relation_prompt

lre_mod = importlib.import_module("lmscope.lenses.lre")   # the module (lmscope.lenses.lre is the function)

SUBJECTS = ["ab", "cde", "f", "ghij", "kl", "mno", "p", "qrs", "tu"]   # 1 to 4 bytes: four blocks
TEMPLATE = "{} is"                                                        # tokens after the subject: pos < last


def _own_answers(m, monkeypatch) -> Relation:
    """Objects = the model's greedy answers to the zero-shot prompts (object strings are token ids), so with
    n_demo=0 every subject is one the model gets right and the held-out numbers are measured."""
    tops = [int(m.run(TEMPLATE.format(s)).logits[0, -1].argmax()) for s in SUBJECTS]
    assert len(set(tops)) >= 3, "the random model answers too few distinct tokens for causal pairs"
    monkeypatch.setattr(lre_mod, "object_token", lambda model, obj: int(obj) % model.vocab_size)
    return Relation("own", TEMPLATE, tuple((s, str(t)) for s, t in zip(SUBJECTS, tops)))


def _prompts(m):
    rel = Relation("toy", "Q {} =", tuple((s, "x") for s in SUBJECTS))     # tokens before the subject: a prefix
    return {s: relation_prompt(m, rel, [], s) for s in SUBJECTS}


def _without_kv_cache(monkeypatch):
    monkeypatch.setattr(lre_mod, "supports_kv_cache", lambda model: False)


def _forward_calls(m):
    calls = []
    return calls, m.hf.register_forward_pre_hook(lambda *_: calls.append(1))


# llama: rotary positions and a grouped KV cache; gemma3: sliding-window layers shorter than the cached prefix;
# falcon_rw: ALiBi positions; sparse_gpt: the weight-sparse model, with its KV cache and without (the fallback:
# whole prompts, still batched and resumed)
@pytest.mark.parametrize("family,n_demo,kv_cache", [("llama", 0, True), ("llama", 1, True), ("gemma3", 0, True),
                                                    ("falcon_rw", 0, True), ("sparse_gpt", 0, True),
                                                    ("sparse_gpt", 0, False)])
def test_fast_fit_equals_the_plain_fit(family, n_demo, kv_cache, monkeypatch):
    m = random_model(family)
    if not kv_cache:
        _without_kv_cache(monkeypatch)
    rel = _own_answers(m, monkeypatch)
    # (not the last layer: there s, before the last token, cannot reach o; W = 0. test_lre.py fits it with the
    # subject as the last token)
    opts = dict(layers=[0, 1], betas=[1.0, 2.0], ranks=[2, 8, 32], n_train=4, n_demo=n_demo)
    fast, plain = lre(m, rel, **opts).to_json(), lre(m, rel, resume=False, **opts).to_json()
    probs = [[f.pop("loo_object_prob") for f in r["layers"]] for r in (fast, plain)]
    # layer, beta, rank, held-out faithfulness and causality, every leave-one-out score, the per-subject rows
    assert fast == plain
    for a, b in zip(*probs):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9)
    if n_demo == 0:
        assert fast["n_test"] == len(SUBJECTS) - 4 and fast["n_causal_pairs"] >= 2
    assert not m.has_hooks()


@pytest.mark.parametrize("family,kv_cache", [("llama", True), ("gemma3", True), ("sparse_gpt", False)])
@pytest.mark.parametrize("layer", [0, -2])   # at the last layer s (not the last token) cannot reach o
def test_one_batch_per_block_gives_every_edits_logits(family, kv_cache, layer, monkeypatch):
    m = random_model(family)
    if not kv_cache:
        _without_kv_cache(monkeypatch)
    layer %= m.n_layers
    prompts = _prompts(m)
    fast = lre_mod._clean_runs(m, prompts, [layer], batched=True)
    plain = lre_mod._clean_runs(m, prompts, [layer], batched=False)
    blocks = {id(c.block): c.block for c in fast.values()}
    assert len(blocks) == 4
    for s, (ids, pos) in prompts.items():
        block = fast[s].block
        assert torch.equal(block.ids[fast[s].row], ids[0]) and block.pos == pos > 0
        assert block.start == (pos if kv_cache else 0) and (block.prefix is None) != kv_cache
        torch.testing.assert_close(fast[s].s(layer), plain[s].s(layer), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast[s].o, plain[s].o, rtol=1e-5, atol=1e-5)
        assert fast[s].top == plain[s].top
    g = torch.Generator().manual_seed(0)
    # every prompt edited, three of them twice with other values (rows repeated in their block's batch)
    requests = [(s, plain[s].s(layer) + 3 * torch.randn(m.d_model, generator=g)) for s in SUBJECTS + SUBJECTS[:3]]
    calls, hook = _forward_calls(m)
    try:
        batched = lre_mod._edited_logits(m, fast, layer, requests, resume=True)
        assert len(calls) == len(blocks)
        one_by_one = lre_mod._edited_logits(m, plain, layer, requests, resume=False)
        assert len(calls) == len(blocks) + len(requests)
    finally:
        hook.remove()
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-4)
    unedited = torch.stack([m.run(prompts[s][0]).logits[0, -1] for s, _ in requests])
    assert (batched - unedited).abs().amax(-1).min() > 1e-2          # every row was edited, its own way
    assert (batched[:3] - batched[len(SUBJECTS):]).abs().amax(-1).min() > 1e-2


@pytest.mark.parametrize("family", ["llama", "falcon_rw"])
def test_jacobian_of_a_row_inside_a_block(family):
    # the cached prefix of a block holds several prompts: the Jacobian must run on its own row of it
    m = random_model(family)
    prompts = _prompts(m)
    clean = lre_mod._clean_runs(m, prompts, [0, 1], batched=True)
    subject = next(s for s in SUBJECTS if clean[s].row > 0)
    fast = lre_mod._jacobians_resumed(m, clean[subject], [0, 1], None)
    for layer in (0, 1):
        plain = jacobian(m, *prompts[subject], layer, resume=False)
        assert plain[0].abs().max() > 1e-3
        for a, b in zip(fast[layer], plain):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
