"""Model.head_write_weights: each head's write into the residual stream (the family's residual scale included) plus
the output projection's bias add up to attn_out wherever heads are additive; refused where a norm or a top-k follows
the summed heads (Gemma, OLMo 2, the weight-sparse model), unless approximate=True."""
import pytest
import torch

from conftest import ADDITIVE_HEADS, random_model
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import FAMILIES


@pytest.mark.parametrize("family", ADDITIVE_HEADS)
def test_heads_and_bias_add_up_to_attn_out(family):
    m = random_model(family)
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    run = m.run(ids, read=["z.1", "attn_out.1"])
    w, b = m.head_write_weights(1)
    writes = torch.einsum("bshk,dhk->bsd", run.acts["z.1"], w)
    total = writes + (0 if b is None else b)
    torch.testing.assert_close(total, run.acts["attn_out.1"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ADDITIVE_HEADS])
def test_refused_where_heads_are_not_additive(family):
    m = random_model(family)
    assert {"gemma2", "gemma3", "olmo2", "sparse_gpt"} >= {family}
    with pytest.raises(InputError, match="edge scores need each head's write"):
        m.head_write_weights(0, "edge scores")
    w, _ = m.head_write_weights(0, approximate=True)
    assert w.shape == (m.d_model, m.n_heads, m.d_head)
