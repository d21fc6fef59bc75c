"""`lmscope check`: the certificate, exit 0 / 1, --json and --html, and the output rule before the model loads."""
import dataclasses
import importlib
import json

import pytest

import lmscope
from lmscope.cli import main
from lmscope.cli.check import ModelCheck, check_model
from lmscope.results import Result

cli_main = importlib.import_module("lmscope.cli.main")


def broken_gemma():
    model = lmscope.load("random:gemma2")
    model.adapter = dataclasses.replace(model.adapter, attn_out="self_attn")   # forgets Gemma's post-norm
    return model


def test_prints_the_certificate_and_exits_0(capsys):
    assert main(["check", "random:qwen3"]) == 0
    out = capsys.readouterr().out
    assert "lmscope check: random:qwen3 (llama, 3 layers, float32" in out
    assert "tolerance exact" in out and "(dtype-scaled)" in out
    assert out.strip().splitlines()[-1] == "certificate: every check passed"


def test_exits_1_when_a_check_fails(monkeypatch, capsys):
    bad = broken_gemma()
    monkeypatch.setattr(cli_main.check_cli, "load_model", lambda args: bad)
    assert main(["check", "--model", "random:gemma2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  resid_mid == resid_pre + attn_out" in out and "certificate: FAILED (resid_mid" in out
    assert main(["check", "--model", "random:gemma2", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "model_check" and data["passed"] is False
    failed = [c for c in data["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["resid_mid == resid_pre + attn_out"] and failed[0]["max_abs_diff"] > 0


def test_json_and_html_files_and_the_output_rule(tmp_path, capsys):
    page, data = tmp_path / "c.html", tmp_path / "c.json"
    assert main(["check", "random:gpt2", "--html", str(page), "--json", str(data)]) == 0
    assert "certificate: every check passed" in page.read_text()
    assert json.loads(data.read_text())["family"] == "gpt2"
    before = data.read_text()
    capsys.readouterr()
    assert main(["check", "random:gpt2", "--json", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --overwrite" in err[0] and data.read_text() == before
    assert main(["check", "random:gpt2", "--json", str(data), "--overwrite"]) == 0


def test_a_bad_output_path_fails_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(cli_main.check_cli, "load_model", lambda args: pytest.fail("the model was loaded"))
    assert main(["check", "random:llama", "--html", "/nonexistent/dir/x.html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_result_round_trips():
    result = check_model(lmscope.load("random:falcon"))
    again = Result.from_json(json.loads(json.dumps(result.to_json(), allow_nan=False)))
    assert isinstance(again, ModelCheck) and again.to_json() == result.to_json() and again.passed
    assert result.figure().data[0].y[0] > 0  # a zero difference is drawn at 1e-45 on the log axis
