"""Every subcommand of part 2's directions (direction extract / sweep / orthogonalize, steer, steer --dose) through
lmscope.cli.main on a random model; the output rule for each file or folder they write."""
import json
import time

import pytest

import lmscope.cli.common
from lmscope.cli.main import main

MODEL = ["--model", "random:llama"]
EXTRACT = ["direction", "extract", "formality", *MODEL, "--layers", "1,2", "--no-probe"]
SWEEP = ["direction", "sweep", "sentiment", *MODEL, "--layers", "0", "--tokens", "a", "--n-eval", "2"]
STEER = ["steer", "hello", "--set", "formality", "--layer", "1", *MODEL, "--coefs=-2,0,2", "--max-new-tokens", "2"]
DOSE = STEER + ["--dose", "--kl-tokens", "40"]


@pytest.fixture(scope="module")
def vector(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    assert main(EXTRACT + ["--save", str(path), "--layer", "1"]) == 0
    return path


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_extract(capsys, vector):
    assert main(EXTRACT + ["--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "contrast" and out["layers"] == [1, 2] and out["n_positive"] == 48
    assert len(out["dom_norm"][0]) == 2 and out["dom_norm"][0][0] > 0


def test_sweep(capsys):
    assert main(SWEEP + ["--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "direction_sweep" and out["layers"] == [0] and out["kl"][0][0] >= 0
    assert out["kl_direction"] == "KL(reference || edited)" and out["config"]["n_eval"] == 2
    assert out["protocol"] == "arditi" and out["n_build"][0] > 0


def test_steer(capsys, vector):
    assert main(["steer", "hello", "--vector", str(vector), *MODEL, "--coefs=-2,0,2", "--max-new-tokens", "2",
                 "--score", "sentiment", "--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "steering" and out["coefs"] == [-2.0, 0.0, 2.0] and out["site"] == "resid_post.1"
    assert len(out["texts"]) == 3 and out["config"]["max_new_tokens"] == 2


def test_steer_dose(capsys):
    assert main(DOSE + ["--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "steering_dose_response" and out["kl"][1] == 0.0 and out["kl"][0] > 0
    assert out["kl_direction"] == "KL(edited || reference)" and out["config"]["kl_tokens"] == 40


def test_orthogonalize(capsys, vector, tmp_path):
    out = tmp_path / "orth"
    assert main(["direction", "orthogonalize", "--vector", str(vector), "--out", str(out), *MODEL]) == 0
    assert (out / "lmscope_orthogonalization.json").is_file()


# --- the output rule ------------------------------------------------------------------------------------------

WRITERS = {
    "extract --json": lambda p: EXTRACT + ["--json", str(p.with_suffix(".json"))],
    "extract --html": lambda p: EXTRACT + ["--html", str(p.with_suffix(".html"))],
    "extract --save": lambda p: EXTRACT + ["--save", str(p.with_suffix(".safetensors")), "--layer", "1"],
    "sweep --json": lambda p: SWEEP + ["--json", str(p.with_suffix(".json"))],
    "sweep --save": lambda p: SWEEP + ["--save", str(p.with_suffix(".safetensors")), "--layer", "0"],
    "steer --html": lambda p: STEER + ["--html", str(p.with_suffix(".html"))],
    "steer --dose --json": lambda p: DOSE + ["--json", str(p.with_suffix(".json"))],
}


def _target(argv):
    return next(a for a in argv if a.endswith((".json", ".html", ".safetensors")) and "/" in a)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_existing_file_refused_then_overwritten(name, tmp_path, capsys):
    argv = WRITERS[name](tmp_path / "out")
    target = tmp_path / _target(argv).rsplit("/", 1)[1]
    target.write_text("keep me")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and target.read_text() == "keep me"
    assert main(argv + ["--overwrite"]) == 0
    assert target.read_bytes() != b"keep me"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_folder_fails_before_the_model_loads(name, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(lmscope.cli.common, "load", lambda *a, **k: calls.append(a) or 1 / 0)
    argv = WRITERS[name](tmp_path / "missing" / "out")
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 1.0 and not calls
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_orthogonalize_folder_rule(vector, tmp_path, capsys, monkeypatch):
    out = tmp_path / "orth"
    out.mkdir()
    (out / "keep").write_text("keep me")
    argv = ["direction", "orthogonalize", "--vector", str(vector), "--out", str(out), *MODEL]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1 and (out / "keep").read_text() == "keep me"
    assert main(argv + ["--overwrite"]) == 0
    assert not (out / "keep").exists() and (out / "lmscope_orthogonalization.json").is_file()
    calls = []
    monkeypatch.setattr(lmscope.cli.common, "load", lambda *a, **k: calls.append(a) or 1 / 0)
    start = time.perf_counter()
    assert main(["direction", "orthogonalize", "--vector", str(vector), "--out", str(tmp_path / "no" / "o"),
                 *MODEL]) == 2
    assert time.perf_counter() - start < 1.0 and not calls and "does not exist" in capsys.readouterr().err
