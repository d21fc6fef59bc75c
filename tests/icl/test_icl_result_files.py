"""Function- and task-vector results save to JSON and load back as themselves, unchanged."""
from conftest import random_model
from lmscope.icl import FunctionVectorResult, FvConfig, TaskVectorResult, function_vector, task_vector
from lmscope.results import Result


def test_function_vector_round_trip(tmp_path):
    m = random_model("llama")
    r = function_vector(m, "antonyms", FvConfig(n_shots=2, n_heads=2, n_mean_prompts=3, n_cie_prompts=2,
                                                layers=[1, 2]))
    back = Result.load(r.save(tmp_path / "fv.json"))
    assert type(back) is FunctionVectorResult and back.to_json() == r.to_json()
    assert back.task_vector.layers == [1, 2] and back.config == r.config


def test_task_vector_round_trip(tmp_path):
    r = task_vector(random_model("llama"), "antonyms", n_shots=2, n_mean_prompts=3, layers=[0, 2])
    back = Result.load(r.save(tmp_path / "tv.json"))
    assert type(back) is TaskVectorResult and back.to_json() == r.to_json() and back.sweep.layers == [0, 2]
