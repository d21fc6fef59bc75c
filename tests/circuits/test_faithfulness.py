"""Faithfulness, necessity, the random baseline, circuit files and the `lmscope circuit` command."""
import json

import pytest
import torch

from circuit_toy_task import toy_task
from conftest import random_model
from lmscope.circuits.circuit_file import CircuitFile, load_circuit
from lmscope.core.fingerprint import config_sha256
from lmscope.circuits.faithfulness import evaluate_circuit, gated_logits, gated_metric, normalised
from lmscope.circuits.means import task_means
from lmscope.circuits.nodes import gates
from lmscope.cli import main
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import FAMILIES


@pytest.fixture(scope="module")
def setup():
    m, task = random_model("llama"), toy_task(8)
    return m, task, task_means(m, task)


def test_normalised_faithfulness_known_values():
    assert normalised(3.0, 5.0, 1.0) == 0.5
    assert normalised(5.0, 5.0, 1.0) == 1.0 and normalised(1.0, 5.0, 1.0) == 0.0
    assert normalised(-1.0, 5.0, 1.0) == -0.5
    assert normalised(2.0, 1.0, 1.0) != normalised(2.0, 1.0, 1.0)   # nan: undefined without a gap


def test_full_and_empty_circuits_are_the_two_ends(setup):
    m, task, means = setup
    full = evaluate_circuit(m, task, means, *gates(m, [f"head.{l}.{h}" for l in range(3) for h in range(4)]
                                              + ["mlp.0", "mlp.1", "mlp.2"]), n_random=0)
    assert full.metric_circuit == full.metric_full and full.faithfulness == 1.0
    assert full.metric_without_circuit == full.metric_empty and full.necessity_drop == 1.0
    empty = evaluate_circuit(m, task, means, *gates(m, []), n_random=0)
    assert empty.faithfulness == 0.0 and empty.necessity_drop == 0.0 and empty.heads_kept == 0


def test_sufficiency_necessity_and_random_draws_are_the_runs_they_claim(setup):
    m, task, means = setup
    heads, mlps = gates(m, ["head.0.1", "head.2.3", "mlp.0"])
    r = evaluate_circuit(m, task, means, heads, mlps, n_random=4, seed=3)
    ones_h, ones_m = torch.ones_like(heads), torch.ones_like(mlps)
    m_full = float(gated_metric(m, task, means, ones_h, ones_m).double().mean())
    m_empty = float(gated_metric(m, task, means, 0 * heads, 0 * mlps).double().mean())
    m_c = float(gated_metric(m, task, means, heads, mlps).double().mean())
    m_wo = float(gated_metric(m, task, means, ones_h - heads, ones_m - mlps).double().mean())
    assert (r.metric_full, r.metric_empty, r.metric_circuit, r.metric_without_circuit) == (m_full, m_empty, m_c, m_wo)
    assert r.faithfulness == (m_c - m_empty) / (m_full - m_empty)
    assert r.necessity_drop == (m_full - m_wo) / (m_full - m_empty)
    assert r.heads == [[0, 1], [2, 3]] and r.mlps == [0] and len(r.random_draws) == 4
    # the draws: 2 random heads each, the circuit's MLPs, the seeded generator
    gen = torch.Generator().manual_seed(3)
    for got in r.random_draws:
        pick = torch.randperm(12, generator=gen)[:2]
        h = torch.zeros(12)
        h[pick] = 1
        want = float(gated_metric(m, task, means, h.view(3, 4), mlps).double().mean())
        assert got == normalised(want, m_full, m_empty)
    assert r.random_faithfulness == pytest.approx(sum(r.random_draws) / 4)
    keys = {"task", "method", "n_prompts", "metric_full", "metric_empty", "metric_circuit", "faithfulness",
            "heads_kept", "heads_total", "random_faithfulness", "necessity_drop"}
    assert keys <= set(json.loads(json.dumps(r.to_json())))


def test_gates_must_be_exact(setup):
    m, task, means = setup
    with pytest.raises(InputError, match="exactly 0 or 1"):
        evaluate_circuit(m, task, means, torch.full((3, 4), 0.5), torch.ones(3))


def test_circuit_file_round_trip_and_refusals(setup, tmp_path):
    m, task, means = setup
    r = evaluate_circuit(m, task, means, *gates(m, ["head.1.2", "mlp.2"]), n_random=1)
    path = CircuitFile.from_result(m, r).save(tmp_path / "c.json")
    c = load_circuit(path, m)
    assert c.heads == [[1, 2]] and c.mlps == [2] and c.config_hash == config_sha256(m) and c.task == "toy"
    with pytest.raises(InputError, match="exists"):
        CircuitFile.from_result(m, r).save(path)
    other = random_model("gpt2")
    with pytest.raises(InputError, match="circuit of 'random:llama'"):
        load_circuit(path, other)
    data = json.loads(path.read_text())
    data["heads"] = [[1, 7]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="unknown node head.1.7"):
        load_circuit(bad, m)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="not a circuit file"):
        load_circuit(tmp_path / "x.json", m)


def _pairs(path, n=8):
    lines = [{"clean": f"ab{c}de{c}", "corrupt": f"ab{c}dx{c}", "answer": "a", "wrong": "b"} for c in "fghijklmnop"[:n]]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_cli_prune_then_eval(tmp_path, capsys):
    pairs = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "circuit.json"
    code = main(["circuit", "--pairs", str(pairs), "--model", "random:llama", "--steps", "2", "--batch-size", "4",
                 "--heads", "3", "--random-draws", "2", "--out", str(out), "--json"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    assert got["method"] == "prune" and got["heads_total"] == 12 and got["heads_kept"] <= 3
    assert got["n_prompts"] == 4 and json.loads(out.read_text())["heads"] == got["heads"]
    code = main(["circuit", "eval", str(out), "--pairs", str(pairs), "--model", "random:llama", "--json",
                 "--random-draws", "1"])
    assert code == 0 and json.loads(capsys.readouterr().out)["n_prompts"] == 4   # the other 4 give the means
    # the same circuit on another model: one clear error line, exit code 2
    code = main(["circuit", "eval", str(out), "--pairs", str(pairs), "--model", "random:qwen2"])
    err = capsys.readouterr().err
    assert code == 2 and "circuit of 'random:llama'" in err and err.count("\n") == 1


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["circuit", "--pairs", str(empty), "--model", "random:llama"]) == 2
    assert "is empty" in capsys.readouterr().err
    pairs = _pairs(tmp_path / "p.jsonl")
    (tmp_path / "exists.json").write_text("keep me")
    assert main(["circuit", "--pairs", str(pairs), "--model", "random:llama", "--out",
                 str(tmp_path / "exists.json")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "exists.json").read_text() == "keep me"
    assert main(["circuit", "eval", "--pairs", str(pairs), "--model", "random:llama"]) == 2
    assert main(["circuit", "ioi", "--pairs", str(pairs), "--model", "random:llama"]) == 2


@pytest.mark.parametrize("method", ["patch", "eap"])
def test_cli_score_methods_keep_the_top_heads(tmp_path, capsys, method):
    pairs = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "c.json"
    code = main(["circuit", "--pairs", str(pairs), "--model", "random:llama", "--method", method, "--heads", "4",
                 "--random-draws", "1", "--out", str(out), "--json"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    scores = torch.tensor(json.loads(out.read_text())["scores"]["heads"])
    top = sorted(((float(scores[l, h]), l, h) for l in range(3) for h in range(4)), reverse=True)[:4]
    assert got["method"] == method and sorted(got["heads"]) == sorted([l, h] for _, l, h in top)
    assert got["mlps"] == [0, 1, 2] and got["heads_kept"] == 4


def test_the_result_names_the_tasks_corruption(setup):
    m, task, means = setup
    plain = evaluate_circuit(m, task, means, *gates(m, ["head.0.1"]), n_random=0)
    assert not any(n.startswith("corruption:") for n in plain.notes)
    task.info = {"corrupt": "all three names resampled (Wang et al.'s ABC)"}
    try:
        named = evaluate_circuit(m, task, means, *gates(m, ["head.0.1"]), n_random=0)
    finally:
        del task.info
    assert "corruption: all three names resampled (Wang et al.'s ABC)" in named.notes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lengths", [(7, 9), (7,)])
def test_every_gate_kept_gives_the_plain_last_logits(family, lengths):
    # gated_logits unembeds only the positions where some prompt ends (logits_to_keep as a tensor of positions):
    # the weight-sparse model took only an int, and crashed with two lengths or read the wrong position with one
    m, task = random_model(family), toy_task(4, lengths=lengths)
    got = gated_logits(m, task, task_means(m, task), torch.ones(m.n_layers, m.n_heads), torch.ones(m.n_layers))
    for row, ids in enumerate(task.clean):
        want = m.run([ids]).logits[0, -1]
        torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)
