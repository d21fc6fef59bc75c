"""`lmscope sites` through lmscope.cli.main on random models: the summary, the JSON (every site, each kind's shape),
the output rule for --json FILE; and every subcommand's --help (subcommands do not inherit the grouped help)."""
import json
import time

import pytest

import lmscope.cli.common
from conftest import random_model
from lmscope.cli import main
from lmscope.cli.main import build_parser
from lmscope.cli.sites import ModelSites
from lmscope.results import Result


def test_summary_lists_each_site_kind_with_its_shape(capsys):
    assert main(["sites", "--model", "random:gpt_neox"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = random_model("gpt_neox")
    assert lines[0] == repr(model)
    assert lines[1].startswith("adapter: gpt_neox (") and "parallel" in lines[1]
    assert "  z.0 .. z.2  [batch, seq, 4, 16]" in lines and "  pattern.0 .. pattern.2  [batch, heads, query, key]" in lines
    assert "  embed  [batch, seq, 64]" in lines and "  logits  [batch, seq, 260]" in lines
    assert len(lines) == 2 + len({s.kind for s in model.sites()})


def test_json_names_every_site(capsys):
    assert main(["sites", "--model", "random:llama", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = random_model("llama")
    assert out["kind"] == "sites" and out["family"] == "llama" and out["parallel"] is False
    assert (out["n_layers"], out["d_model"], out["n_heads"], out["d_head"], out["d_mlp"], out["vocab_size"]) == \
        (model.n_layers, model.d_model, model.n_heads, model.d_head, model.d_mlp, model.vocab_size)
    assert out["sites"] == [str(s) for s in model.sites()] and "resid_post.2" in out["sites"]
    assert out["shapes"]["z"] == [4, 16] and out["shapes"]["neurons"] == [96] and out["shapes"]["pattern"] is None


def test_json_file_output_rule(tmp_path, monkeypatch, capsys):
    target = tmp_path / "sites.json"
    assert main(["sites", "--model", "random:llama", "--json", str(target)]) == 0
    assert capsys.readouterr().err == f"lmscope: wrote {target}\n"
    loaded = Result.load(target)
    assert isinstance(loaded, ModelSites) and loaded.to_json() == json.loads(target.read_text())
    assert loaded.summary().startswith("Model('random:llama'")
    calls = []
    monkeypatch.setattr(lmscope.cli.common, "load", lambda *a, **k: calls.append(a) or 1 / 0)
    target.write_text("keep me")
    assert main(["sites", "--model", "random:llama", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and target.read_text() == "keep me"
    start = time.perf_counter()
    assert main(["sites", "--json", str(tmp_path / "missing" / "s.json")]) == 2
    assert time.perf_counter() - start < 1.0 and not calls
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["sites", "--model", "random:gpt2", "--json", str(target), "--overwrite"]) == 0
    assert json.loads(target.read_text())["family"] == "gpt2"


def test_sites_has_no_html_option(capsys):
    with pytest.raises(SystemExit):
        main(["sites", "--html", "x.html"])
    assert "unrecognized arguments: --html" in capsys.readouterr().err


def test_every_subcommand_help_prints_its_own_usage(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: lmscope {name}")
