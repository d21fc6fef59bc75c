"""Part 4's commands through lmscope.cli.main on a random model: output parsed, the output rule enforced (an
existing file refused, --overwrite replaces it, a bad location fails before the model loads)."""
import importlib
import json
import time

import pytest

import lmscope.cli.common
from lmscope.cli import main
from lmscope.results import Result

M = ["--model", "random:llama"]
WORDS = [{"en": "dog", "fr": "chien", "es": "perro"}, {"en": "book", "fr": "livre", "es": "libro"},
         {"en": "water", "fr": "eau", "es": "agua"}]
TWO_HOP = [{"query": "ab cd", "answer": "e"}, {"query": "fg hi", "answer": "j"}]

# name -> (argv without outputs, the result kind)
COMMANDS = {
    "lens": (["lens", "hello", "--target", "o", "--top-k", "2"] + M, "logit_lens"),
    "dla": (["dla", "hello", "--target", "o", "--top", "3"] + M, "direct_logit_attribution"),
    "patchscope": (["patchscope", "hello", "--layers", "0,2", "--max-new-tokens", "2"] + M, "patchscope"),
    "backpatch": (["backpatch", "--step", "1"] + M, "backpatch"),
    "latent-language": (["latent-language", "--shots", "1"] + M, "latent_language"),
    "lre": (["lre", "--relation", "country_capital", "--layer", "1", "--train", "2", "--ranks", "4",
             "--beta", "1,2"] + M, "lre"),
}


@pytest.fixture(autouse=True)
def small_sets(monkeypatch):
    """The bundled word list and two-hop set are long; a random model needs only a few items."""
    monkeypatch.setattr(importlib.import_module("lmscope.lenses.latent_language"), "load_words", lambda: WORDS)
    monkeypatch.setattr(importlib.import_module("lmscope.lenses.backpatch"), "two_hop_items", lambda: TWO_HOP)


def run_json(argv, capsys) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_lens(capsys):
    out = run_json(COMMANDS["lens"][0], capsys)
    assert out["kind"] == "logit_lens" and out["tokens"] == list("hello") and len(out["top"]) == 3
    assert out["target"]["token"] == "o" and len(out["target"]["rank"]) == 3


def test_dla(capsys):
    out = run_json(COMMANDS["dla"][0], capsys)
    assert out["kind"] == "direct_logit_attribution" and out["target"] == "o"
    assert out["sum_of_parts"] == pytest.approx(out["logit"], rel=1e-4, abs=1e-4)


def test_patchscope(capsys):
    out = run_json(COMMANDS["patchscope"][0], capsys)
    assert out["kind"] == "patchscope" and out["config"]["layers"] == [0, 2]
    assert [(c["source_layer"], c["target_layer"]) for c in out["cells"]] == [(0, 0), (2, 2)]
    assert out["config"]["max_new_tokens"] == 2 and out["source_token"] == "o"


def test_backpatch(capsys):
    out = run_json(COMMANDS["backpatch"][0], capsys)
    assert out["kind"] == "backpatch" and out["n_queries"] == 2 and out["layers"] == [0, 1, 2]
    assert out["n_wrong"] == sum(not q["correct"] for q in out["queries"])


def test_latent_language(capsys):
    out = run_json(COMMANDS["latent-language"][0], capsys)
    assert out["kind"] == "latent_language" and out["n_words"] == 3 and len(out["p_english"]) == 3
    assert all(0 <= p <= 1 for p in out["p_english"] + out["p_target"])


def test_lre(capsys):
    out = run_json(COMMANDS["lre"][0], capsys)
    assert out["kind"] == "lre" and out["relation"] == "country_capital" and out["layer"] == 1
    assert out["config"] == {"layers": [1], "betas": [1.0, 2.0], "ranks": [4], "n_train": 2, "n_demo": 3,
                             "seed": 0}
    assert list(out["layers"][0]["loo_faithfulness"]) == ["1", "2"] and out["rank"] == 4


def test_tuned_lens_train_then_eval(tmp_path, capsys):
    lens = tmp_path / "lens.safetensors"
    out = run_json(["tuned-lens", "train", "--tokens", "300", "--steps", "3", "--out", str(lens)] + M, capsys)
    assert out["model"] == "random:llama" and out["steps"] == 3 and lens.is_file()
    out = run_json(["tuned-lens", "eval", str(lens), "--tokens", "40"] + M, capsys)
    assert out["kind"] == "tuned_lens_eval" and out["n_tokens"] == 40 and len(out["kl_tuned"]) == 3
    assert out["kl_logit"][-1] == out["kl_tuned"][-1] == pytest.approx(0.0, abs=1e-6)
    saved = tmp_path / "eval.json"
    assert main(["tuned-lens", "eval", str(lens), "--tokens", "40", "--json", str(saved)] + M) == 0
    assert Result.load(saved).to_json() == json.loads(saved.read_text())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_existing_output_is_refused_then_overwritten(name, tmp_path, capsys):
    argv, kind = COMMANDS[name]
    for flag, target in (("--json", tmp_path / "r.json"), ("--html", tmp_path / "r.html")):
        target.write_text("old")
        assert main(argv + [flag, str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "exists" in err and target.read_text() == "old"
    json_file = tmp_path / "r.json"
    assert main(argv + ["--json", str(json_file), "--overwrite"]) == 0
    saved = json.loads(json_file.read_text())
    assert saved["kind"] == kind and Result.load(json_file).to_json() == saved     # the result round-trips


def test_tuned_lens_out_is_refused_then_overwritten(tmp_path, capsys):
    lens = tmp_path / "lens.safetensors"
    lens.write_text("old")
    argv = ["tuned-lens", "train", "--tokens", "200", "--steps", "2", "--out", str(lens)] + M
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "exists" in err and lens.read_text() == "old"
    assert main(argv + ["--overwrite"]) == 0
    assert lens.stat().st_size > 1000
    page = tmp_path / "eval.html"
    page.write_text("old")
    assert main(["tuned-lens", "eval", str(lens), "--tokens", "20", "--html", str(page)] + M) == 2
    assert page.read_text() == "old"
    assert main(["tuned-lens", "eval", str(lens), "--tokens", "20", "--html", str(page), "--overwrite"] + M) == 0
    assert "Plotly" in page.read_text()


BAD_LOCATIONS = [(COMMANDS[name][0], flag, suffix) for name in sorted(COMMANDS)
                 for flag, suffix in (("--json", ".json"), ("--html", ".html"))]
BAD_LOCATIONS += [(["tuned-lens", "train"] + M, "--out", ".safetensors"),
                  (["tuned-lens", "train"] + M, "--json", ".json")]


@pytest.mark.parametrize("argv,flag,suffix", BAD_LOCATIONS)
def test_bad_location_fails_before_the_model_loads(argv, flag, suffix, tmp_path, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(lmscope.cli.common, "load", no_load)
    start = time.perf_counter()
    assert main(argv + [flag, str(tmp_path / "missing" / f"r{suffix}")]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_tuned_lens_eval_bad_lens_file_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lmscope.cli.common, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["tuned-lens", "eval", str(tmp_path / "none.safetensors")] + M) == 2
    assert "no tuned lens file" in capsys.readouterr().err
