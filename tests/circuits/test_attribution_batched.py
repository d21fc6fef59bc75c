"""EAP-IG with its interpolation steps batched into one pass gives the scores of one pass per step."""
import pytest
import torch

from conftest import random_model
from lmscope.circuits.attribution import attribute
from lmscope.circuits.tasks import TaskSet


def _task(n=5, length=6):
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (n, length), generator=g).tolist()
    corrupt = [row[:1] + [(row[1] + 5) % 256] + row[2:] for row in clean]
    return TaskSet(name="toy", clean=clean, corrupt=corrupt, answer=[30 + i for i in range(n)],
                   wrong=[40 + i for i in range(n)], metric_name="logit_diff", n_filtered=0, filtered={},
                   templates=[0] * n)


def _close(a, b):
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_batched_steps_equal_one_pass_per_step(family):
    m = random_model(family)
    # 5 steps over batches of 3 and 2 prompts, 6 rows a pass: passes of 2 steps, 2 steps and 1 step
    kw = dict(method="eap-ig", steps=5, edges=True, batch_size=3)
    old, new = attribute(m, _task(), step_rows=0, **kw), attribute(m, _task(), step_rows=6, **kw)
    _close(new.heads, old.heads)
    _close(new.mlps, old.mlps)
    _close([new.embed], [old.embed])
    _close([[v or 0.0 for v in row] for row in new.edges], [[v or 0.0 for v in row] for row in old.edges])
    assert max(abs(v) for row in old.heads for v in row) > 1e-3          # scores that are not all zero
    # the batched path's clean run is the alpha = 1 copy of its last pass (a larger batch: float rounding)
    assert new.clean_metric == pytest.approx(old.clean_metric, rel=1e-5, abs=1e-6)
    assert new.corrupt_metric == old.corrupt_metric


def test_eap_is_untouched_by_step_batching():
    m = random_model("llama")
    assert attribute(m, _task(), "eap").to_json()["heads"] == attribute(m, _task(), "eap", step_rows=0).to_json()["heads"]
