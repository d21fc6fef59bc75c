"""The papers' commands (icl-update, icl-regression, introspect, introspect --prefill) through lmscope.cli.main on a
random model: output parsed, flags from the config dataclasses, one-line errors, and the output rule (an existing
file refused, --overwrite replaces it, a bad location fails before the model loads or the toy trains)."""
import json
import time

import pytest

import lmscope.cli.common
import lmscope.papers.icl_update.cli
from lmscope.cli import main
from lmscope.papers.icl_update import RegressionConfig
from lmscope.papers.icl_update.regression import TINY
from lmscope.papers.introspection import IntrospectionConfig
from lmscope.results import Result

M = ["--model", "random:llama"]
INTROSPECT = ["introspect", "--concepts", "dog,cat", "--layers", "1", "--strengths", "0.5,1", "--max-new-tokens",
              "2"] + M

# name -> (argv without outputs, the result kind)
COMMANDS = {
    "icl-update": (["icl-update", "--prompt", "a -> b\\nc -> d\\ne ->"] + M, "icl_update"),
    "icl-regression": (["icl-regression", "--tiny", "--steps", "20", "--n-test", "8"], "icl_regression"),
    "introspect": (INTROSPECT, "introspection"),
    "introspect-prefill": (INTROSPECT + ["--prefill"], "introspection_prefill"),
}


def run_json(argv, capsys) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_icl_update(capsys):
    out = run_json(["icl-update", "--model", "random:qwen2", "--prompt", "a -> b\\nc -> d\\ne ->"], capsys)
    assert out["kind"] == "icl_update" and out["dtype"] == "float64"     # the command's default dtype
    assert out["rank"] == 1 and out["max_abs_error_mlp"] < 1e-10 and out["examples"] == ["a -> b\n", "c -> d\n"]
    assert len(out["increment_norms"]) == 2 and all(v > 0 for v in out["increment_norms"])


def test_icl_update_help_shows_the_float64_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["icl-update", "--help"])
    assert exit_.value.code == 0
    assert "(default float64)" in " ".join(capsys.readouterr().out.split())


def test_icl_update_bad_input_is_one_line(capsys):
    assert main(["icl-update", "--prompt", "no context here"] + M) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmscope: error: empty context") and "\n" not in err


def test_icl_regression_tiny_with_a_flag(capsys):
    out = run_json(COMMANDS["icl-regression"][0], capsys)
    assert out["kind"] == "icl_regression" and out["max_abs_error"] < 1e-12
    assert out["final_mse_icl"] == out["mse_icl"][-1] and len(out["mse_icl"]) == TINY.n_context + 1
    # --tiny's values, with the two flags given on top
    assert out["config"] == dict(json.loads(json.dumps(TINY.__dict__)), steps=20, n_test=8)


def test_icl_regression_flags_make_the_config(monkeypatch):
    seen = []
    monkeypatch.setattr(lmscope.papers.icl_update.cli, "icl_regression", lambda config: seen.append(config) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["icl-regression", "--gd-steps", "1", "--gd-lrs", "0.1,0.2"])
    assert seen == [RegressionConfig(gd_steps=1, gd_lrs=(0.1, 0.2))]     # the full defaults otherwise
    with pytest.raises(ZeroDivisionError):
        main(["icl-regression", "--tiny", "--dim", "3"])
    assert seen[1].dim == 3 and seen[1].steps == TINY.steps             # a flag equal to the full default counts


def test_introspect(capsys):
    out = run_json(INTROSPECT + ["--start", "-3", "--seed", "2"], capsys)
    assert out["kind"] == "introspection" and out["n_trials"] == out["n_controls"] == 4
    assert [(c["layer"], c["strength"], c["n"]) for c in out["grid"]] == [(1, 0.5, 2), (1, 1.0, 2)]
    assert {"detection_rate", "false_positive_rate", "identification_rate", "best_layer", "best_strength"} <= set(out)
    config = out["config"]
    assert (config["concepts"], config["layers"], config["strengths"]) == (["dog", "cat"], [1], [0.5, 1.0])
    assert (config["start"], config["seed"], config["max_new_tokens"]) == (-3, 2, 2)
    assert config["context"] == IntrospectionConfig().context and len(out["random_controls"]) == 4
    assert out["injection_start"] > 0 and len(out["trials"][0]["answer"]) > 0


def test_introspect_prefill(capsys):
    out = run_json(INTROSPECT + ["--prefill", "--no-random-controls"], capsys)
    assert out["kind"] == "introspection_prefill" and out["protocol"] == "prefill"
    assert (out["n_trials"], out["n_controls"], out["n_random_controls"]) == (4, 2, 0)
    assert [(c["layer"], c["strength"], c["n"]) for c in out["grid"]] == [(1, 0.5, 2), (1, 1.0, 2)]
    assert set(out["grid"][0]) == {"layer", "strength", "accept_rate", "disavow_rate", "n"}
    assert all("Did you mean to say that" in t["transcript"] for t in out["trials"])
    assert out["config"]["random_controls"] is False


@pytest.mark.parametrize("argv, message", [
    (["introspect", "--concepts", "dog", "--layers", "1"] + M, "at least 2"),
    (["introspect", "--prefill", "--concepts", "dog", "--layers", "1"] + M, "at least 2"),
    (["introspect", "--layers", "1", "--max-new-tokens", "0"] + M, "max_new_tokens must be an integer >= 1"),
])
def test_introspect_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model or training the toy fails the test: the command must stop before."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the work started")
    monkeypatch.setattr(lmscope.cli.common, "load", refuse)
    monkeypatch.setattr(lmscope.papers.icl_update.cli, "icl_regression", refuse)
    return calls


@pytest.mark.parametrize("argv, message", [
    (["introspect", "--prefill", "--start", "all"] + M, "start does not apply to the prefill protocol"),
    (["introspect", "--prefill", "--question", "Why?"] + M, "question does not apply to the prefill protocol"),
    (["introspect", "--start", "middle"] + M, "start must be one of question, assistant, all"),
    (["introspect", "--context", " "] + M, "context is empty"),
])
def test_introspect_options_are_checked_before_the_model_loads(argv, message, no_work, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not no_work


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("flag, suffix", [("--json", ".json"), ("--html", ".html")])
def test_existing_output_is_refused_before_any_work(name, flag, suffix, tmp_path, no_work, capsys):
    target = tmp_path / f"out{suffix}"
    target.write_text("keep me")
    assert main(COMMANDS[name][0] + [flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--overwrite" in err
    assert target.read_text() == "keep me" and not no_work


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("flag, suffix", [("--json", ".json"), ("--html", ".html")])
def test_bad_location_fails_fast_before_any_work(name, flag, suffix, tmp_path, no_work, capsys):
    start = time.perf_counter()
    assert main(COMMANDS[name][0] + [flag, str(tmp_path / "missing" / f"out{suffix}")]) == 2
    assert time.perf_counter() - start < 1.0 and not no_work
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.parametrize("name", COMMANDS)
def test_overwrite_replaces_both_outputs_and_the_json_reads_back(name, tmp_path, capsys):
    argv, kind = COMMANDS[name]
    page, data = tmp_path / "out.html", tmp_path / "out.json"
    page.write_text("old")
    data.write_text("old")
    assert main(argv + ["--html", str(page), "--json", str(data), "--overwrite"]) == 0
    assert "Plotly" in page.read_text()
    loaded = Result.load(data)
    assert loaded.kind == kind and loaded.to_json() == json.loads(data.read_text())
    assert capsys.readouterr().out == ""     # both outputs went to files
