"""SAE plumbing on the default model (SmolLM2-135M): what the SAE reads is text, not the attention sink."""
import pytest
import torch

from lmscope.sae import ModelSource
from lmscope.sae.data import prefix_token


@pytest.mark.default_model
def test_model_source_reads_text_positions_only(smollm2):
    assert prefix_token(smollm2.tokenizer) == smollm2.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    src = ModelSource(smollm2, "resid_post.12", "wiki", windows_per_pass=2, seq_len=32)
    rows = next(src.rows(n_tokens=64))
    assert rows.shape == (64, 576)
    norms = rows.norm(dim=1)
    # the prefix position carries a norm in the tens of thousands; text positions stay near the median (~150)
    ids = torch.tensor([[prefix_token(smollm2.tokenizer)] + [28] * 8])
    sink = smollm2.run(ids, read=["resid_post.12"], stop_early=True)["resid_post.12"][0, 0].norm()
    assert sink > 50 * norms.median()
    assert float(norms.median()) < 1000
