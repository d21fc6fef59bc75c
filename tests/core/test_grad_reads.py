"""A site read with grad=True is the tensor the model goes on with, so its gradient is defined and right, also
where the site is computed from a module's output (a residual scale: Granite's attn_out / mlp_out; a view of a
fused q/k/v projection) and would otherwise not be on the graph."""
import pytest
import torch

import lmscope
from conftest import random_model
from lmscope.core.models.random_models import FAMILIES

SITES = ("embed", "q.1", "k.0", "v.1", "z.1", "attn_out.0", "mlp_out.1", "resid_mid.0", "resid_post.2")


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_of_a_read_equals_the_gradient_at_a_leaf(family):
    m = random_model(family)
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    # a parallel block's resid_mid is no tensor of the model (it has no gradient and cannot be edited)
    sites = [s for s in SITES if s in {str(x) for x in m.sites()} and not (m.parallel and s.startswith("resid_mid"))]
    assert {"mlp_out.1", "z.1", "embed"} <= set(sites)
    plain = m.hf(input_ids=ids).logits
    run = m.run(ids, read=sites, grad=True)
    assert torch.equal(run.logits, plain)               # handing the reads back changes nothing
    target = run.logits[0, -1, 7] - run.logits[0, -1, 9]
    grads = torch.autograd.grad(target, [run.acts[s] for s in sites])
    for site, g in zip(sites, grads):
        leaf = run.acts[site].detach().clone().requires_grad_()
        edited = m.run(ids, edits=[lmscope.replace(site, leaf)], grad=True).logits
        (want,) = torch.autograd.grad(edited[0, -1, 7] - edited[0, -1, 9], leaf)
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6, msg=f"{family} {site}")
        assert float(want.abs().max()) > 0, site
