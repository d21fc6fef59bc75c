"""Sparse tasks: single-token answers with the trained 2,048-token tokenizer, disjoint held-out halves, accuracy
semantics, and one clear error for bad input (unknown task, not a sparse model, tokenizer/model mismatch)."""
import functools
import json

import pytest
import torch

from lmscope.core.errors import InputError
from lmscope.papers.weight_sparse.config import preset_config
from lmscope.papers.weight_sparse.data import split_texts, train_tokenizer
from lmscope.papers.weight_sparse.tasks import (SPARSE_TASKS, both_ways, build_task, circuit_task_builder,
                                                evaluate_tasks, task_accuracy)
from lmscope.papers.weight_sparse.train import train_sparse


@functools.cache
def tokenizer_2k():
    return train_tokenizer(split_texts("train"), 2048)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    train_sparse(preset_config("tiny", out=str(out)), progress=False)
    return out


@pytest.mark.parametrize("name", SPARSE_TASKS)
def test_every_task_is_single_token_with_the_trained_tokenizer(name):
    tok = tokenizer_2k()
    assert len(tok) == 2048
    train_half, test_half = build_task(tok, name, 100, "train"), build_task(tok, name, 100, "test")
    for task in (train_half, test_half):
        assert len(task) >= 80
        for c, k, a, w in zip(task.clean, task.corrupt, task.answer, task.wrong):
            assert len(c) == len(k) and c != k and a != w
            assert len(tok.decode([a])) >= 1 and tok(tok.decode([a]), add_special_tokens=False)["input_ids"] == [a]
    assert not {tok.decode(c) for c in train_half.clean} & {tok.decode(c) for c in test_half.clean}


def test_balanced_accuracy_of_a_constant_model_is_one_half():
    tok = tokenizer_2k()
    task = build_task(tok, "single_double_quote", 40)

    class Constant(torch.nn.Module):  # always prefers the first answer token of the task
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., task.answer[0]] = 1.0
            return type("Out", (), {"logits": logits})()
    one = task.subset([i for i in range(len(task)) if task.answer[i] == task.answer[0]])
    acc = task_accuracy(Constant(), one)
    assert acc["accuracy_clean"] == 1.0 and acc["accuracy_corrupt"] == 0.0 and acc["accuracy"] == 0.5


def test_unknown_task_is_one_clear_error():
    with pytest.raises(InputError, match="unknown sparse task 'nope'"):
        build_task(tokenizer_2k(), "nope")


def test_evaluate_tasks_on_a_trained_folder(tiny_folder):
    result = evaluate_tasks(str(tiny_folder), names=["paren_or_bracket"], n=10)
    v = result.tasks["paren_or_bracket"]
    assert 0 <= v["accuracy"] <= 1 and v["n"] >= 1
    assert "paren_or_bracket" in result.summary()


def test_not_a_sparse_model_and_mismatched_tokenizer_are_refused(tmp_path, tiny_folder):
    import shutil
    with pytest.raises(InputError, match="not a model folder"):
        evaluate_tasks(str(tmp_path))
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="is not a weight-sparse model"):
        evaluate_tasks(str(other))
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_folder, mixed, ignore=shutil.ignore_patterns("checkpoints"))
    tokenizer_2k().save_pretrained(mixed)  # a 2,048-token tokenizer beside a 300-token model
    with pytest.raises(InputError, match="do not belong together"):
        evaluate_tasks(str(mixed))


@pytest.mark.parametrize("name", SPARSE_TASKS)
def test_circuits_see_both_answers_equally_often(name):
    """Pruning and scoring run on both_ways tasks: a constant answer scores 0.5 there (on the clean prompts alone
    most tasks have one answer, and the empty circuit of a constant model would look faithful)."""
    class Tok:          # the tokenizer is all a builder needs of a model
        tokenizer = tokenizer_2k()
    train, held = circuit_task_builder(name, 40, 0)(Tok)
    for task in (train, held):
        assert sorted(task.answer) == sorted(task.wrong) and len(task) == 40
        n = len(task) // 2
        assert task.clean[n:] == task.corrupt[:n] and task.answer[n:] == task.wrong[:n]
        x = task.answer[0]
        constant = torch.zeros(len(task), 2048)
        constant[:, x] = 1.0                               # always the same token
        rows = [i for i in range(len(task)) if x in (task.answer[i], task.wrong[i])]
        assert float(task.accuracy(constant)[rows].float().mean()) == 0.5
    one = build_task(tokenizer_2k(), name, 10, "test")
    assert len(both_ways(one)) == 2 * len(one)
