"""`lmscope task|patch|attribute|circuit|circuit eval` through lmscope.cli.main on a random model: JSON output, a
round trip per result class, and the output rule (an existing target refused, --overwrite, a bad location failing
before the model loads)."""
import json
import time

import pytest

import lmscope
from lmscope.circuits import circuit_graph, load_circuit_task
from lmscope.circuits.nodes import parse_node
from lmscope.cli import main
from lmscope.results.base import Result

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = []
    for i in range(8):
        word = LETTERS[i:i + 5]
        rows.append({"clean": word, "corrupt": word[:2] + "z" + word[3:], "answer": LETTERS[i + 5],
                     "wrong": LETTERS[i + 6]})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path




def _run_json(args, tmp_path, kind):
    path = tmp_path / f"{kind}_{len(list(tmp_path.iterdir()))}.json"
    assert main(args + ["--model", "random:llama", "--json", str(path)]) == 0
    r = Result.load(path)
    assert r.kind == kind and Result.load(r.save(path.with_suffix(".again.json"))).to_json() == r.to_json()
    return r


def test_task_patch_attribute(pairs, tmp_path, capsys):
    t = _run_json(["task", "--pairs", str(pairs)], tmp_path, "circuit_task")
    assert t.n == 8 and t.metric_name == "logit_diff" and 0 <= t.clean_accuracy <= 1
    p = _run_json(["patch", "--pairs", str(pairs), "--sites", "resid_pre,z"], tmp_path, "activation_patching")
    assert set(p.effects) == {"resid_pre", "z"} and p.n_prompts == 8 and p.direction == "denoising"
    a = _run_json(["attribute", "--pairs", str(pairs), "--edges"], tmp_path, "circuit_attribution")
    assert a.method == "eap" and len(a.heads) == 3 and a.edges is not None
    assert main(["task", "--pairs", str(pairs), "--model", "random:llama", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "circuit_task"


def test_circuit_find_save_and_eval(pairs, tmp_path, capsys):
    out, graph = tmp_path / "c.json", tmp_path / "g.html"
    args = ["circuit", "--pairs", str(pairs), "--steps", "3", "--batch-size", "4", "--heads", "3",
            "--random-draws", "1", "--out", str(out), "--graph", str(graph)]
    r = _run_json(args, tmp_path, "circuit_faithfulness")
    assert r.method == "prune" and r.heads_total == 12 and r.training["steps"] == 3 and r.training["max_heads"] == 3
    assert json.loads(out.read_text())["format"] == "lmscope-circuit/1" and "Circuit graph" in graph.read_text()
    capsys.readouterr()
    for target in (out, graph):                       # each existing output is refused, nothing rewritten
        before = target.read_text()
        assert main(args + ["--model", "random:llama", "--json"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1 and target.read_text() == before
    assert main(args + ["--model", "random:llama", "--json", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "circuit_faithfulness"
    e = _run_json(["circuit", "eval", str(out), "--pairs", str(pairs), "--random-draws", "1"], tmp_path,
                  "circuit_faithfulness")
    assert e.n_prompts == 4 and "saved" in e.method   # the other 4 prompts give the means
    s = _run_json(["circuit", "--pairs", str(pairs), "--method", "eap", "--heads", "2", "--random-draws", "1"],
                  tmp_path, "circuit_faithfulness")
    assert s.heads_kept == 2 and s.method == "eap"


def test_circuit_graph_round_trips(pairs, tmp_path):
    m = lmscope.load("random:llama")
    task = load_circuit_task(m, pairs)
    g = circuit_graph(m, task, [parse_node(m, "head.1.2"), parse_node(m, "mlp.2")], n_prompts=4)
    r = Result.load(g.save(tmp_path / "g.json"))
    assert r.kind == "circuit_graph" and r.to_json() == g.to_json() and r.edges and r.n_prompts == 4
    assert Result.load(r.save(tmp_path / "g2.json")).to_json() == g.to_json()


def test_html_page_refused_then_overwritten(pairs, tmp_path, capsys):
    page = tmp_path / "t.html"
    page.write_text("old")
    args = ["task", "--pairs", str(pairs), "--model", "random:llama", "--html", str(page)]
    assert main(args) == 2 and page.read_text() == "old"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(args + ["--overwrite"]) == 0 and "Task baseline" in page.read_text()


def test_bad_locations_fail_before_the_model_loads(pairs, tmp_path, capsys, no_model_load):
    missing = tmp_path / "missing"
    for args in (["task", "--pairs", str(pairs), "--html", str(missing / "t.html")],
                 ["patch", "--pairs", str(pairs), "--json", str(missing / "p.json")],
                 ["attribute", "--pairs", str(pairs), "--html", str(missing / "a.html")],
                 ["circuit", "--pairs", str(pairs), "--out", str(missing / "c.json")],
                 ["circuit", "--pairs", str(pairs), "--graph", str(missing / "g.html")],
                 ["circuit", "eval", str(tmp_path / "c.json"), "--pairs", str(pairs), "--json",
                  str(missing / "e.json")]):
        start = time.perf_counter()
        assert main(args + ["--model", "random:llama"]) == 2
        assert time.perf_counter() - start < 1.0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not exist" in err
    assert not no_model_load


def test_corruption_is_an_option_of_task_patch_and_attribute(pairs, capsys):
    for command in ("task", "patch", "attribute"):
        assert main([command, "--pairs", str(pairs), "--corruption", "abc", "--model", "random:llama"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "applies to the ioi task only" in err
