import json

import pytest
import torch

import lmscope
from conftest import ADDITIVE_HEADS, random_model
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import FAMILIES
from lmscope.lenses.dla import direct_logit_attribution, norm_affine
from transformers.models.cohere.modeling_cohere import CohereLayerNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm


@pytest.fixture(scope="module")
def gpt2_biased():
    """A GPT-2 with non-zero final-norm bias / gain and output-projection biases, so the remainder is exercised."""
    m = lmscope.load("random:gpt2")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ln = m.module(m.adapter.final_norm)
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=g) * 0.5)
        ln.weight.copy_(1 + torch.randn(ln.weight.shape, generator=g) * 0.3)
        for layer in range(m.n_layers):
            b = m.block_module(layer, m.adapter.o_proj).bias
            b.copy_(torch.randn(b.shape, generator=g) * 0.5)
    return m


def _sum_check(r):
    assert r.total == pytest.approx(r.logit, rel=1e-4, abs=1e-6)


def test_parts_sum_to_logit_llama():
    m = random_model("llama")
    r = direct_logit_attribution(m, "hello world", "o")
    _sum_check(r)
    assert r.remainder["total"] == 0.0
    # independent check of one part: the embedding through the RMSNorm weight, by hand
    run = m.run("hello world", read=["resid_pre.0", f"resid_post.{m.n_layers - 1}"])
    x = run.acts[f"resid_post.{m.n_layers - 1}"][0, -1].double()
    norm = m.module(m.adapter.final_norm)
    s = 1 / torch.sqrt(x.pow(2).mean() + norm.variance_epsilon)
    e = run.acts["resid_pre.0"][0, -1].double()
    want = float((e * s * norm.weight.detach().double()) @ m.module(m.adapter.lm_head).weight.detach().double()[m.token_id("o")])
    assert r.components[0].name == "embed" and r.components[0].contribution == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_sum_to_logit_in_every_family(family):
    """Every family's final norm is a (Layer|RMS)Norm with a gain, so DLA holds on all of them (Cohere's own
    mean-centring LayerNorm class included: the norm is probed, not recognised by its class)."""
    _sum_check(direct_logit_attribution(random_model(family), "hello world", "o"))


def test_norm_probe_tells_centred_from_rms():
    d = 8
    rms, ln = LlamaRMSNorm(d, eps=1e-6), torch.nn.LayerNorm(d)
    cohere = CohereLayerNorm(d, eps=1e-5)
    with torch.no_grad():
        for norm in (rms, ln, cohere):
            norm.weight.copy_(torch.linspace(0.5, 2.0, d))
        ln.bias.copy_(torch.linspace(-1, 1, d))
    for norm, centred in ((rms, False), (ln, True), (cohere, True)):
        gain, bias, got, _ = norm_affine(norm, d)
        assert got == centred, type(norm).__name__
        torch.testing.assert_close(gain, torch.linspace(0.5, 2.0, d, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert norm_affine(ln, d)[1].abs().max() > 0.5 and norm_affine(cohere, d)[1].abs().max() == 0


def test_parts_sum_to_logit_gpt2_with_biases(gpt2_biased):
    r = direct_logit_attribution(gpt2_biased, "hello world", "o", position=4)
    _sum_check(r)
    assert abs(r.remainder["norm_bias"]) > 1e-3 and r.remainder["softcap"] == 0.0
    assert r.position == 4 and r.tokens[4] == "o"
    assert r.logit == pytest.approx(float(gpt2_biased.run("hello world").logits[0, 4, gpt2_biased.token_id("o")]))


@pytest.mark.parametrize("family", ADDITIVE_HEADS)
def test_heads_sum_to_attention_minus_bias(family, gpt2_biased):
    m = gpt2_biased if family == "gpt2" else random_model(family)
    r = direct_logit_attribution(m, "hello world", "l")
    attn = {c.layer: c.contribution for c in r.components if c.kind == "attn"}
    assert len(r.heads) == m.n_layers and len(r.heads[0]) == m.n_heads
    for layer, row in enumerate(r.heads):
        assert sum(row) + r.head_bias[layer] == pytest.approx(attn[layer], rel=1e-5, abs=1e-6)
    if family == "gpt2":
        assert any(abs(b) > 1e-3 for b in r.head_bias)


def test_gemma_softcap_remainder_and_head_refusal():
    m = random_model("gemma2")
    r = direct_logit_attribution(m, "hello world", "o")
    _sum_check(r)
    assert r.heads is None and "gemma" in r.heads_note
    assert r.remainder["softcap"] != 0.0
    with pytest.raises(InputError, match="per-head"):
        direct_logit_attribution(m, "hello world", "o", heads=True)


def test_bad_input():
    m = random_model("llama")
    with pytest.raises(InputError, match="position"):
        direct_logit_attribution(m, "hi", "o", position=5)
    with pytest.raises(InputError, match="not one"):
        direct_logit_attribution(m, "hi", "oo")


def test_result_outputs(tmp_path):
    m = random_model("llama")
    r = direct_logit_attribution(m, "hello world", "o", top_k=3)
    j = json.loads(json.dumps(r.to_json()))
    assert j["sum_of_parts"] == pytest.approx(j["logit"], rel=1e-4)
    assert [c["name"] for c in j["components"]][:3] == ["embed", "attn.0", "mlp.0"]
    assert all(len(c["top_tokens"]) == 3 for c in j["components"])
    # a part's own top token is the argmax of its frozen-scale logits: the embedding of 'd' in a random model
    big = r.largest(1)[0]
    assert abs(big.contribution) == max(abs(c.contribution) for c in r.largest(1000))
    page = r.save(tmp_path / "dla.html").read_text()
    assert "Direct logit attribution" in page and "plotly" in page.lower()
    assert "largest" in r.summary()


@pytest.mark.default_model
def test_default_model_sums(smollm2):
    r = direct_logit_attribution(smollm2, "The capital of Japan is", " Tokyo")
    _sum_check(r)
    assert r.logit == pytest.approx(float(smollm2.run("The capital of Japan is").logits[0, -1,
                                                                                       smollm2.token_id(" Tokyo")]))
    attn = {c.layer: c.contribution for c in r.components if c.kind == "attn"}
    for layer, row in enumerate(r.heads):
        assert sum(row) + r.head_bias[layer] == pytest.approx(attn[layer], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("family", ["olmo2", "sparse_gpt"])
def test_heads_refused_where_their_writes_are_not_additive(family):
    # a norm (OLMo 2) or a top-k (the weight-sparse model) after the heads are summed, as on Gemma
    m = random_model(family)
    r = direct_logit_attribution(m, "hello world", "o")
    _sum_check(r)
    assert r.heads is None and "not additive" in r.heads_note
    with pytest.raises(InputError, match="per-head"):
        direct_logit_attribution(m, "hello world", "o", heads=True)
