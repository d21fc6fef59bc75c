import pytest
import torch

from lmscope.core.errors import InputError
from lmscope.directions.probes import fit_probe


def _data(n, d, seed, shift=6.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 10, d)   # very unequal scales
    x[:, 3] += shift * (2 * y - 1)                                       # the concept lives on one small axis
    return x, y


def test_probe_finds_a_planted_axis_and_generalises():
    x, y = _data(400, 16, 0)
    xt, yt = _data(400, 16, 1)
    probe = fit_probe(x, y, xt, yt)
    assert probe.test_accuracy > 0.97   # Bayes accuracy: Phi(6 / 2.08) = 0.998
    assert probe.direction.abs().argmax() == 3
    # the returned direction and bias act on raw activations
    assert torch.equal(probe.predict(xt), probe.logits(xt) > 0)


def test_probe_is_at_chance_without_signal():
    x, y = _data(400, 16, 0, shift=0.0)
    xt, yt = _data(400, 16, 1, shift=0.0)
    assert abs(fit_probe(x, y, xt, yt).test_accuracy - 0.5) < 0.1


def test_probe_bad_input():
    x, y = _data(20, 4, 0)
    with pytest.raises(InputError, match="one class"):
        fit_probe(x, torch.zeros(20))
    with pytest.raises(InputError, match="one label per row"):
        fit_probe(x, y[:5])
    with pytest.raises(InputError, match="width"):
        fit_probe(x, y, x[:, :3], y)
    with pytest.raises(InputError, match="both"):
        fit_probe(x, y, x)
