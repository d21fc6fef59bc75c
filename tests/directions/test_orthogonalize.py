"""Weight orthogonalisation equals hook-based directional ablation; the copy saves and reloads."""
import pytest
import torch

import lmscope
from conftest import random_model
from lmscope.core.errors import InputError
from lmscope.directions.orthogonalize import orthogonalize, save_orthogonalized, writers
from lmscope.directions.steering import ablation_edits

from lmscope.core.models.random_models import FAMILIES as ALL_FAMILIES
from lmscope.directions.orthogonalize import REFUSED_FAMILIES

REFUSED = {"gemma2", "gemma3", "olmo2", "sparse_gpt", "mixtral"}
FAMILIES = [f for f in ALL_FAMILIES if f not in REFUSED]


@pytest.fixture(scope="module")
def gpt2_biased():
    """GPT-2 (tied embeddings, position embedding) with non-zero output biases, so biases are exercised."""
    m = lmscope.load("random:gpt2")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, module, kind in writers(m):
            if kind != "embedding":
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)
    return m


def _case(model):
    g = torch.Generator().manual_seed(0)
    return torch.randn(model.d_model, generator=g), torch.randint(0, 256, (2, 9), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_orthogonalized_weights_equal_hook_ablation(family, gpt2_biased):
    m = gpt2_biased if family == "gpt2" else random_model(family)
    d, ids = _case(m)
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    hooked = m.run(ids, edits=ablation_edits(m, d)).logits
    clone = orthogonalize(m, d)
    baked = clone.run(ids).logits
    effect = (baked - m.run(ids).logits).abs().max()
    assert effect > 1e-3                                               # the ablation does change the output
    assert (baked - hooked).abs().max() < min(1e-4, effect / 100)
    after = m.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)       # the original is untouched
    head, embed = clone.module(clone.adapter.lm_head).weight, clone.module(clone.adapter.embed).weight
    assert torch.equal(head, m.module(m.adapter.lm_head).weight)       # unembedding unchanged (untied copy)
    u = d / d.norm()
    assert (embed.double() @ u.double()).abs().max() < 1e-5
    assert not m.has_hooks() and not clone.has_hooks()


def test_tied_embeddings_are_untied_in_the_copy(gpt2_biased):
    m = gpt2_biased
    assert m.hf.lm_head.weight is m.hf.transformer.wte.weight
    clone = orthogonalize(m, _case(m)[0])
    assert clone.hf.lm_head.weight is not clone.hf.transformer.wte.weight
    assert clone.hf.config.tie_word_embeddings is False and m.hf.config.tie_word_embeddings is True


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_saved_copy_reloads_with_the_same_logits(family, gpt2_biased, tmp_path):
    m = gpt2_biased if family == "gpt2" else random_model(family)
    d, ids = _case(m)
    folder = save_orthogonalized(m, d, tmp_path / "orth")
    reloaded = lmscope.load(f"hf:{folder}")
    assert torch.equal(reloaded.run(ids).logits, orthogonalize(m, d).run(ids).logits)
    assert (folder / "lmscope_orthogonalization.json").is_file()
    with pytest.raises(InputError, match="is not empty"):
        save_orthogonalized(m, d, folder)


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_families_whose_writes_are_not_linear_are_refused(family):
    m = random_model(family)
    assert m.adapter.family in REFUSED_FAMILIES
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    with pytest.raises(InputError, match="cannot orthogonalise"):
        orthogonalize(m, _case(m)[0])
    assert all(torch.equal(before[k], v) for k, v in m.hf.state_dict().items())


def test_bad_direction():
    m = random_model("llama")
    with pytest.raises(InputError, match="needs \\[64\\]"):
        orthogonalize(m, torch.ones(10))
    with pytest.raises(InputError, match="zero direction"):
        orthogonalize(m, torch.zeros(64))
