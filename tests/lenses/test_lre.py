import importlib
import json

import pytest
import torch
from conftest import random_model

import lmscope
from lmscope.core.errors import InputError
from lmscope.lenses.lre import (Relation, jacobian, jacobians, load_relation, lre, relation_from_pairs,
                               relation_prompt)

lre_mod = importlib.import_module("lmscope.lenses.lre")   # the module (lmscope.lenses.lre is the function)

REL = Relation("toy", "The capital of {} is", (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome")))


def test_jacobian_matches_finite_differences():
    m = random_model("llama")
    ids, pos = relation_prompt(m, REL, REL.pairs[:2], "Germany")
    assert m.to_str_tokens(ids[0, pos: pos + 1]) == ["y"]          # last byte of the subject
    layer, last = 1, m.n_layers - 1
    W, s, o = jacobian(m, ids, pos, layer, chunk=24)                # chunks that do not divide d_model
    eps, cols = 1e-3, []
    for i in range(m.d_model):
        e = torch.zeros(m.d_model)
        e[i] = eps
        out = [m.run(ids, read=[f"resid_post.{last}"], edits=[lmscope.replace(f"resid_post.{layer}", s + sign * e,
                                                                              positions=[pos])]
                     ).acts[f"resid_post.{last}"][0, -1] for sign in (1, -1)]
        cols.append((out[0] - out[1]) / (2 * eps))
    fd = torch.stack(cols, 1)
    assert W.abs().max() > 1e-3
    assert (W - fd).abs().max() < 2e-3 * W.abs().max()
    assert torch.allclose(o, m.run(ids, read=[f"resid_post.{last}"]).acts[f"resid_post.{last}"][0, -1])


def test_affine_fit_reproduces_output_at_training_example():
    m = random_model("llama")
    ids, pos = relation_prompt(m, REL, REL.pairs[:1], "Japan")
    W, s, o = jacobian(m, ids, pos, 0)
    b = o - W @ s
    assert torch.allclose(W @ s + b, o, atol=1e-5)
    # decoded through the model's own final norm + unembedding it is the model's output distribution
    logits = m.run(ids).logits[0, -1]
    assert torch.allclose(m.unembed(W @ s + b), logits, atol=1e-4)


def _self_consistent(m, monkeypatch, wrong=()):
    """A relation whose objects are the model's own greedy answers (zero-shot), objects = token ids as text."""
    subjects = ["ab", "cd", "ef", "gh", "ij", "kl"]
    tmpl = "Q {}"
    tops = [int(m.run(tmpl.format(s)).logits[0, -1].argmax()) for s in subjects]
    assert len(set(tops)) > 1
    pairs = tuple((s, str(t + 1 if s in wrong else t)) for s, t in zip(subjects, tops))
    monkeypatch.setattr(lre_mod, "object_token", lambda model, obj: int(obj) % model.vocab_size)
    return Relation("self", tmpl, pairs)


def test_last_layer_is_identity_faithful_and_causal(monkeypatch):
    # s at the last layer and last position IS o: W = I, b = 0, so the LRE is exact (beta 1) and the inverse edit
    # with full rank moves s to o', whose top-1 is the other subject's answer: both metrics must be exactly 1.
    m = random_model("llama")
    rel = _self_consistent(m, monkeypatch)
    r = lre(m, rel, layers=[m.n_layers - 1], betas=[1.0, 3.0], ranks=[1, m.d_model], n_train=2, n_demo=0)
    assert r.n_test == 4 and r.n_train == 2 and r.n_causal_pairs >= 1
    assert r.layers[0].loo_faithfulness["1"] == 1.0 and r.beta == 1.0 and r.faithfulness == 1.0
    assert r.layers[0].loo_causality[str(m.d_model)] == 1.0 and r.rank == m.d_model and r.causality == 1.0
    assert r.layers[0].loo_causality["1"] < 1.0          # a rank-1 inverse cannot move s all the way
    json.dumps(r.to_json())
    assert "faithfulness 100.0%" in r.summary()


def test_subjects_the_model_gets_wrong_are_not_counted(monkeypatch):
    m = random_model("llama")
    # the seeded split puts these subjects in the held-out set (n_train=2): one marked wrong leaves 3
    rel = _self_consistent(m, monkeypatch)
    held = [p[0] for p in [rel.pairs[i] for i in torch.randperm(6, generator=torch.Generator().manual_seed(0))][2:]]
    rel = _self_consistent(m, monkeypatch, wrong=held[:1])
    r = lre(m, rel, layers=[m.n_layers - 1], betas=[1.0], ranks=[m.d_model], n_train=2, n_demo=0)
    assert r.n_test == 3 and held[0] not in [row["subject"] for row in r.test]


def test_bundled_relations():
    from lmscope.lenses.lre import relation_names
    names = relation_names()
    assert set(names) == {"country_capital", "country_language", "object_colour", "word_opposite",
                          "company_country"}
    for name in names:
        rel = load_relation(name)
        assert len(rel.pairs) >= 20 and rel.template.count("{}") == 1
        assert len({s for s, _ in rel.pairs}) == len(rel.pairs)


def test_bad_input(tmp_path):
    m = random_model("llama")
    with pytest.raises(InputError, match="unknown relation"):
        load_relation("nope")
    f = tmp_path / "p.jsonl"
    f.write_text('{"subject": "France", "object": "Paris"}\n{"subject": "Japan", "object": "Tokyo"}\n')
    with pytest.raises(InputError, match=r"\{\}"):
        relation_from_pairs(f, "The capital of")
    assert relation_from_pairs(f, "The capital of {} is").pairs == (("France", "Paris"), ("Japan", "Tokyo"))
    f.write_text('{"subject": "France", "object": "Paris"}\n')
    with pytest.raises(InputError, match="at least 2"):
        relation_from_pairs(f, "The capital of {} is")
    f.write_text("")
    with pytest.raises(InputError, match="at least 2"):
        relation_from_pairs(f, "The capital of {} is")
    f.write_text('{"subject": "France"}\n')
    with pytest.raises(InputError, match="subject"):
        relation_from_pairs(f, "The capital of {} is")
    with pytest.raises(InputError, match="layers"):
        lre(m, REL, layers=[99])
    with pytest.raises(InputError):
        lre(m, "country_capital")


def test_cli(tmp_path, capsys):
    from lmscope.cli import main
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"subject": s, "object": o}) + "\n" for s, o in REL.pairs))
    assert main(["lre", "--pairs", str(f), "--template", "The capital of {} is", "--model", "random:llama",
                 "--layer", "1", "--beta", "1,2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"relation", "layer", "beta", "faithfulness", "causality", "n_test"} <= set(out)
    assert out["layer"] == 1 and out["relation"] == "p"
    assert main(["lre", "--pairs", str(f), "--template", "no subject", "--model", "random:llama"]) == 2
    assert "{}" in capsys.readouterr().err
    assert main(["lre", "--model", "random:llama"]) == 2


@pytest.mark.default_model
def test_default_model_capital_prompt(smollm2):
    rel = load_relation("country_capital")
    ids, pos = relation_prompt(smollm2, rel, rel.pairs[:3], "Germany")
    assert smollm2.to_str_tokens(ids[0, pos: pos + 2]) == [" Germany", " is"]
    assert smollm2.to_str_tokens(smollm2.run(ids).logits[0, -1].argmax()) == [" Berlin"]


@pytest.mark.parametrize("layer", [0, -2, -1])
def test_resumed_jacobian_equals_the_plain_path(model, layer):
    ids, pos = relation_prompt(model, REL, REL.pairs[:2], "Germany")
    layer %= model.n_layers
    fast = jacobian(model, ids, pos, layer, chunk=24)
    plain = jacobian(model, ids, pos, layer, resume=False)
    # at the last layer s (the subject's token) cannot reach o (the last position): W = 0 there
    assert (plain[0].abs().max() > 0) == (layer < model.n_layers - 1)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_one_backward_gives_every_layers_jacobian(model):
    # the zeros added at the higher layers must not cut the paths through them: each W equals its own plain run
    ids, pos = relation_prompt(model, REL, REL.pairs[:2], "Germany")
    layers = list(range(model.n_layers))
    together = jacobians(model, ids, pos, layers, chunk=40)
    for layer in layers:
        plain = jacobian(model, ids, pos, layer, resume=False)
        for a, b in zip(together[layer], plain):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1e-3, float(b.abs().max())))


def _toy_relation(m, monkeypatch, n=8):
    subjects = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"][:n]
    tops = [int(m.run(f"Q {s}").logits[0, -1].argmax()) for s in subjects]
    monkeypatch.setattr(lre_mod, "object_token", lambda model, obj: int(obj) % model.vocab_size)
    return Relation("self", "Q {}", tuple((s, str(t)) for s, t in zip(subjects, tops)))


def test_resumed_lre_gives_the_plain_paths_result(monkeypatch):
    m = random_model("llama")
    rel = _toy_relation(m, monkeypatch)
    opts = dict(layers=[0, 1, m.n_layers - 1], betas=[1.0, 2.0], ranks=[2, 16, m.d_model], n_train=4, n_demo=1)
    fast, plain = lre(m, rel, **opts).to_json(), lre(m, rel, resume=False, **opts).to_json()
    probs = [[f.pop("loo_object_prob") for f in r["layers"]] for r in (fast, plain)]   # floats: to round-off
    assert fast == plain and fast["n_test"] > 0
    for a, b in zip(*probs):
        assert a == pytest.approx(b, rel=1e-5)


def test_choice_does_not_depend_on_the_held_out_pairs(monkeypatch):
    m = random_model("llama")
    rel = _toy_relation(m, monkeypatch)
    opts = dict(layers=[0, 1, m.n_layers - 1], betas=[0.5, 1.0, 4.0], ranks=[1, 8, m.d_model], n_train=4, n_demo=1)
    r = lre(m, rel, **opts)
    order = torch.randperm(len(rel.pairs), generator=torch.Generator().manual_seed(0)).tolist()
    held = {rel.pairs[i][0] for i in order[4:]}
    # other held-out subjects and objects (some the model gets wrong): only the held-out numbers may change
    altered = Relation("self", "Q {}", tuple((s.upper(), str(int(o) + 1) if s in ("ab", "ef") else o) if s in held
                                             else (s, o) for s, o in rel.pairs))
    r2 = lre(m, altered, **opts)
    assert (r2.layer, r2.beta, r2.rank, r2.train) == (r.layer, r.beta, r.rank, r.train)
    assert [f.__dict__ for f in r2.layers] == [f.__dict__ for f in r.layers]
    assert r2.test != r.test


def test_majority_baseline(monkeypatch):
    m = random_model("llama")
    rel = _toy_relation(m, monkeypatch)
    objects = [o for _, o in rel.pairs]
    common = max(objects, key=objects.count)
    r = lre(m, rel, layers=[m.n_layers - 1], betas=[1.0], ranks=[m.d_model], n_train=3, n_demo=0)
    held = {row["subject"]: row["object"] for row in r.test}
    assert r.majority_object == m.tokenizer.decode([int(common)])
    assert r.majority_baseline == sum(o == common for o in held.values()) / len(held)
    assert "majority" in r.summary()
