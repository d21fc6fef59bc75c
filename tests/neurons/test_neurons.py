"""Part 1: one neuron. Records match a direct computation; interventions do what they claim."""
import json
import math

import pytest
import torch

import lmscope
from lmscope import InputError, SiteError
from lmscope.cli import main
from lmscope.neurons import (find_knowledge_neurons, integrated_gradients, neuron_dose_response, neuron_edit,
                             neuron_effects, record_neurons)
from conftest import random_model

TEXTS = ["The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
         "Neurons in language models respond to many different things; some respond to just one.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # five",
         "In 1905 Einstein published four papers that changed physics: light quanta, motion, relativity."]


@pytest.fixture
def llama():
    m = random_model("llama")
    yield m
    assert not m.has_hooks()


def direct_acts(model, layer, n_tokens, window=128):
    from lmscope.data.corpora import iter_token_windows
    rows = []
    for w in iter_token_windows(model.tokenizer, TEXTS, n_tokens=n_tokens, window=window):
        rows.append(model.run(torch.tensor([w.input_ids]), read=[f"neurons.{layer}"]).acts[f"neurons.{layer}"][0])
    return torch.cat(rows)


def test_records_match_a_direct_computation(llama):
    # batch_size=1: the same matmul shapes as the direct runs, so values agree bit for bit
    rec = record_neurons(llama, [1], TEXTS, n_tokens=300, window=32, batch_size=1, k=5, progress=False)
    acts = direct_acts(llama, 1, 300, window=32)
    assert rec.n_tokens == acts.shape[0] == 300
    layer = rec.layers[1]
    torch.testing.assert_close(layer.mean, acts.double().mean(0))
    torch.testing.assert_close(layer.std, acts.double().std(0, unbiased=False))
    assert torch.equal(layer.max, acts.max(0).values) and torch.equal(layer.min, acts.min(0).values)
    assert torch.equal(layer.active, (acts > 0).sum(0))
    assert torch.equal(layer.hist.sum(1), torch.full((llama.d_mlp,), 300))
    assert torch.equal(layer.top_values, acts.topk(5, dim=0).values)
    stats = rec.stats(1, 7)
    assert rec.stats(-2, 7) == stats  # negative layers count from the model's last layer
    assert stats["frac_active"] == int((acts[:, 7] > 0).sum()) / 300
    # a top context is the window around the token it fired on
    top = rec.top_contexts(1, 7)[0]
    assert top.value == float(acts[:, 7].max())
    assert top.token in TEXTS[int(top.doc_id)] and top.text in TEXTS[int(top.doc_id)]


def test_records_are_deterministic_and_independent_of_batching(llama):
    a = record_neurons(llama, [0, 2], TEXTS, n_tokens=250, window=32, batch_size=2, k=4, progress=False)
    b = record_neurons(llama, [0, 2], TEXTS, n_tokens=250, window=32, batch_size=2, k=4, progress=False)
    c = record_neurons(llama, [0, 2], TEXTS, n_tokens=250, window=32, batch_size=5, k=4, progress=False)
    for layer in (0, 2):
        assert torch.equal(a.layers[layer].top_tokens, b.layers[layer].top_tokens)
        assert torch.equal(a.layers[layer].samples, b.layers[layer].samples)
        torch.testing.assert_close(a.layers[layer].top_values, c.layers[layer].top_values)  # padding changes rounding
        torch.testing.assert_close(a.layers[layer].mean, c.layers[layer].mean)
    assert [x.text for x in a.top_contexts(2, 3)] == [x.text for x in c.top_contexts(2, 3)]


def test_record_memory_does_not_grow_with_tokens(llama):
    small = record_neurons(llama, [1], TEXTS * 20, n_tokens=200, window=16, k=3, progress=False)
    large = record_neurons(llama, [1], TEXTS * 20, n_tokens=4000, window=16, k=3, progress=False)
    assert large.n_tokens == 20 * small.n_tokens
    assert large.layers[1].state_bytes() == small.layers[1].state_bytes()
    assert len(large.windows.entries) <= 3 * llama.d_mlp  # only windows that top contexts point to


def test_zero_ablation_and_scale_by_one(llama, ids):
    sites = [s for s in llama.sites() if s.kind != "pattern"]
    clean = llama.run(ids, read=sites)
    zeroed = llama.run(ids, read=sites, edits=[neuron_edit(llama, 1, 9, "zero")])
    assert torch.all(zeroed.acts["neurons.1"][..., 9] == 0)
    others = [i for i in range(llama.d_mlp) if i != 9]
    assert torch.equal(zeroed.acts["neurons.1"][..., others], clean.acts["neurons.1"][..., others])
    for s in sites:
        if s.order_key(llama.n_layers) < llama.site("neurons.1").order_key(llama.n_layers):
            assert torch.equal(zeroed.acts[str(s)], clean.acts[str(s)])
    assert torch.equal(llama.run(ids, edits=[neuron_edit(llama, 1, [2, 9], "scale", factor=1.0)]).logits,
                       clean.logits)


def test_mean_and_resample_ablation_use_what_they_claim(llama, ids):
    rec = record_neurons(llama, [1], TEXTS, n_tokens=200, window=32, progress=False)
    mean = rec.mean(1)
    torch.testing.assert_close(mean, direct_acts(llama, 1, 200, window=32).double().mean(0))
    out = llama.run(ids, read=["neurons.1"], edits=[neuron_edit(llama, 1, [4], "mean", mean=mean)])
    assert torch.all(out.acts["neurons.1"][..., 4] == mean[4].float())
    samples = rec.samples(1)
    out = llama.run(ids, read=["neurons.1"], edits=[neuron_edit(llama, 1, [4, 5], "resample", samples=samples,
                                                                batch=2, seed=3)])
    for row in range(2):
        values = out.acts["neurons.1"][row, :, [4, 5]]
        assert torch.all(values == values[0])  # one sampled token's activation, at every position
        assert any(torch.equal(values[0], s[[4, 5]]) for s in samples)


def test_effect_report(llama):
    prompts = ["hello world", "a cat sat", "the end of it"]
    none = neuron_effects(llama, 1, 3, prompts, "scale", factor=1.0)
    assert none.mean_kl == 0 and none.argmax_flip_fraction == 0
    big = neuron_effects(llama, 1, list(range(llama.d_mlp)), prompts, "scale", factor=-50.0, tokens=["a"],
                         generate=3)
    assert big.mean_kl > 0 and all(k >= 0 for k in big.kl)
    assert big.top_up[0].delta_prob >= big.top_up[-1].delta_prob > 0 > big.top_down[0].delta_prob
    clean = torch.softmax(llama.run(["hello world"]).logits[0, -1], -1)
    assert math.isclose(big.chosen["a"]["before"][0], float(clean[llama.token_id("a")]), rel_tol=1e-5)
    assert len(big.generations) == 3 and big.generations[0]["prompt"] == "hello world"


def test_dose_response_endpoints(llama):
    prompts = ["hello world", "a cat sat"]
    dose = neuron_dose_response(llama, 1, [1, 2, 3], prompts, ["a", "e"], factors=[0.0, 1.0])
    clean = torch.softmax(torch.stack([llama.run([p]).logits[0, -1] for p in prompts]), -1)
    assert math.isclose(dose.probs["a"][1], float(clean[:, llama.token_id("a")].mean()), rel_tol=1e-5)
    zero = neuron_effects(llama, 1, [1, 2, 3], prompts, "zero", tokens=["e"])
    assert math.isclose(dose.probs["e"][0], sum(zero.chosen["e"]["after"]) / 2, rel_tol=1e-5)
    assert dose.kl[1] == 0


def test_integrated_gradients_are_complete(llama):
    prompt, target, layer = "hello wor", "l", 1
    attr = integrated_gradients(llama, prompt, target, layers=[layer], steps=64)[0]
    ids, _ = llama.encode(prompt)
    last, tid = ids.shape[1] - 1, llama.token_id(target)
    p = torch.softmax(llama.run(ids).logits[0, last], -1)[tid]
    p0 = torch.softmax(llama.run(ids, edits=[lmscope.zero(f"neurons.{layer}", positions=[last])]).logits[0, last],
                       -1)[tid]
    assert math.isclose(float(attr.sum()), float(p - p0), rel_tol=0.02, abs_tol=1e-6)


def test_knowledge_neurons_refine_by_votes(llama):
    kn = find_knowledge_neurons(llama, ["hello wor", "say hello wor"], ["l", "l"], layers=[1, 2], steps=4,
                                threshold=0.2, share=1.0)
    attrs = torch.stack([integrated_gradients(llama, p, "l", layers=[1, 2], steps=4)
                         for p in ["hello wor", "say hello wor"]])
    coarse = attrs > 0.2 * attrs.flatten(1).max(1).values[:, None, None]
    expected = {(([1, 2])[l], n) for l, n in torch.nonzero(coarse.all(0)).tolist()}
    assert set(map(tuple, kn.neurons)) == expected and expected
    assert kn.ranking[0] in [tuple(x) for x in torch.nonzero(attrs.mean(0) == attrs.mean(0).max()).tolist()] or \
        kn.ranking[0] == ([1, 2][int(attrs.mean(0).flatten().argmax()) // llama.d_mlp],
                          int(attrs.mean(0).flatten().argmax()) % llama.d_mlp)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: neuron_edit(m, 1, [m.d_mlp], "zero"), lmscope.EditError, "neuron 96 out of range"),
    (lambda m: neuron_edit(m, 5, [1], "zero"), SiteError, "layer 5 out of range"),
    (lambda m: neuron_edit(m, 1, [1], "scale", factor=float("nan")), InputError, "finite number"),
    (lambda m: neuron_effects(m, 1, [1], ["hi"], "scale", factor=float("inf")), InputError, "finite number"),
    (lambda m: neuron_effects(m, 1, [m.d_mlp], ["hi"], "zero"), lmscope.EditError, "out of range"),
    (lambda m: neuron_effects(m, 1, [1], [], "zero"), InputError, "empty prompt set"),
    (lambda m: neuron_edit(m, 1, [1], "mean"), InputError, "needs the layer's mean"),
    (lambda m: neuron_dose_response(m, 1, [1], ["hi"], ["a"], factors=[1, float("nan")]), InputError, "finite"),
    (lambda m: record_neurons(m, [1], [], n_tokens=10, progress=False), InputError, "empty text set"),
    (lambda m: record_neurons(m, [3], TEXTS, n_tokens=10, progress=False), InputError, "layer 3 out of range"),
    (lambda m: record_neurons(m, [1], TEXTS, n_tokens=0, progress=False), InputError,
     "n_tokens must be an integer >= 1"),
    (lambda m: record_neurons(m, [1], "nocorpus", n_tokens=10, progress=False), InputError, "unknown corpus"),
])
def test_bad_input(llama, call, error, message):
    with pytest.raises(error, match=message):
        call(llama)
    assert not llama.has_hooks()


def test_neuron_cli_json_and_html(capsys, tmp_path):
    page = tmp_path / "n.html"
    argv = ["neuron", "1", "7", "--model", "random:llama", "--corpus", "wiki", "--tokens", "600", "--json",
            "--html", str(page)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layer"] == 1 and out["index"] == 7 and out["n_tokens"] == 600
    assert set(out["stats"]) >= {"mean", "std", "frac_active", "max"}
    values = [c["value"] for c in out["top_contexts"]]
    assert values == sorted(values, reverse=True) and len(values) == 20
    assert all(c["token"] and c["context_ids"] for c in out["top_contexts"])
    assert set(out["ablation"]) >= {"mean_kl", "argmax_flip_fraction", "top_up", "top_down"}
    assert "<mark><b>" in page.read_text()
    assert main(argv + ["--overwrite"]) == 0  # the same result on a rerun
    assert json.loads(capsys.readouterr().out)["top_contexts"] == out["top_contexts"]


def test_neuron_cli_bad_index(capsys):
    assert main(["neuron", "1", "96", "--model", "random:llama", "--tokens", "100"]) == 2
    assert capsys.readouterr().err.strip() == "lmscope: error: neuron 96 out of range: layer 1 has 96 neurons (0..95)"


def test_results_round_trip(llama, tmp_path):
    from lmscope.results import Result
    prompts = ["hello world", "a cat sat"]
    results = [neuron_effects(llama, 1, [1, 2], prompts, "zero", tokens=["a"]),
               neuron_dose_response(llama, 1, [1], prompts, ["a"], factors=[0.0, 1.0]),
               find_knowledge_neurons(llama, ["hello wor"], ["l"], layers=[1], steps=2)]
    for i, r in enumerate(results):
        assert Result.load(r.save(tmp_path / f"r{i}.json")).to_json() == r.to_json()
    assert results[0].to_json()["kl_direction"] == "KL(reference || edited)"
