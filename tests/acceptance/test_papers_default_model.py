"""The papers on the default model, SmolLM2-135M-Instruct: the rank-1 identity of in-context learning at all 30
layers in float64, and the concept-injection prompt, injection point and controls in its chat template."""
import json

import pytest
import torch

import lmscope
from lmscope.papers.icl_update import icl_update
from lmscope.papers.introspection import introspect

pytestmark = pytest.mark.default_model
PROMPT = "hot -> cold\nbig -> small\nfast ->"


@pytest.fixture(scope="module")
def smollm2_float64():
    return lmscope.load("smollm2", dtype=torch.float64)


def test_icl_update_identity_and_rank(smollm2_float64, tmp_path):
    result = icl_update(smollm2_float64, PROMPT)
    assert len(result.layers) == 30
    assert result.max_abs_error_mlp < 1e-10 and result.max_abs_error_block < 1e-10
    assert result.rank == 1 and result.dtype == "float64"
    assert all(v > 0 for v in result.increment_norms) and len(result.trajectories) == 2
    saved = json.loads(result.save(tmp_path / "r.json").read_text())
    assert saved["rank"] == 1 and saved["increment_norms"] == result.increment_norms
    assert "Plotly" in result.save(tmp_path / "r.html").read_text()


def test_injection_steers_and_controls_match(smollm2):
    # the former scale and bare-text concept vectors: 0.5 x the residual norm steers into the word at layer 8
    result = introspect(smollm2, concepts=["ocean", "dog"], layers=[8], strengths=[0.5], scale="residual",
                        concept_prompt="plain", max_new_tokens=10)
    prompt = result.example_prompt
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    ids = smollm2.encode(prompt)[0][0]
    start = result.injection_start
    # the paper's wording; the injection starts at the blank line before "Trial 1"
    assert smollm2.tokenizer.decode(ids[start:start + 7]).startswith("\n\nTrial 1:")
    assert smollm2.tokenizer.decode(ids[:start]).endswith("Ok, let's get started.")
    # steering works at this layer and strength: the injected concept shows up in the answer
    assert result.trials[0].mention_at is not None
    assert result.controls[0].answer == smollm2.generate(prompt, max_new_tokens=10).text
