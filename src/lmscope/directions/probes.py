"""Linear probes: is a concept linearly readable from a set of activations?

A logistic-regression probe is fitted in float64 with an L2 penalty by L-BFGS on standardised features (the
penalty then treats every coordinate alike; without standardising, a few outlier dimensions of the residual stream
would dominate it). The returned direction is mapped back to the raw activation space, so `x @ direction + bias`
gives the probe's logit for a raw activation x.

Used by the per-layer probe sweeps of contrastive directions, the truth direction and the per-head probes of ITI.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmscope.core.errors import InputError


@dataclass
class Probe:
    direction: torch.Tensor   # [d] float64, in the raw activation space
    bias: float
    train_accuracy: float
    test_accuracy: "float | None"   # None when no held-out set was given
    n_train: int
    n_test: int

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) @ self.direction + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x) > 0

    def to_json(self) -> dict:
        return {"bias": self.bias, "train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy,
                "n_train": self.n_train, "n_test": self.n_test, "direction_norm": float(self.direction.norm())}


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: "torch.Tensor | None" = None,
              y_test: "torch.Tensor | None" = None, *, l2: float = 1e-2, max_iter: int = 200) -> Probe:
    """Logistic regression of y (bool or 0/1, [n]) on x ([n, d]); accuracy on the held-out set when given."""
    x_train, y_train = _check(x_train, y_train, "training")
    if len(torch.unique(y_train)) < 2:
        raise InputError("probe training labels are all one class: a probe needs both classes")
    if (x_test is None) != (y_test is None):
        raise InputError("give both x_test and y_test, or neither")
    if x_test is not None:
        x_test, y_test = _check(x_test, y_test, "test")
        if x_test.shape[1] != x_train.shape[1]:
            raise InputError(f"test features have width {x_test.shape[1]}, training features {x_train.shape[1]}")
    if l2 < 0:
        raise InputError(f"l2 must be >= 0, got {l2}")

    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False).clamp_min(1e-8)
    z = (x_train - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y_train) + l2 * (w @ w) / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    direction = w / std
    bias = float(b - (mean / std) @ w)
    probe = Probe(direction, bias, 0.0, None, len(y_train), 0 if x_test is None else len(y_test))
    probe.train_accuracy = _accuracy(probe, x_train, y_train)
    if x_test is not None:
        probe.test_accuracy = _accuracy(probe, x_test, y_test)
    return probe


def _accuracy(probe: Probe, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe.predict(x) == (y > 0.5)).to(torch.float64).mean())


def _check(x, y, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise InputError(f"{what} features must be a 2-d tensor [n, d], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"{what} labels must be 1-d with one label per row ({len(x)}), got shape {tuple(y.shape)}")
    if len(x) == 0:
        raise InputError(f"{what} set is empty")
    if not torch.isfinite(x).all():
        raise InputError(f"{what} features contain NaN or infinity")
    return x.to(torch.float64), y.to(torch.float64)
