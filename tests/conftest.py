import functools

import pytest
import torch

import lmscope
from lmscope.core.models.adapters import ADAPTERS
from lmscope.core.models.random_models import FAMILIES, random_config


def _nonadditive(family: str) -> str:
    model_type = random_config(family).model_type
    return next(a.nonadditive_heads for a in ADAPTERS if model_type in a.model_types)


# the families whose heads' writes add up to attn_out (edges, per-head DLA and function vectors are defined)
ADDITIVE_HEADS = tuple(f for f in FAMILIES if not _nonadditive(f))


@functools.cache
def random_model(family: str) -> lmscope.Model:
    return lmscope.load(f"random:{family}")


@pytest.fixture(params=FAMILIES)
def model(request) -> lmscope.Model:
    m = random_model(request.param)
    yield m
    assert not m.has_hooks(), "a test left hooks on the model"


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def smollm2() -> lmscope.Model:
    return lmscope.load("smollm2")


def plain_logits(model, ids, **kwargs):
    with torch.no_grad():
        return model.hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs).logits
