import json

import pytest
import torch

from conftest import random_model
from lmscope.cli import main
from lmscope.data.icl_tasks import load_cities
from lmscope.core.errors import InputError
from lmscope.directions.probes import fit_probe
from lmscope.directions.truth import split_cities, truth_direction, truth_statements


def test_statements_are_balanced_and_seeded():
    cities = load_cities()
    s = truth_statements(seed=0)
    assert len(s) == 2 * len(cities)
    assert s[0].text == f"The city of {s[0].city} is in {cities[s[0].city]}." and s[0].label
    for true, false in zip(s[::2], s[1::2]):
        assert true.city == false.city and true.label and not false.label
        assert true.country == cities[true.city] != false.country
        assert false.country in set(cities.values())
        assert false.text == f"The city of {false.city} is in {false.country}."
    assert s == truth_statements(seed=0) and s != truth_statements(seed=1)


def test_split_by_city():
    cities = sorted(load_cities())
    train, val, test = split_cities(cities, 0, 0.2, 0.2)
    assert train | val | test == set(cities) and not (train & val or train & test or val & test)
    assert len(test) == len(val) == round(0.2 * len(cities))
    assert (train, val, test) == split_cities(cities, 0, 0.2, 0.2)
    with pytest.raises(InputError, match="fractions"):
        split_cities(cities, 0, 0.5, 0.5)
    with pytest.raises(InputError, match="too few"):
        split_cities(["a", "b", "c"], 0, 0.2, 0.2)


@pytest.fixture(scope="module")
def result():
    return truth_direction(random_model("llama"), top_k=4, seed=0)


def test_truth_direction_recomputed(result):
    m = random_model("llama")
    r = result
    assert r.layers == list(range(m.n_layers)) and r.token == "." and r.position == -1
    assert r.n_train + r.n_val + r.n_test == 2 * len(load_cities()) and r.n_test == r.n_val
    # the same split, activations and probes by hand, for one layer and one head
    statements = truth_statements(0)
    train, val, test = split_cities(sorted({s.city for s in statements}), 0, 0.2, 0.2)
    run = m.run([s.text for s in statements], read=["resid_post.2", "z.1"])
    last = run.attention_mask.sum(1) - 1
    rows = torch.arange(len(statements))
    x, z = run.acts["resid_post.2"][rows, last].double(), run.acts["z.1"][rows, last].double()
    y = torch.tensor([s.label for s in statements])
    tr = torch.tensor([s.city in train for s in statements])
    te = torch.tensor([s.city in test for s in statements])
    va = torch.tensor([s.city in val for s in statements])
    probe = fit_probe(x[tr], y[tr], x[te], y[te])
    assert r.probe_test[2] == pytest.approx(probe.test_accuracy, abs=1.5 / int(te.sum()))
    d = x[tr & y].mean(0) - x[tr & ~y].mean(0)
    threshold = float((x[tr & y].mean(0) + x[tr & ~y].mean(0)) @ d) / 2
    assert r.dom_test[2] == pytest.approx(float(((x[te] @ d > threshold) == y[te]).double().mean()))
    assert torch.allclose(r.direction, d, atol=1e-6) or r.best_layer != 2
    head = fit_probe(z[tr, 3], y[tr], z[va, 3], y[va])
    assert r.head_val[1][3] == pytest.approx(head.test_accuracy, abs=1.5 / int(va.sum()))


def test_top_heads_ranked_by_validation(result):
    r = result
    vals = [v for _, _, v, _ in r.top_heads]
    assert len(r.top_heads) == 4 and vals == sorted(vals, reverse=True)
    assert all(r.head_val[la][h] == v and r.head_test[la][h] == t for la, h, v, t in r.top_heads)
    assert max(max(row) for row in r.head_val) == vals[0]
    assert r.best_layer == max(r.layers, key=lambda la: (r.probe_val[la], -la))


def test_outputs(result, tmp_path):
    j = json.loads(json.dumps(result.to_json()))
    assert j["probe_test"] == result.probe_test and j["top_heads"] == result.top_heads
    page = result.save(tmp_path / "truth.html").read_text()
    assert "Truth direction" in page and "plotly" in page.lower() and "validation acc" in page
    assert "best layer" in result.summary()


def test_options_and_bad_input():
    m = random_model("gpt2")
    r = truth_direction(m, layers=[1], heads=False, position=-2)
    assert r.layers == [1] and r.head_val is None and r.top_heads == [] and r.token != "."
    with pytest.raises(InputError, match="layer 5 out of range"):
        truth_direction(m, layers=[5])
    with pytest.raises(InputError, match="top_k"):
        truth_direction(m, layers=[1], top_k=0)
    with pytest.raises(InputError, match="position"):
        truth_direction(m, layers=[1], position=400)
    assert not m.has_hooks()


def test_cli(capsys):
    assert main(["truth", "--model", "random:llama", "--layers", "0,2", "--top-k", "2", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["layers"] == [0, 2] and len(j["top_heads"]) == 2 and len(j["probe_test"]) == 2
    assert main(["truth", "--model", "random:llama", "--layers", "3"]) == 2
    assert "layer 3 out of range" in capsys.readouterr().err


@pytest.mark.default_model
def test_default_model_reads_truth(smollm2):
    r = truth_direction(smollm2, layers=[12], heads=False)
    # a real model separates true from false city statements well above chance on held-out cities
    assert r.probe_test[0] > 0.7 and r.dom_test[0] > 0.6
