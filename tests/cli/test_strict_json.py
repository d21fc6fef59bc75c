"""Issue 14 item 6: every command's --json output is strict JSON (no bare NaN or Infinity: null, and the result says
why), checked by parsing each command's output with json.loads(..., parse_constant=<raise>) on a random model."""
import argparse
import importlib
import json
import shlex

import pytest

from lmscope.cli import main
from lmscope.cli.main import build_parser
from lmscope.cli.common import emit
from lmscope.data.number_agreement import AgreementPrompt
from lmscope.lenses.dla import Component, DLAResult

M = "--model random:llama"
CORPUS = "--corpus python"
# one small run per command (and per action of the commands that have actions); {d} is a folder of inputs
RUNS = {
    "sites": "sites {M}",
    "check": "check {M}",
    "neuron": "neuron 1 7 {M} --tokens 200 --top-k 3 " + CORPUS,
    "knowledge-neurons": "knowledge-neurons {M} --prompts 2 --steps 2 --sweep 1,3",
    "direction extract": "direction extract formality {M} --layers 1,2 --no-probe",
    "direction sweep": "direction sweep sentiment {M} --layers 0 --tokens a --n-eval 2",
    "steer": "steer hello --set formality --layer 1 {M} --coefs=-2,0,2 --max-new-tokens 2",
    "fv": "fv --task antonyms {M} --shots 2 --heads 2 --mean-prompts 3 --cie-prompts 2 --layers 1,2 "
          "--no-task-vector",
    "truth": "truth {M} --layers 0,2 --top-k 2 --no-heads",
    "harvest": "harvest {M} " + CORPUS + " --sites resid_post.1 --tokens 40 --seq-len 16 --out {d}/h",
    "harvest-check": "harvest-check {d}/h",
    "sae train": "sae train {M} --site resid_post.1 " + CORPUS + " --n-tokens 256 --batch-size 64 --k 4 "
                 "--expansion 2 --shuffle-buffer 512 --seq-len 16 --norm-batches 1 --out {d}/sae",
    "sae eval": "sae eval {d}/sae {M} " + CORPUS + " --tokens 64",
    "sae features": "sae features {d}/sae {M} " + CORPUS + " --tokens 64 --latents 0,1 --top-k 2 --html {d}/f",
    "sae synthetic": "sae synthetic --features 16 --dim 8 --tokens 1024 --batch-size 256 --k 2",
    "sae steer": "sae steer {d}/sae hello {M} --latent 1 --value 3 --max-new-tokens 2",
    "task": "task --pairs {d}/pairs.jsonl {M}",
    "patch": "patch --pairs {d}/pairs.jsonl {M} --sites resid_pre,z",
    "attribute": "attribute --pairs {d}/pairs.jsonl {M}",
    "circuit": "circuit --pairs {d}/pairs.jsonl {M} --steps 2 --batch-size 4 --heads 3 --random-draws 2 "
               "--out {d}/c.json",
    "circuit eval": "circuit eval {d}/c.json --pairs {d}/pairs.jsonl {M} --random-draws 2",
    "lens": "lens hello --target o --top-k 2 {M}",
    "dla": "dla hello --target o --top 3 {M}",
    "patchscope": "patchscope hello --layers 0,2 --max-new-tokens 2 {M}",
    "backpatch": "backpatch --step 1 {M}",
    "tuned-lens train": "tuned-lens train {M} " + CORPUS + " --tokens 200 --steps 2 --out {d}/t.safetensors",
    "tuned-lens eval": "tuned-lens eval {d}/t.safetensors {M} " + CORPUS + " --tokens 40",
    "latent-language": "latent-language --shots 1 {M}",
    "lre": "lre --relation country_capital --layer 1 --train 2 --ranks 4 --beta 1,2 {M}",
    "icl-update": "icl-update --model random:qwen2 --prompt 'a -> b\\nc -> d\\ne ->'",
    "icl-regression": "icl-regression --tiny",
    "sparse train": "sparse train --preset tiny --steps 4 --out {d}/sp",
    "sparse tasks": "sparse tasks {d}/sp --tasks paren_or_bracket --n 5",
    "introspect": "introspect {M} --concepts dog,cat --layers 1 --strengths 0.5,1 --max-new-tokens 2",
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _refuse(constant):
    raise ValueError(f"bare {constant} in JSON output")


def strict(text: str):
    return json.loads(text, parse_constant=_refuse)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("strict_json")
    rows = [{"clean": LETTERS[i:i + 5], "corrupt": LETTERS[i:i + 2] + "z" + LETTERS[i + 3:i + 5],
             "answer": LETTERS[i + 5], "wrong": LETTERS[i + 6]} for i in range(8)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(autouse=True)
def small_sets(monkeypatch):
    """Random models have byte tokens: the bundled word sets are swapped for a few byte-sized items."""
    items = [AgreementPrompt(f"{w} dogs", "s", "x", "plural", "subject-verb", i) for i, w in enumerate("abcd")]
    items += [AgreementPrompt(f"{w} dog", "x", "s", "singular", "subject-verb", i) for i, w in enumerate("abcd")]
    monkeypatch.setattr(importlib.import_module("lmscope.neurons.knowledge"), "load_number_agreement", lambda: items)
    words = [{"en": "dog", "fr": "chien", "es": "perro"}, {"en": "book", "fr": "livre", "es": "libro"},
             {"en": "water", "fr": "eau", "es": "agua"}]
    monkeypatch.setattr(importlib.import_module("lmscope.lenses.latent_language"), "load_words", lambda: words)
    monkeypatch.setattr(importlib.import_module("lmscope.lenses.backpatch"), "two_hop_items",
                        lambda: [{"query": "ab cd", "answer": "e"}, {"query": "fg hi", "answer": "j"}])


def test_every_command_has_a_run():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    with_json = {n for n, p in sub.choices.items() if any("--json" in a.option_strings for a in p._actions)
                 or any(isinstance(a, argparse._SubParsersAction) for a in p._actions)}
    assert with_json <= {name.split()[0] for name in RUNS}       # lab serves pages; it prints no JSON


@pytest.mark.parametrize("name", list(RUNS))     # in order: harvest before harvest-check, sae train before eval
def test_json_output_is_strict(name, inputs, capsys):
    argv = shlex.split(RUNS[name].format(M=M, d=inputs)) + ["--json"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    data = strict(capsys.readouterr().out)
    assert isinstance(data, dict) and data


def test_nan_in_a_result_is_written_as_null(capsys):
    r = DLAResult("m", "p", ["p"], 0, "o", 1, float("nan"), [Component("embed", "embed", None, None, float("inf"))],
                  None, None, {"total": float("-inf")}, 1.0)
    emit(type("Args", (), {"json": "-", "html": None})(), r)
    data = strict(capsys.readouterr().out)
    assert data["logit"] is None and data["components"][0]["contribution"] is None
    assert data["remainder"]["total"] is None
