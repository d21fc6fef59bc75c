"""The default model, SmolLM2-135M-Instruct, end to end (loads once per session; seconds once cached)."""
import json

import pytest
import torch

import lmscope
from lmscope.cli import main
from lmscope.core.models.loading import _smollm2_gguf

pytestmark = pytest.mark.default_model


def test_shape(smollm2):
    assert (smollm2.n_layers, smollm2.d_model, smollm2.n_heads, smollm2.d_head, smollm2.d_mlp,
            smollm2.vocab_size) == (30, 576, 9, 64, 1536, 49152)
    assert smollm2.adapter.family == "llama" and not smollm2.parallel


def test_lens_capital_of_japan(smollm2, capsys):
    assert main(["lens", "The capital of Japan is", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "smollm2"
    assert out["tokens"] == ["The", " capital", " of", " Japan", " is"]
    assert out["kind"] == "logit_lens" and len(out["top"]) == 30
    assert all(len(layer) == 5 for layer in out["top"])
    top1 = out["top"][-1][-1][0]["token"]
    ids, mask = smollm2.encode("The capital of Japan is")
    greedy = smollm2.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
    assert top1 == " Tokyo" == smollm2.tokenizer.decode(greedy[0, -1:])


def test_parity_reading_every_resid_post(smollm2):
    ids, mask = smollm2.encode(["The capital of Japan is", "Susan and Tom went to the library."])
    with torch.no_grad():
        plain = smollm2.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
    run = smollm2.run(["The capital of Japan is", "Susan and Tom went to the library."], read="resid_post.*")
    assert torch.equal(run.logits, plain)
    torch.testing.assert_close(smollm2.unembed(run.acts["resid_post.29"]), plain, rtol=1e-4, atol=1e-4)
    assert not smollm2.has_hooks()


def test_lens_target_rises_to_rank_1(smollm2):
    result = lmscope.logit_lens(smollm2, "The capital of Japan is", target=" Tokyo")
    assert result.target.rank[-1] == 1 and result.target.prob[-1] > 0.5
    assert result.target.rank[0] > 100  # the embedding-adjacent layers do not know yet


def test_gguf_spec_is_the_same_model(smollm2):
    same = lmscope.load(f"gguf:{_smollm2_gguf()}")
    ids, _ = smollm2.encode("hello")
    with torch.no_grad():
        assert torch.equal(same.hf(input_ids=ids).logits, smollm2.hf(input_ids=ids).logits)
