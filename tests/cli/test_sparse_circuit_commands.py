"""The circuit subcommands end to end on a tiny random model, and bad input as one clear error (exit code 2)."""
import json

from lmscope.cli import main


def test_prune_then_circuit_on_a_random_model(tmp_path, capsys):
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    args = ["--model", "random:llama", "--task", "quote-type", "--n", "16", "--steps", "2", "--reference", "4",
            "--kinds", "neurons", "--json"]
    assert main(["sparse", "prune", *args, "--out", str(out), "--html", str(page)]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert saved["format"] == "lmscope node circuit" and set(saved["nodes"]) == {"neurons.0", "neurons.1", "neurons.2"}
    assert result["evaluation"]["n_nodes"] == sum(len(v) for v in saved["nodes"].values())
    assert page.exists()
    assert main(["sparse", "circuit", str(out), *args, "--seed", "1"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["nodes"] == saved["nodes"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    taken = tmp_path / "taken.html"
    taken.write_text("x")
    assert main(["sparse", "prune", "--model", "random:llama", "--task", "quote-type", "--html", str(taken)]) == 2
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["sparse", "circuit", str(bad), "--model", "random:llama", "--task", "quote-type"]) == 2
    assert "not a node circuit file" in capsys.readouterr().err
    assert main(["sparse", "compare", "--sparse", str(tmp_path), "--dense", str(tmp_path), "--tasks", "quote-type"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["sparse", "prune", "--model", "random:llama", "--task", "no-such-task"]) == 2
    capsys.readouterr()
    assert main(["sparse", "prune", "--model", "random:llama", "--task", "quote-type", "--ctx", "4096"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "longer than random:llama's context (256 tokens)" in err


def test_bridge_between_two_tiny_models(tmp_path, capsys):
    """Bridges between two random models that share the byte tokenizer: per-layer NMSE and hybrid KL, held out."""
    assert main(["sparse", "bridge", "--dense", "random:llama", "--sparse", "random:gpt2", "--steps", "2",
                 "--train-windows", "4", "--heldout-windows", "2", "--ctx", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "sparse_bridges"
    rows = result["per_layer"]
    assert [r["dense_layer"] for r in rows] == list(range(len(rows))) and len(rows) >= 2
    assert all(r["nmse_to_sparse"] > 0 and r["kl_dense_to_sparse"] >= 0 and r["kl_sparse_to_dense"] >= 0 for r in rows)
