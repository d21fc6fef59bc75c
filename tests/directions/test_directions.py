"""Contrastive directions at every layer and position: difference of means, paired PCA, held-out probes."""
import pytest
import torch

from conftest import random_model
from lmscope.directions.contrast import Contrast, contrast, difference_of_means, prompt_hash, prompt_rows
from lmscope.core.errors import InputError, SiteError

POS = ["hello there", "ab", "the cat sat down", "a good day", "yes yes yes"]
NEG = ["xyz", "a much longer prompt here", "q r", "bad day", "no no"]


@pytest.fixture
def llama():
    m = random_model("llama")
    yield m
    assert not m.has_hooks()


def _rows_at(model, prompts, site, position):
    return torch.stack([model.run(p, read=[site]).acts[site][0, position].double() for p in prompts])


def test_every_layer_and_position_equals_one_site_difference_of_means(llama):
    c = contrast(llama, POS, NEG, last_k=2, batch_size=2, probe=False)      # padded, split batches
    assert c.layers == [0, 1, 2] and c.positions == [-2, -1] and c.dom.dtype == torch.float64
    for layer in c.layers:
        for q in c.positions:
            one = difference_of_means(llama, POS, NEG, f"resid_post.{layer}", position=q)
            torch.testing.assert_close(c.dom[c.positions.index(q), layer], one.vector.double(), rtol=0, atol=1e-5)
    d = c.direction(2, -1)
    assert d.site == "resid_post.2" and d.method == "dom" and d.prompt_sha256 == prompt_hash(POS, NEG)
    expected_norm = _rows_at(llama, POS + NEG, "resid_post.2", -1).norm(dim=-1).mean()
    assert d.resid_norm == pytest.approx(float(expected_norm), rel=1e-5)


def test_paired_pca_is_the_top_singular_vector_of_the_differences(llama):
    c = contrast(llama, POS, NEG, layers=[1], site_kind="resid_mid", probe=False)
    diffs = _rows_at(llama, POS, "resid_mid.1", -1) - _rows_at(llama, NEG, "resid_mid.1", -1)
    v = torch.linalg.svd(diffs).Vh[0]
    v = v if v @ c.dom[0, 0] > 0 else -v
    torch.testing.assert_close(c.pca[0, 0], v, rtol=0, atol=1e-4)
    pca = c.direction(1, -1, "pca")
    assert pca.norm == pytest.approx(float(c.dom[0, 0] @ v), rel=1e-4)   # the separation along the unit axis
    assert contrast(llama, POS, NEG[:4], layers=[1], probe=False).pca is None   # unpaired: no PCA


def test_held_out_split_is_seeded_and_accuracies_are_computed_on_it(llama):
    a = contrast(llama, POS * 2, NEG * 2, layers=[0, 2], seed=3)
    b = contrast(llama, POS * 2, NEG * 2, layers=[0, 2], seed=3)
    assert torch.equal(a.probe_accuracy, b.probe_accuracy) and torch.equal(a.dom_accuracy, b.dom_accuracy)
    assert (a.n_train, a.n_test) == (16, 4)
    acc = a.probe_accuracy
    assert ((acc * 4).round() == acc * 4).all() and (acc >= 0).all() and (acc <= 1).all()   # 4 test prompts
    # a set that differs in its last token is perfectly separable by a probe at the last layer
    sep = contrast(llama, [f"{w} !" for w in "abcdefgh"], [f"{w} ?" for w in "abcdefgh"], layers=[2])
    assert float(sep.probe_accuracy[0, 0]) == 1.0 and float(sep.dom_accuracy[0, 0]) == 1.0
    assert float(sep.probe_train_accuracy[0, 0]) == 1.0


def test_result_methods(llama, tmp_path):
    c = contrast(llama, POS, NEG, last_k=2)
    j = c.to_json()
    assert j["n_positive"] == 5 and len(j["probe_accuracy"]) == 2 and len(j["probe_accuracy"][0]) == 3
    assert "layer" in c.summary() and c.figure().data
    colours = {}                                                  # one colour per position in every panel
    for trace in c.figure().data:
        colours.setdefault(trace.name, set()).add(trace.line.color)
    assert len(colours) == 2 and all(len(v) == 1 for v in colours.values())
    page = c.save(tmp_path / "c.html")
    assert "plotly" in page.read_text()[:200000].lower()
    assert isinstance(c, Contrast) and c.direction(0, -2, "probe").method == "probe"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(positive=[], negative=NEG), InputError, "empty"),
    (dict(positive=POS, negative="one string"), InputError, "list of strings"),
    (dict(positive=["a"], negative=["b"]), InputError, "at least 2 prompts"),
    (dict(layers=[5]), InputError, "out of range"),
    (dict(site_kind="neurons"), InputError, "site_kind"),
    (dict(positions=[-1], last_k=2), InputError, "not both"),
    (dict(positions=[-40]), InputError, "out of range"),
    (dict(chat=True), InputError, "chat template"),
])
def test_bad_input_one_clear_error(llama, kwargs, error, message):
    options = dict(positive=POS, negative=NEG)
    options.update(kwargs)
    with pytest.raises(error, match=message) as info:
        contrast(llama, options.pop("positive"), options.pop("negative"), **options)
    assert "\n" not in str(info.value)


def test_unextracted_direction_and_legacy_site_errors(llama):
    c = contrast(llama, POS, NEG, layers=[1], probe=False)
    with pytest.raises(InputError, match="not extracted"):
        c.direction(2)
    with pytest.raises(InputError, match="probe=False"):
        c.direction(1, -1, "probe")
    with pytest.raises(SiteError):
        difference_of_means(llama, POS, NEG, "resid_post.7")


@pytest.mark.default_model
def test_chat_positions_are_the_template_tokens(smollm2):
    rows = prompt_rows(smollm2, ["Tell me a joke."], chat=True)
    tail = smollm2.to_str_tokens(rows[0][-6:])
    assert tail[0] == "<|im_end|>" and "".join(tail[-3:]) == "assistant\n"
    assert rows[0][0] != rows[0][1]                 # the template starts the row; no second BOS before it
    c = contrast(smollm2, ["I love it.", "What a joy."], ["I hate it.", "What a mess."], layers=[3, 20],
                 chat=True, last_k=6, probe=False)
    assert c.position_tokens[0] == "<|im_end|>" and c.dom.shape == (6, 2, smollm2.d_model)
    assert not smollm2.has_hooks()
