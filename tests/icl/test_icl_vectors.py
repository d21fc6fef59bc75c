import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import random_model
from lmscope.core import edits
from lmscope.cli import main
from lmscope.data.icl_tasks import load_icl_task
from lmscope.core.metrics import accuracy, answer_prob
from lmscope.core.runs import last_logits, mean_activations
from lmscope.core.errors import InputError
import lmscope.icl.function_vectors as fv_mod
from lmscope.icl.function_vectors import causal_indirect_effects, function_vector, head_writes
from lmscope.icl.prompts import (answer_id, at_last, few_shot_prompt,
                                 last_logits_many, make_prompts, split_pairs, sweep_layers, zero_shot_prompt)
from lmscope.icl.task_vectors import task_vector
from lmscope.results import Result

# letters only: the random models' byte tokenizer makes every answer start with the space byte
PAIRS = [(f"w{a}{b}", f"{b}{a}x") for a in "abcdefg" for b in "hij"]   # 21 pairs


def _lines(prompt):
    *demos, query = prompt.split("\n")
    return [tuple(d.split(" -> ")) for d in demos], query[:-len(" ->")]


def test_split_pairs():
    s = split_pairs(PAIRS, n_shots=3, heldout_fraction=0.3, seed=1)
    assert len(s.heldout) == 6 and len(s.build) == 15
    assert set(s.build) | set(s.heldout) == set(PAIRS) and not set(s.build) & set(s.heldout)
    assert s == split_pairs(PAIRS, n_shots=3, heldout_fraction=0.3, seed=1)
    assert s != split_pairs(PAIRS, n_shots=3, heldout_fraction=0.3, seed=2)
    with pytest.raises(InputError, match="21 pairs are too few to split.*at least 23"):
        split_pairs(PAIRS, n_shots=15)
    split_pairs(PAIRS, n_shots=14)   # 21 = 6 held out + 15 to build: just enough for 14 shots
    with pytest.raises(InputError, match="n_shots"):
        split_pairs(PAIRS, n_shots=0)
    with pytest.raises(InputError, match="heldout_fraction"):
        split_pairs(PAIRS, n_shots=2, heldout_fraction=1.0)


def test_prompt_format():
    assert few_shot_prompt([("hot", "cold"), ("big", "small")], "fast") == "hot -> cold\nbig -> small\nfast ->"
    assert zero_shot_prompt("fast") == "fast ->"


def test_prompts_respect_the_split():
    m = random_model("llama")
    split = split_pairs(PAIRS, n_shots=4, seed=0)
    p = make_prompts(m, split, n_shots=4, n_clean=6, n_shuffled=6, seed=0)
    build, out_of = dict(split.build), {y for _, y in split.build}
    for prompt in p.clean + p.shuffled + p.few_heldout + p.shuffled_heldout:
        demos, query = _lines(prompt)
        assert len(demos) == 4 and all(x in build for x, _ in demos) and query not in [x for x, _ in demos]
    for prompt in p.clean + p.few_heldout:
        assert all(build[x] == y for x, y in _lines(prompt)[0])
    for prompt in p.shuffled + p.shuffled_heldout:     # outputs permuted, none in its own place
        demos, _ = _lines(prompt)
        assert all(build[x] != y and y in out_of for x, y in demos)
        assert sorted(y for _, y in demos) == sorted(build[x] for x, _ in demos)
    assert [_lines(q)[1] for q in p.few_heldout] == [x for x, _ in split.heldout]
    assert p.zero_heldout == [f"{x} ->" for x, _ in split.heldout]
    assert p.heldout_answers == [m.tokenizer(" " + y)["input_ids"][0] for _, y in split.heldout]
    assert all(_lines(q)[1] in build for q in p.clean + p.shuffled)


def test_last_logits_match_plain_runs():
    m = random_model("llama")
    prompts = ["ab ->", "hello there ->", "xy ->", "a much longer prompt ->"]
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    got = last_logits(m, prompts, at_last("resid_post.1", v))
    for i, p in enumerate(prompts):
        want = m.run(p, edits=[edits.add("resid_post.1", v, positions=[-1])]).logits[0, -1]
        assert torch.allclose(got[i], want, atol=1e-5)
    assert not torch.allclose(got, last_logits(m, prompts), atol=1e-3)
    assert accuracy(got, got.argmax(-1).tolist()) == 1.0


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_cached_sweep_equals_full_forwards(family):
    m = random_model(family)
    prompts = ["ab ->", "hello there ->", "xy ->", "a", "a much longer prompt ->"]
    g = torch.Generator().manual_seed(1)
    sets = [None] + [at_last(f"resid_post.{layer}", torch.randn(m.d_model, generator=g), op)
                     for layer, op in ((0, "add"), (2, "replace"))]
    got = last_logits_many(m, prompts, sets)
    for logits, make in zip(got, sets):
        assert torch.allclose(logits, last_logits(m, prompts, make), atol=1e-4)
    assert not torch.allclose(got[0], got[1], atol=1e-2)
    assert not m.has_hooks()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cie_equals_one_full_forward_per_head(family):
    m = random_model(family)
    prompts = ["ab -> c\nde -> f\ng ->", "xy -> z\nq ->", "hello -> w\nab ->"]
    answers = [answer_id(m, "h"), 65, 66]
    mean_z = torch.randn(m.n_layers, m.n_heads, m.d_head, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    got = causal_indirect_effects(m, prompts, answers, mean_z)
    want = torch.zeros_like(got)
    for p, a in zip(prompts, answers):
        base = m.run(p).logits[0, -1].double().softmax(-1)[a]
        for layer in range(m.n_layers):
            for h in range(m.n_heads):
                patched = m.run(p, edits=[edits.replace(f"z.{layer}", mean_z[layer, h].float(), heads=[h],
                                                        positions=[-1])])
                want[layer, h] += patched.logits[0, -1].double().softmax(-1)[a] - base
    want /= len(prompts)
    assert want.abs().max() > 1e-5
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-9)
    assert not m.has_hooks()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_writes_sum_to_attention_output(family):
    m = random_model(family)
    run = m.run("hello world", read=["z.1", "attn_out.1"])
    writes = head_writes(m, 1, run.acts["z.1"][0, 3].double())
    bias = m.block_module(1, m.adapter.o_proj).bias
    total = writes.sum(0) + (bias.double() if bias is not None else 0)
    assert torch.allclose(total, run.acts["attn_out.1"][0, 3].double(), atol=1e-5)


def test_sweep_layers_picks_the_best_build_layer():
    m = random_model("llama")
    split = split_pairs(PAIRS, n_shots=3, seed=0)
    p = make_prompts(m, split, n_shots=3, n_clean=1, n_shuffled=0, seed=0)
    space = answer_id(m, "x")          # every answer's first token (the space byte)
    assert set(p.zero_build_answers) == set(p.heldout_answers) == {space}
    push = m.module(m.adapter.lm_head).weight[space].detach() * 1e3
    last = m.n_layers - 1
    s = sweep_layers(m, p, list(range(m.n_layers)), lambda layer: push if layer == last else push * 0, "add")
    plain = last_logits(m, p.zero_build)
    assert s.build[last] == s.heldout[last] == 1.0
    assert s.build[0] == accuracy(plain, p.zero_build_answers) < 1.0
    assert s.layer == last and s.acc_heldout == 1.0
    assert s.build_prob[last] > s.build_prob[0]
    assert s.build_prob[0] == pytest.approx(answer_prob(plain, p.zero_build_answers))
    # flat accuracy: the answer's build probability decides, then the earliest layer
    half = push * 1e-3
    t = sweep_layers(m, p, [0, 1], lambda layer: half if layer == 1 else half * 0, "add")
    assert t.layer == (1 if t.build_prob[1] > t.build_prob[0] else 0) or t.build[1] != t.build[0]
    flat = sweep_layers(m, p, [1, 2], lambda layer: push * 0, "add")
    assert flat.layer == 1 and flat.build_prob[0] == pytest.approx(flat.build_prob[1])


def test_function_vector_semantics():
    m = random_model("llama")
    r = function_vector(m, PAIRS, n_shots=3, n_heads=3, n_mean_prompts=5, n_cie_prompts=4, seed=3)
    cie = torch.tensor(r.cie)
    assert cie.shape == (m.n_layers, m.n_heads)
    vals = [cie[la, h] for la, h in r.top_heads]
    assert vals == sorted(vals, reverse=True) and len(r.top_heads) == 3
    assert sum(bool((cie > vals[-1]).flatten()[i]) for i in range(cie.numel())) <= 2
    # the FV, recomputed from the same (seeded) clean prompts, through the output projection
    prompts = make_prompts(m, split_pairs(PAIRS, n_shots=3, seed=3), n_shots=3, n_clean=5, n_shuffled=4, seed=3)
    means = mean_activations(m, prompts.clean, ["z.*"])
    want = sum(head_writes(m, la, means[f"z.{la}"])[h] for la, h in r.top_heads)
    assert torch.allclose(r.vector.double(), want, atol=1e-5)
    assert r.fv_norm == pytest.approx(float(want.norm()), rel=1e-5)
    j = json.loads(json.dumps(r.to_json()))
    for key in ("task", "layer", "n_heldout", "acc_zero_shot", "acc_with_fv", "acc_few_shot", "top_heads"):
        assert key in j
    assert j["task"] == "custom" and j["n_heldout"] == 6 and j["layer"] in range(m.n_layers)
    assert j["acc_with_fv"] == j["sweep"]["heldout"][j["layer"]]
    assert j["top_heads"] == [list(t) for t in r.top_heads] and "task_vector" in j
    assert not m.has_hooks()


def test_function_vector_outputs(tmp_path):
    m = random_model("gpt2")
    r = function_vector(m, "antonyms", n_shots=2, n_heads=2, n_mean_prompts=3, n_cie_prompts=2, layers=[1, 2],
                        with_task_vector=False)
    assert r.task_vector is None and r.to_json()["task_vector"] is None and r.sweep.layers == [1, 2]
    page = r.save(tmp_path / "fv.html").read_text()
    assert "Function vector" in page and "plotly" in page.lower() and "Causal indirect effect" in page
    assert json.loads(r.save(tmp_path / "fv.json").read_text())["task"] == "antonyms"
    assert "top heads" in r.summary()


def test_task_vector_replaces_the_last_state():
    m = random_model("llama")
    last = m.n_layers - 1
    r = task_vector(m, PAIRS, n_shots=3, n_mean_prompts=5, layers=[0, last], seed=2)
    assert r.sweep.layers == [0, last]
    # replacing the last layer's state fixes the logits: every prompt predicts unembed(tv)'s top token
    prompts = make_prompts(m, split_pairs(PAIRS, n_shots=3, seed=2), n_shots=3, n_clean=5, n_shuffled=0, seed=2)
    tv = mean_activations(m, prompts.clean, [f"resid_post.{last}"])[f"resid_post.{last}"]
    top = int(m.unembed(tv.float()[None]).argmax())
    assert r.sweep.heldout[1] == float(sum(a == top for a in prompts.heldout_answers) / len(prompts.heldout_answers))
    assert json.loads(json.dumps(r.to_json()))["acc_with_tv"] == r.sweep.acc_heldout


def test_bad_input():
    m = random_model("llama")
    with pytest.raises(InputError, match="layer 3 out of range"):
        function_vector(m, PAIRS, n_shots=3, layers=[3])
    with pytest.raises(InputError, match="out of range"):
        task_vector(m, PAIRS, n_shots=3, layers=[-4])
    with pytest.raises(InputError, match="n_heads"):
        function_vector(m, PAIRS, n_shots=3, n_heads=m.n_layers * m.n_heads + 1)
    with pytest.raises(InputError, match="n_cie_prompts"):
        function_vector(m, PAIRS, n_shots=3, n_cie_prompts=0)
    with pytest.raises(InputError, match="too few to split"):
        function_vector(m, PAIRS[:5], n_shots=10)
    with pytest.raises(InputError, match="unknown task"):
        function_vector(m, "synonyms")
    with pytest.raises(InputError, match="non-empty"):
        task_vector(m, [("a", "")])
    with pytest.raises(InputError, match="gemma"):
        function_vector(random_model("gemma2"), PAIRS, n_shots=3)
    assert not m.has_hooks()


def test_cli(capsys, tmp_path):
    argv = ["fv", "--model", "random:llama", "--shots", "2", "--cie-prompts", "2", "--mean-prompts", "2",
            "--heads", "2", "--layers", "1,2", "--json"]
    assert main(argv + ["--task", "present_past"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["task"] == "present_past" and j["layer"] in (1, 2) and len(j["top_heads"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    for extra, match in ((["--pairs", str(bad)], "line 1: not JSON"), (["--task", "nope"], "unknown task"),
                         ([], "--task NAME or --pairs FILE"), (["--task", "antonyms", "--layers", "9"],
                                                                "layer 9 out of range")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1


@pytest.mark.default_model
def test_default_model_icl_reference(smollm2):
    # the pipeline on real weights: the few-shot reference does the task, the bare zero-shot prompt does not
    r = task_vector(smollm2, load_icl_task("present_past"), n_shots=5, n_mean_prompts=4, layers=[15])
    assert r.acc_few_shot >= 0.6 > r.acc_zero_shot
    assert r.n_heldout == 21 and r.token_check["n_multi_token"] <= 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_resumed_cie_equals_the_plain_path(family):
    m = random_model(family)
    prompts = ["ab -> c\nde -> f\ng ->", "xy -> z\nq ->", "hello -> w\nab ->"]
    answers = [answer_id(m, "h"), 65, 66]
    mean_z = torch.randn(m.n_layers, m.n_heads, m.d_head, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    plain = causal_indirect_effects(m, prompts, answers, mean_z, resume=False)
    assert plain.abs().max() > 1e-5
    # layers sharing a pass: row (prompt, layer, head) is patched at its own layer and head only
    for per_pass in (0, 1, 2, m.n_layers):
        fast = causal_indirect_effects(m, prompts, answers, mean_z, layers_per_pass=per_pass)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-9)


def test_filtered_figure_uses_exactly_the_queries_answered_correctly_few_shot(monkeypatch):
    m = random_model("llama")
    make = fv_mod.make_prompts

    def rigged(model, split, **kw):
        # held-out queries 0 and 2 get the model's own few-shot top-1 as their answer: those two are the filter
        p = make(model, split, **kw)
        top = last_logits(model, p.few_heldout).argmax(-1).tolist()
        answers = [top[i] if i in (0, 2) else (top[i] + 1) % model.vocab_size for i in range(len(top))]
        return dataclasses.replace(p, heldout_answers=answers)
    monkeypatch.setattr(fv_mod, "make_prompts", rigged)
    r = function_vector(m, PAIRS, n_shots=3, n_heads=3, n_mean_prompts=5, n_cie_prompts=4, seed=3,
                        with_task_vector=False)
    p = rigged(m, split_pairs(PAIRS, n_shots=3, seed=3), n_shots=3, n_clean=5, n_shuffled=4, seed=3)
    assert r.heldout_correct_few_shot == [0, 2] and r.acc_few_shot == pytest.approx(2 / 6)
    kept = [p.heldout_answers[i] for i in (0, 2)]
    zero = [p.zero_heldout[i] for i in (0, 2)]
    assert r.acc_zero_shot_filtered == accuracy(last_logits(m, zero), kept)
    site = f"resid_post.{r.layer}"
    assert r.acc_with_fv_filtered == accuracy(last_logits(m, zero, at_last(site, r.vector)), kept)
    assert "answered correctly 3-shot" in r.summary()
    assert Result.load(r.save(Path(tempfile.mkdtemp()) / "fv.json")).to_json() == r.to_json()


def test_filtered_figure_is_null_without_correct_queries():
    m = random_model("llama")
    r = function_vector(m, PAIRS, n_shots=3, n_heads=2, n_mean_prompts=3, n_cie_prompts=2, seed=0,
                        with_task_vector=False)
    assert r.acc_few_shot == 0 and r.heldout_correct_few_shot == []
    assert r.acc_with_fv_filtered is None and r.to_json()["acc_with_fv_filtered"] is None
    assert "none answered correctly" in r.summary()
