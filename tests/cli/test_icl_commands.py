"""Every subcommand of part 2's in-context-learning vectors and truth direction (fv, truth) through lmscope.cli.main
on a random model; the output rule for the files they write."""
import json
import time

import pytest

import lmscope.cli.common
from lmscope.cli.main import main

FV = ["fv", "--task", "antonyms", "--model", "random:llama", "--shots", "2", "--heads", "2", "--mean-prompts", "3",
      "--cie-prompts", "2", "--layers", "1,2", "--no-task-vector"]
TRUTH = ["truth", "--model", "random:llama", "--layers", "0,2", "--top-k", "2"]


def test_fv(capsys):
    assert main(FV + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "function_vector" and out["task"] == "antonyms" and out["sweep"]["layers"] == [1, 2]
    assert 0 <= out["acc_with_fv"] <= 1 and out["config"]["n_shots"] == 2 and out["task_vector"] is None


def test_truth(capsys):
    assert main(TRUTH + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "truth_direction" and out["layers"] == [0, 2] and len(out["top_heads"]) == 2
    assert 0 <= out["best_layer_test_acc"] <= 1


@pytest.mark.parametrize("argv,suffix", [(FV, ".json"), (FV, ".html"), (TRUTH, ".json"), (TRUTH, ".html")])
def test_output_rule(argv, suffix, tmp_path, capsys, monkeypatch):
    target = tmp_path / f"out{suffix}"
    flag = "--json" if suffix == ".json" else "--html"
    target.write_text("keep me")
    assert main(argv + [flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and target.read_text() == "keep me"
    assert main(argv + [flag, str(target), "--overwrite"]) == 0 and target.read_text() != "keep me"
    calls = []
    monkeypatch.setattr(lmscope.cli.common, "load", lambda *a, **k: calls.append(a) or 1 / 0)
    start = time.perf_counter()
    assert main(argv + [flag, str(tmp_path / "missing" / f"out{suffix}")]) == 2
    assert time.perf_counter() - start < 1.0 and not calls and "does not exist" in capsys.readouterr().err
