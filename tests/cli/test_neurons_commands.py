"""Part 1's commands through lmscope.cli.main on a random model: output parsed, the output rule enforced."""
import json
import time

import pytest

import lmscope.cli.common
import lmscope.neurons.knowledge
from lmscope.cli import main
from lmscope.data.number_agreement import AgreementPrompt
from lmscope.results import Result

COMMANDS = {
    "neuron": ["neuron", "1", "7", "--model", "random:llama", "--tokens", "300", "--top-k", "4"],
    "knowledge-neurons": ["knowledge-neurons", "--model", "random:llama", "--prompts", "2", "--steps", "2",
                          "--sweep", "1,3"],
}


@pytest.fixture(autouse=True)
def byte_sized_agreement(monkeypatch):
    """The bundled number-agreement set needs word tokens (' are', ' is'); random models have byte tokens, so the
    command runs on a small set whose two forms are one byte each."""
    items = [AgreementPrompt(f"{w} dogs", "s", "x", "plural", "subject-verb", i) for i, w in enumerate("abcd")]
    items += [AgreementPrompt(f"{w} dog", "x", "s", "singular", "subject-verb", i) for i, w in enumerate("abcd")]
    monkeypatch.setattr(lmscope.neurons.knowledge, "load_number_agreement", lambda: items)


def test_neuron_command(capsys):
    assert main(COMMANDS["neuron"] + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "neuron_profile" and out["layer"] == 1 and out["index"] == 7 and out["n_tokens"] == 300
    assert len(out["top_contexts"]) == 4 and out["top_contexts"][0]["value"] == out["stats"]["max"]
    assert out["dose_response"]["kind"] == "neuron_dose_response"


def test_knowledge_neurons_command(capsys):
    assert main(COMMANDS["knowledge-neurons"] + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "knowledge_neurons_agreement" and out["attribution_prompts"] == 2
    assert [row["k"] for row in out["sweep"]] == [1, 3]
    assert 0 <= out["accuracy_before"] <= 1 and out["n_prompts"] == 2
    assert not set(out["attribution_pairs"]) & set(out["evaluated_pairs"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag,name_of_file", [("--json", "r.json"), ("--html", "r.html")])
def test_existing_output_is_refused_then_overwritten(name, flag, name_of_file, tmp_path, capsys):
    target = tmp_path / name_of_file
    target.write_text("old")
    assert main(COMMANDS[name] + [flag, str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and target.read_text() == "old"
    if flag == "--json":   # one real run per command is enough to show --overwrite replaces it
        assert main(COMMANDS[name] + [flag, str(target), "--overwrite"]) == 0
        saved = json.loads(target.read_text())
        assert saved["kind"] in ("neuron_profile", "knowledge_neurons_agreement")
        assert Result.load(target).to_json() == saved     # the result round-trips


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_bad_location_fails_before_the_model_loads(name, flag, tmp_path, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(lmscope.cli.common, "load", no_load)
    start = time.perf_counter()
    suffix = ".json" if flag == "--json" else ".html"
    assert main(COMMANDS[name] + [flag, str(tmp_path / "missing" / f"r{suffix}")]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
