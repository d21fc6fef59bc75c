"""`lmscope harvest` and `lmscope harvest-check` through lmscope.cli.main on a random model: JSON output, the output
rule (an existing target refused, --overwrite, a bad location failing before the model loads) and the resume
exception."""
import json
import time


from lmscope.cli import main
from lmscope.results.base import Result

CORPUS = "python"  # always installed (the interpreter's standard library)


def _harvest_args(out, *extra):
    return ["harvest", "--model", "random:llama", "--corpus", CORPUS, "--sites", "resid_post.1", "--tokens", "60",
            "--out", str(out), "--seq-len", "16", "--shard-tokens", "40", *extra]




def test_harvest_and_check_print_json(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(_harvest_args(out, "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["kind"] == "harvest" and got["n_tokens"] == 60 and got["complete"] and got["n_shards"] == 2
    assert main(["harvest-check", str(out), "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["kind"] == "harvest_check" and check["tokens_in_shards"] == 60 and check["sha256_ok"]


def test_harvest_resumes_its_own_folder_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(_harvest_args(out, "--json")) == 0
    capsys.readouterr()
    assert main(_harvest_args(out, "--json")) == 0           # the documented exception: its own folder
    assert json.loads(capsys.readouterr().out)["shards_skipped"] == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("keep")
    assert main(_harvest_args(other, "--json")) == 2        # a folder with something else in it
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and (other / "x.txt").read_text() == "keep"


def test_harvest_json_and_html_files_follow_the_output_rule(tmp_path, capsys):
    out, page, data = tmp_path / "h", tmp_path / "h.html", tmp_path / "h.json"
    page.write_text("old")
    assert main(_harvest_args(out, "--html", str(page))) == 2
    assert page.read_text() == "old" and not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(_harvest_args(out, "--html", str(page), "--json", str(data), "--overwrite")) == 0
    assert "tokens per shard" in page.read_text()
    assert Result.load(data).n_tokens == 60
    check_page = tmp_path / "check.html"
    check_page.write_text("old")
    assert main(["harvest-check", str(out), "--html", str(check_page)]) == 2
    assert check_page.read_text() == "old"
    assert main(["harvest-check", str(out), "--html", str(check_page), "--overwrite"]) == 0
    assert "log10 of activation norms" in check_page.read_text()


def test_bad_locations_fail_before_the_model_loads(tmp_path, capsys, no_model_load):
    for args in (_harvest_args(tmp_path / "missing" / "h"),
                 _harvest_args(tmp_path / "h", "--html", str(tmp_path / "missing" / "p.html")),
                 _harvest_args(tmp_path / "h", "--json", str(tmp_path / "missing" / "r.json"))):
        start = time.perf_counter()
        assert main(args) == 2
        assert time.perf_counter() - start < 1.0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not exist" in err
    assert not no_model_load and not (tmp_path / "h").exists()


def test_harvest_result_round_trips(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(_harvest_args(out, "--json", str(tmp_path / "r.json"))) == 0
    r = Result.load(tmp_path / "r.json")
    assert Result.load(r.save(tmp_path / "again.json")).to_json() == r.to_json()
    assert main(["harvest-check", str(out), "--json", str(tmp_path / "c.json")]) == 0
    c = Result.load(tmp_path / "c.json")
    assert c.kind == "harvest_check" and Result.load(c.save(tmp_path / "c2.json")).to_json() == c.to_json()
