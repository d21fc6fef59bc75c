import json

import pytest
import torch

import lmscope
from conftest import random_model
from lmscope.circuits.tasks import TaskSet, task_last_logits, load_circuit_task, task_logits
from lmscope.core.errors import InputError


def _pairs(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _toy(metric="logit_diff", **kw):
    """Three prompts of byte tokens for the random models (vocab 260)."""
    args = dict(name="toy", clean=[[1, 2, 3], [4, 5], [6, 7, 8]], corrupt=[[1, 2, 9], [4, 9], [6, 9, 8]],
                answer=[10, 11, 12], wrong=[20, 21, 22], metric_name=metric, n_filtered=0, filtered={},
                templates=[0, 1, 0])
    args.update(kw)
    return TaskSet(**args)


def test_pairs_file_filters_and_counts(tmp_path):
    m = random_model("llama")
    rows = [{"clean": "abcd", "corrupt": "abzd", "answer": "x", "wrong": "y"},
            {"clean": "abcd", "corrupt": "abz", "answer": "x", "wrong": "y"},        # unequal length
            {"clean": "wxyz", "corrupt": "wxqz", "answer": "xy", "wrong": "y"},      # multi-token answer
            {"clean": "wxyz", "corrupt": "wxqz", "answer": "q", "wrong": "q"},       # same token
            {"clean": "hello", "corrupt": "jello", "answer": "!", "wrong": "?"}]
    task = load_circuit_task(m, _pairs(tmp_path, rows))
    assert len(task) == 2 and task.n_filtered == 3
    assert task.filtered == {"unequal length": 1, "multi-token answer": 1,
                             "answer and wrong share their first token": 1}
    tok = m.tokenizer
    assert task.clean[0] == tok("abcd")["input_ids"] and task.corrupt[1] == tok("jello")["input_ids"]
    assert task.answer == [tok("x", add_special_tokens=False)["input_ids"][0], tok("!")["input_ids"][-1]]
    assert task.wrong[1] == tok("?", add_special_tokens=False)["input_ids"][0]


def test_pairs_file_bad_input(tmp_path):
    m = random_model("llama")
    with pytest.raises(InputError, match="empty"):
        load_circuit_task(m, _pairs(tmp_path, []))
    with pytest.raises(InputError, match="unequal length: 1"):
        load_circuit_task(m, _pairs(tmp_path, [{"clean": "abc", "corrupt": "ab", "answer": "x", "wrong": "y"}]))
    with pytest.raises(InputError, match="multi-token answer: 1"):
        load_circuit_task(m, _pairs(tmp_path, [{"clean": "abc", "corrupt": "abd", "answer": " Mary", "wrong": "y"}]))
    with pytest.raises(InputError, match="not JSON"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{nope\n")
        load_circuit_task(m, bad)
    with pytest.raises(InputError, match="needs non-empty strings"):
        load_circuit_task(m, _pairs(tmp_path, [{"clean": "abc", "corrupt": "abd", "answer": "x"}]))
    with pytest.raises(InputError, match="does not exist"):
        load_circuit_task(m, tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unknown task"):
        load_circuit_task(m, "no-such-task")


def test_ioi_on_byte_tokenizer_filters_every_name():
    # every " Name" is several byte tokens: nothing survives, and the error says why
    with pytest.raises(InputError, match="multi-token name"):
        load_circuit_task(random_model("llama"), "ioi", n=5)


def test_taskset_checks_lengths():
    with pytest.raises(InputError, match="clean length 3 and corrupt length 2"):
        _toy(corrupt=[[1, 2], [4, 9], [6, 9, 8]])
    with pytest.raises(InputError, match="2 answer for 3"):
        _toy(answer=[1, 2])
    with pytest.raises(InputError, match="unknown task metric"):
        _toy(metric="accuracy")


def test_logit_diff_metric_known_values():
    task = _toy()
    logits = torch.zeros(3, 30)
    logits[0, 10], logits[0, 20] = 3.0, 1.0
    logits[1, 11], logits[1, 21] = -1.0, 0.5
    logits[2, 12] = 2.0
    assert torch.equal(task.metric(logits), torch.tensor([2.0, -1.5, 2.0]))
    assert task.accuracy(logits).tolist() == [True, False, True]
    assert torch.equal(task.metric(logits[[2, 0]], rows=[2, 0]), torch.tensor([2.0, 2.0]))
    with pytest.raises(InputError, match="logits"):
        task.metric(logits[:2])


def test_prob_diff_metric_known_values_and_grad():
    task = _toy("prob_diff", answer_sets=[[10, 11], [11], [12, 13, 14]], wrong_sets=[[20], [21, 22], [0]])
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(0), requires_grad=True)
    p = logits.detach().double().softmax(-1)
    want = torch.stack([p[0, 10] + p[0, 11] - p[0, 20], p[1, 11] - p[1, 21] - p[1, 22],
                        p[2, 12:15].sum() - p[2, 0]])
    got = task.metric(logits)
    assert torch.allclose(got.double(), want, atol=1e-6)
    got.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_subset_split_batches():
    task = _toy()
    sub = task.subset([2, 0])
    assert sub.clean == [[6, 7, 8], [1, 2, 3]] and sub.answer == [12, 10] and sub.templates == [0, 0]
    assert task.subset(torch.tensor([False, True, False])).clean == [[4, 5]]
    train, test = task.split(2, seed=1)
    assert len(train) == 2 and len(test) == 1
    assert sorted(map(tuple, train.clean + test.clean)) == sorted(map(tuple, task.clean))
    assert task.split(2, seed=1)[0].clean == train.clean
    with pytest.raises(InputError):
        task.split(3)
    assert task.largest_group() == [0, 2]
    m = random_model("llama")
    got = list(task.batches(m, 2))
    assert [rows for *_, rows in got] == [[0, 1], [2]]
    clean, corrupt, mask, _ = got[0]
    assert clean.tolist()[1][:2] == [4, 5] and corrupt.tolist()[0] == [1, 2, 9]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_task_logits_match_plain_forward(family):
    m = random_model(family)
    task = _toy()
    got = task_logits(m, task, batch_size=2)
    for i, row in enumerate(task.clean):
        ids = torch.tensor([row])
        want = m.hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        assert torch.allclose(got[i], want, atol=1e-5, rtol=1e-5)
    corrupt = task_logits(m, task, which="corrupt", batch_size=3)
    assert torch.allclose(corrupt[1], m.run([task.corrupt[1]]).logits[0, -1], atol=1e-5)
    # an edit that only exists at the logits still applies (full forward then)
    shifted = task_logits(m, task, [lmscope.add("logits", torch.ones(m.vocab_size))], batch_size=2)
    assert torch.allclose(shifted, got + 1, atol=1e-4)
    # per-batch edits as a function of the rows
    seen = []
    task_logits(m, task, lambda rows: seen.append(rows) or [], batch_size=2)
    assert seen == [[0, 1], [2]]
    with pytest.raises(InputError, match="which"):
        task_logits(m, task, which="both")
    assert not m.has_hooks()


def test_last_logits_grad():
    m = random_model("llama")
    task = _toy()
    clean, _, mask, rows = next(task.batches(m, 3))
    logits, acts = task_last_logits(m, clean, mask, read=["resid_pre.1"], grad=True)
    task.metric(logits, rows).sum().backward()
    assert acts["resid_pre.1"].grad is not None and acts["resid_pre.1"].grad[1, 2].abs().sum() == 0  # padding


@pytest.mark.default_model
def test_builtin_tasks_on_default_model(smollm2):
    m = smollm2
    tok = m.tokenizer
    ioi = load_circuit_task(m, "ioi", n=40, seed=3)
    assert len(ioi) == 40 and ioi.metric_name == "logit_diff"
    assert ioi.n_filtered == sum(ioi.filtered.values()) and set(ioi.filtered) <= {"multi-token name", "duplicate"}
    assert ioi.info["single-token names"] + len(ioi.info["multi-token names"]) == ioi.info["names"]
    for c, k, a, w in zip(ioi.clean, ioi.corrupt, ioi.answer, ioi.wrong):
        text = tok.decode(c)
        io, s = tok.decode([a]), tok.decode([w])
        assert len(c) == len(k) and text.count(s) == 2 and text.count(io) == 1
        assert sum(x != y for x, y in zip(c, k)) == 1          # only S2 changes
    assert load_circuit_task(m, "ioi", n=40, seed=3).clean == ioi.clean
    one = load_circuit_task(m, "ioi", n=10, templates=[4])
    assert one.templates == [4] * 10 and len({len(c) for c in one.clean}) == 1
    with pytest.raises(InputError, match="templates must be ids"):
        load_circuit_task(m, "quote-type", templates=[99])
    gt = load_circuit_task(m, "greater-than", n=20)
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    for c, a, w, big, small in zip(gt.clean, gt.answer, gt.wrong, gt.answer_sets, gt.wrong_sets):
        yy = tok.decode(c).split(" to the year")[0][-2:]
        tens = int(yy[0])
        assert set(big) == {tok.convert_tokens_to_ids(str(d)) for d in range(tens + 1, 10)} and set(big) <= digits
        assert set(small) == {tok.convert_tokens_to_ids(str(d)) for d in range(tens)}
        assert a in big and w in small
    for name in ("quote-type", "bracket-depth"):
        t = load_circuit_task(m, name, n=20)
        assert len(t) == 20 and all(len(c) == len(k) for c, k in zip(t.clean, t.corrupt))
        assert all(a != w for a, w in zip(t.answer, t.wrong))


@pytest.mark.default_model
def test_ioi_abc_corruption_resamples_all_three_names(smollm2):
    """Wang et al.'s ABC: no name of the clean prompt is left in the corrupt one, and the corrupt prompt has three
    distinct names in the positions of A, B and S2; the default S2 corruption changes S2 only (the EAP-IG repo's)."""
    m, tok = smollm2, smollm2.tokenizer
    abc = load_circuit_task(m, "ioi", n=30, seed=1, corruption="abc")
    s2 = load_circuit_task(m, "ioi", n=30, seed=1)
    assert abc.info["corruption"] == "abc" and s2.info["corruption"] == "s2" and "not ABC" in s2.info["corrupt"]
    assert abc.name == "ioi-abc" and s2.name == "ioi"          # results name the task with its corruption
    for c, k, a, w in zip(abc.clean, abc.corrupt, abc.answer, abc.wrong):
        changed = [i for i, (x, y) in enumerate(zip(c, k)) if x != y]
        assert len(c) == len(k) and len(changed) == 3                  # A, B and S2
        assert a not in k and w not in k and len({k[i] for i in changed}) == 3
    for c, k in zip(s2.clean, s2.corrupt):
        assert sum(x != y for x, y in zip(c, k)) == 1
    with pytest.raises(InputError, match="corruption"):
        load_circuit_task(m, "ioi", n=5, corruption="abb")
    with pytest.raises(InputError, match="ioi task only"):
        load_circuit_task(m, "greater-than", n=5, corruption="abc")
