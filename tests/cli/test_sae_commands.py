"""`lmscope sae train|eval|features|steer|synthetic` through lmscope.cli.main on a random model: JSON output, a
round trip per result class, and the output rule (an existing target refused, --overwrite, a bad location failing
before the model loads)."""
import json
import time

import pytest

from lmscope.cli import main
from lmscope.results.base import Result

TRAIN = ["sae", "train", "--model", "random:llama", "--site", "resid_post.1", "--corpus", "python", "--n-tokens", "512",
         "--batch-size", "64", "--k", "4", "--expansion", "2", "--shuffle-buffer", "1024", "--seq-len", "16",
         "--norm-batches", "1", "--dead-tokens", "1000", "--warmup-steps", "1"]
SYNTHETIC = ["sae", "synthetic", "--features", "16", "--dim", "8", "--tokens", "2048", "--batch-size", "256", "--k",
             "2"]
MODEL = ["--model", "random:llama", "--corpus", "python"]


def _round_trip(path, tmp_path, kind):
    r = Result.load(path)
    assert r.kind == kind
    assert Result.load(r.save(tmp_path / f"again_{kind}.json")).to_json() == r.to_json()
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "sae"
    report = folder.parent / "train.json"
    assert main(TRAIN + ["--out", str(folder), "--json", str(report)]) == 0
    return folder, report




def test_train_writes_the_sae_and_its_result(trained, tmp_path):
    folder, report = trained
    assert (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file()
    r = _round_trip(report, tmp_path, "sae_train")
    assert r.config.k == 4 and r.n_tokens == 512 and r.sae_config["d_sae"] == 128 and r.final["l0"] > 0


def test_train_refuses_a_used_folder_and_overwrites_on_request(trained, tmp_path, capsys):
    out = tmp_path / "sae"
    out.mkdir()
    (out / "x.txt").write_text("keep")
    assert main(TRAIN + ["--out", str(out), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and (out / "x.txt").read_text() == "keep"
    assert main(TRAIN + ["--out", str(out), "--json", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "sae_train" and (out / "cfg.json").is_file()


def test_eval_and_steer_print_json(trained, tmp_path, capsys):
    folder, _ = trained
    assert main(["sae", "eval", str(folder), *MODEL, "--tokens", "64", "--json", str(tmp_path / "e.json")]) == 0
    e = _round_trip(tmp_path / "e.json", tmp_path, "sae_eval")
    assert e.n_tokens == 64 and 0 < e.l0 <= 4 and e.site_in == "resid_post.1"
    assert main(["sae", "steer", str(folder), "Hello there", "--latent", "3", "--value", "5", "--max-new-tokens",
                 "2", "--model", "random:llama", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["kind"] == "sae_steer" and s["latent"] == 3 and s["value"] == 5.0 and s["clean"]
    assert main(["sae", "steer", str(folder), "Hello there", "--latent", "3", "--value", "5", "--max-new-tokens",
                 "2", "--model", "random:llama", "--json", str(tmp_path / "s.json")]) == 0
    _round_trip(tmp_path / "s.json", tmp_path, "sae_steer")


def test_features_write_pages_and_follow_the_output_rule(trained, tmp_path, capsys):
    folder, _ = trained
    pages = tmp_path / "pages"
    args = ["sae", "features", str(folder), *MODEL, "--tokens", "64", "--latents", "0,1", "--top-k", "2",
            "--html", str(pages)]
    assert main(args + ["--json", str(tmp_path / "f.json")]) == 0
    f = _round_trip(tmp_path / "f.json", tmp_path, "sae_features")
    assert f.latents == [0, 1] and (pages / "index.html").is_file() and (pages / "feature_1.html").is_file()
    capsys.readouterr()
    assert main(args + ["--json"]) == 2                           # the folder holds the pages now
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(args + ["--json", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "sae_features"


def test_synthetic_prints_json_and_round_trips(tmp_path, capsys):
    assert main(SYNTHETIC + ["--json", str(tmp_path / "syn.json")]) == 0
    r = _round_trip(tmp_path / "syn.json", tmp_path, "sae_synthetic")
    assert r.n_features == 16 and r.d == 8 and r.config.k == 2 and 0 <= r.mean_max_cos <= 1
    out = tmp_path / "syn_sae"
    out.mkdir()
    (out / "x.txt").write_text("keep")
    assert main(SYNTHETIC + ["--out", str(out)]) == 2
    assert (out / "x.txt").read_text() == "keep" and not (out / "cfg.json").exists()
    assert main(SYNTHETIC + ["--out", str(out), "--overwrite", "--json"]) == 0
    assert (out / "cfg.json").is_file()


def test_bad_locations_fail_before_the_model_loads(trained, tmp_path, capsys, no_model_load):
    folder, _ = trained
    missing = tmp_path / "missing"
    for args in (TRAIN + ["--out", str(missing / "sae")],
                 TRAIN + ["--out", str(tmp_path / "ok"), "--html", str(missing / "p.html")],
                 ["sae", "eval", str(folder), *MODEL, "--json", str(missing / "e.json")],
                 ["sae", "eval", str(folder), *MODEL, "--html", str(missing / "e.html")],
                 ["sae", "features", str(folder), *MODEL, "--html", str(missing / "pages")],
                 ["sae", "steer", str(folder), "Hi", "--latent", "1", "--value", "1", "--model", "random:llama",
                  "--json", str(missing / "s.json")],
                 SYNTHETIC + ["--out", str(missing / "s")]):
        start = time.perf_counter()
        assert main(args) == 2
        assert time.perf_counter() - start < 1.0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not exist" in err
    assert not no_model_load and not (tmp_path / "ok").exists()
