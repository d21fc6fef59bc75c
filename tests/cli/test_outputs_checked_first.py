"""Issue 14 item 4: every output location of every command (--json FILE, --html, --out, --save, --graph) is checked
before any work: a location in a missing folder fails in under a second, one line, exit 2, the model never loaded."""
import argparse
import gc
import shlex
import time

import pytest

import lmscope.cli.common
import lmscope.harvest.cli
from lmscope.cli import main
from lmscope.cli.main import build_parser

M = "--model random:llama"
BASE = {      # a command line that would run, less its outputs; {d} is a folder that exists
    "sites": "sites {M}", "check": "check {M}", "neuron": "neuron 1 7 {M}",
    "knowledge-neurons": "knowledge-neurons {M}", "direction extract": "direction extract formality {M} --layer 1",
    "direction sweep": "direction sweep sentiment {M} --tokens a",
    "steer": "steer hello --set formality --layer 1 {M}", "fv": "fv --task antonyms {M}", "truth": "truth {M}",
    "harvest": "harvest {M} --sites resid_post.1 --tokens 40 --out {d}/h", "harvest-check": "harvest-check {d}",
    "sae train": "sae train {M} --site resid_post.1 --out {d}/s", "sae eval": "sae eval {d} {M}",
    "sae features": "sae features {d} {M} --html {d}/f", "sae synthetic": "sae synthetic",
    "sae steer": "sae steer {d} hello {M} --latent 1 --value 3", "task": "task ioi {M}", "patch": "patch ioi {M}",
    "attribute": "attribute ioi {M}", "circuit": "circuit ioi {M}",
    "circuit eval": "circuit eval {d}/c.json --task ioi {M}", "lens": "lens hello {M}",
    "dla": "dla hello --target o {M}", "patchscope": "patchscope hello {M}", "backpatch": "backpatch {M}",
    "tuned-lens train": "tuned-lens train {M} --out {d}/t.safetensors", "tuned-lens eval": "tuned-lens eval {d}/t {M}",
    "latent-language": "latent-language {M}", "lre": "lre --relation country_capital {M}",
    "sparse train": "sparse train --preset tiny --out {d}/sp", "sparse tasks": "sparse tasks {d}",
    "sparse prune": "sparse prune {M} --task paren_or_bracket",
    "sparse circuit": "sparse circuit {d}/c.json --task paren_or_bracket",
    "sparse bridge": "sparse bridge --dense hf:{d}/a --sparse hf:{d}/b",
    "sparse compare": "sparse compare --sparse {d}/a --dense {d}/b --tasks paren_or_bracket",
    "icl-update": "icl-update {M}", "icl-regression": "icl-regression --tiny", "introspect": "introspect {M}",
    "direction orthogonalize": "direction orthogonalize {M} --vector {d}/v.safetensors --out {d}/o",
}
EXTRA = {     # outputs other than --json FILE and --html, each put in the missing folder in turn
    "harvest": ["--out"], "sae train": ["--out"], "sae synthetic": ["--out"], "sae features": ["--html"],
    "direction extract": ["--save"], "direction sweep": ["--save"], "direction orthogonalize": ["--out"],
    "circuit": ["--out", "--graph"], "tuned-lens train": ["--out"], "sparse train": ["--out"],
    "sparse prune": ["--out"], "sparse bridge": ["--save-bridges"],
}
SUFFIX = {"--json": ".json", "--html": ".html", "--save": ".safetensors", "--graph": ".html", "--out": "",
          "--save-bridges": ".safetensors"}


def _subparsers(parser):
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _parser(name: str):
    words = name.split()
    parser = _subparsers(build_parser())[words[0]]
    actions = _subparsers(parser)
    return actions[words[1]] if actions and len(words) > 1 else parser


def _cases():
    for name in BASE:
        flags = {o for a in _parser(name)._actions for o in a.option_strings}
        for flag in ["--json", "--html"] + EXTRA.get(name, []):
            if flag in flags:
                yield name, flag


CASES = [pytest.param(n, f, id=f"{n} {f}") for n, f in sorted(set(_cases()))]
CASES_OUT_SUFFIX = {("circuit", "--out"): ".json", ("sparse prune", "--out"): ".json",
                    ("tuned-lens train", "--out"): ".safetensors", ("sae features", "--html"): ""}


def test_every_command_is_covered():
    names = set()
    for name, p in _subparsers(build_parser()).items():
        actions = _subparsers(p)
        names |= {f"{name} {a}" for a in actions} if actions else {name}
    writers = {n for n in names if {"--json", "--html", "--out"} & {o for a in _parser(n)._actions
                                                                    for o in a.option_strings}}
    assert writers <= {p.values[0] for p in CASES}                # lab writes nothing (a local server)


@pytest.mark.parametrize("name,flag", CASES)
def test_a_bad_output_location_fails_first(name, flag, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output location was checked")
    monkeypatch.setattr(lmscope.cli.common, "load", refuse)
    monkeypatch.setattr(lmscope.harvest.cli, "load", refuse)
    argv = shlex.split(BASE[name].format(M=M, d=tmp_path))
    bad = str(tmp_path / "missing" / ("x" + CASES_OUT_SUFFIX.get((name, flag), SUFFIX[flag])))
    if flag in argv:
        argv[argv.index(flag) + 1] = bad
    else:
        argv += [flag, bad]
    gc.collect()                    # the garbage of earlier tests is not this command's time
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0], err
    assert elapsed < 1.0
    assert list(tmp_path.iterdir()) == []       # nothing written
