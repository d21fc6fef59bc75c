"""Issue 14 item 5: direct logit attribution works in bfloat16 and float16 (tolerances scale with the dtype, via
core.checks.tolerance); the parts still sum to the model's logit within that dtype's rounding."""
import pytest
import torch

import lmscope
from lmscope.core.checks import tolerance
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import FAMILIES
from lmscope.lenses.dla import direct_logit_attribution


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", FAMILIES)
def test_dla_in_half_precision(family, dtype):
    """Where DLA holds in float32 it holds in half precision; where it does not (a norm DLA cannot freeze), both
    refuse with one clear error: never a silently wrong sum."""
    model = lmscope.load(f"random:{family}", dtype=str(dtype).removeprefix("torch."))
    try:
        direct_logit_attribution(lmscope.load(f"random:{family}"), "hello world", "o")
    except InputError:
        with pytest.raises(InputError, match="does not"):
            direct_logit_attribution(model, "hello world", "o")
        return
    r = direct_logit_attribution(model, "hello world", "o")
    scale = abs(r.logit) + sum(abs(c.contribution) for c in r.components)
    assert abs(r.total - r.logit) <= tolerance(dtype, scale, 2 * model.n_layers + 4)
    full = direct_logit_attribution(lmscope.load(f"random:{family}", dtype="float32"), "hello world", "o")
    assert r.target_id == full.target_id and len(r.components) == len(full.components)


def test_tolerance_scales_with_dtype_size_and_terms():
    assert tolerance(torch.float32) == pytest.approx(4 * 2 ** -23)
    assert tolerance(torch.bfloat16, 10.0, 3) == pytest.approx(4 * 3 * 2 ** -7 * 10)
    assert tolerance(torch.float16, 2.0) == pytest.approx(4 * 2 ** -10 * 2)
    assert tolerance(torch.float16, 0.0) == 0.0
