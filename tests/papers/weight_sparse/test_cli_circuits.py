"""The circuit subcommands end to end on a tiny random model, and bad input as one clear error (exit code 2)."""
import json

from lmscope.papers.weight_sparse.cli_circuits import main


def test_prune_then_circuit_on_a_random_model(tmp_path, capsys):
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    args = ["--model", "random:llama", "--task", "quote-type", "--n", "16", "--steps", "2", "--reference", "4",
            "--kinds", "neurons", "--json"]
    assert main(["prune", *args, "--out", str(out), "--html", str(page)]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert saved["format"] == "lmscope node circuit" and set(saved["nodes"]) == {"neurons.0", "neurons.1", "neurons.2"}
    assert result["evaluation"]["n_nodes"] == sum(len(v) for v in saved["nodes"].values())
    assert page.exists()
    assert main(["circuit", str(out), *args, "--seed", "1"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["nodes"] == saved["nodes"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    taken = tmp_path / "taken.html"
    taken.write_text("x")
    assert main(["prune", "--model", "random:llama", "--task", "quote-type", "--html", str(taken)]) == 2
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["circuit", str(bad), "--model", "random:llama", "--task", "quote-type"]) == 2
    assert "not a node circuit file" in capsys.readouterr().err
    assert main(["compare", "--sparse", str(tmp_path), "--dense", str(tmp_path), "--tasks", "quote-type"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["prune", "--model", "random:llama", "--task", "no-such-task"]) == 2
