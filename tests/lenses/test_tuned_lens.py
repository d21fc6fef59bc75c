import json

import pytest
import torch
from conftest import random_model

from lmscope.core.errors import InputError
from lmscope.lenses.tuned_lens import TunedLens, _held_out, evaluate_tuned_lens, train_tuned_lens


@pytest.fixture(scope="module")
def trained():
    m = random_model("llama")
    return m, train_tuned_lens(m, n_tokens=800, steps=120, positions_per_step=32, lr=1e-2, seed=0)


def test_identity_at_init_is_the_logit_lens_exactly():
    m = random_model("llama")
    lens = TunedLens.identity(m)
    h = m.run("Hello world", read="resid_post.*").acts
    for layer in range(m.n_layers):
        x = h[f"resid_post.{layer}"]
        assert torch.equal(lens.logits(m, layer, x), m.unembed(x))
    ev = evaluate_tuned_lens(m, lens, n_tokens=200)
    assert ev.kl_tuned == ev.kl_logit and ev.ppl_tuned == ev.ppl_logit
    assert ev.kl_logit[0] > 0 and ev.kl_logit[-1] == 0 and ev.n_tokens == 200


def test_training_lowers_held_out_kl_at_every_layer_but_the_last(trained):
    m, lens = trained
    assert lens.meta["loss_last"] < lens.meta["loss_first"]
    assert lens.meta["steps"] == 120 and lens.meta["train_tokens"] == 800
    assert torch.count_nonzero(lens.weight[-1]) == 0 and torch.count_nonzero(lens.bias[-1]) == 0
    assert torch.count_nonzero(lens.weight[0]) > 0
    ev = evaluate_tuned_lens(m, lens, n_tokens=400)
    assert ev.tuned_worse == []
    for layer in range(m.n_layers - 1):
        assert ev.kl_tuned[layer] < 0.97 * ev.kl_logit[layer]
    assert ev.kl_tuned[-1] == ev.kl_logit[-1] == 0
    assert "every layer but the last" in ev.summary()
    assert json.loads(json.dumps(ev.to_json()))["tuned_worse"] == []


def test_held_out_split_is_disjoint_by_document():
    m = random_model("llama")
    from lmscope.lenses.tuned_lens import _batches
    seen = []
    for held in (False, True):
        ids = [tuple(r) for b in _batches(m, "wiki", 2000, 64, 4, 0, held) for r in b]
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert _held_out("x") in (True, False)


def test_save_load_round_trip(trained, tmp_path):
    m, lens = trained
    path = lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(path, m)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.meta == lens.meta
    assert back.meta["model"] == "random:llama" and back.meta["d_model"] == m.d_model
    assert {"tokens", "seed", "n_layers"} <= set(back.meta)
    h = torch.randn(3, m.d_model)
    assert torch.equal(back.logits(m, 0, h), lens.logits(m, 0, h))
    assert not (tmp_path / "lens.safetensors").read_bytes().startswith(b"\x80")  # not a pickle


def test_mismatched_model_or_file_is_one_clear_error(trained, tmp_path):
    m, lens = trained
    path = lens.save(tmp_path / "lens.safetensors")
    with pytest.raises(InputError, match=r"belongs to another model \(random:llama.*not random:gpt2"):
        TunedLens.load(path, random_model("gpt2"))
    old = TunedLens(lens.weight, lens.bias, {k: v for k, v in lens.meta.items() if k != "identity"})
    with pytest.raises(InputError, match="trained for 'random:llama'.*not for 'random:gpt2'"):
        old.check(random_model("gpt2"))       # a file without the identity: checked by name and shapes
    bad = TunedLens(lens.weight, lens.bias, {**lens.meta, "d_model": 32})
    with pytest.raises(InputError, match="d_model 32"):
        bad.check(m)
    with pytest.raises(InputError, match="d_model"):
        TunedLens.load(bad.save(tmp_path / "bad.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(InputError, match="not a safetensors file"):
        TunedLens.load(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="no tuned lens file"):
        TunedLens.load(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="positive integer"):
        train_tuned_lens(m, n_tokens=0)
    with pytest.raises(InputError, match="validation_tokens"):
        train_tuned_lens(m, n_tokens=100, validation_tokens=0)


def test_scale_selection_scores_the_validation_tokens_asked_for(trained):
    m, lens = trained
    assert lens.meta["validation_tokens"] == 256                 # the default, scored in full
    small = train_tuned_lens(m, n_tokens=200, steps=5, validation_tokens=40, seed=0)
    assert small.meta["validation_tokens"] == 40 and len(small.meta["layer_scales"]) == m.n_layers - 1


def test_figure_and_html(trained, tmp_path):
    m, lens = trained
    ev = evaluate_tuned_lens(m, lens, n_tokens=100)
    fig = ev.figure()
    assert [t.name for t in fig.data] == ["logit lens", "tuned lens", "logit lens", "tuned lens"]
    assert list(fig.data[1].y) == ev.kl_tuned[:-1]         # the KL panel stops before the last layer: 0 there
    assert ev.kl_tuned[-1] == pytest.approx(0.0, abs=1e-9) and list(fig.data[3].y) == ev.ppl_tuned
    page = ev.save(tmp_path / "ev.html").read_text()
    assert "Tuned lens" in page


def test_cli_train_and_eval(tmp_path, capsys):
    from lmscope.cli import main
    out = tmp_path / "l.safetensors"
    assert main(["tuned-lens", "train", "--model", "random:llama", "--tokens", "300", "--steps", "7",
                 "--out", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["steps"] == 7 and meta["train_tokens"] == 300 and out.is_file()
    assert main(["tuned-lens", "eval", str(out), "--model", "random:llama", "--tokens", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 50
    assert main(["tuned-lens", "eval", str(out), "--model", "random:gpt2"]) == 2
    assert "belongs to another model (random:llama" in capsys.readouterr().err
