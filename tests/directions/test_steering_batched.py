"""generate_steered runs prompts of different lengths in one left-padded batch: the same tokens as each prompt
generated alone with its own 'prompt' / 'generated' positions."""
import torch

from conftest import random_model
from lmscope.directions.steering import generate_steered, steering_edits
from lmscope.directions.vector_files import Direction


def test_generate_steered_batched_equals_each_prompt_alone():
    m = random_model("qwen2")
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    d = Direction(v, "resid_post.1", -1, 1, 1, float(v.norm()), "dom", m.spec, None, 3.0)
    rows = [m.tokenizer(p)["input_ids"] for p in ["hello there", "ab", "the cat sat on"]]
    for positions in ("prompt", "generated"):
        make = lambda n: steering_edits(m, d, coef=30.0, positions=positions, prompt_length=n)  # noqa: E731
        batched = generate_steered(m, rows, make, max_new_tokens=6)
        alone = [m.generate_rows([r], make(len(r)), max_new_tokens=6)[0] for r in rows]
        assert batched == alone
        assert batched != [m.generate_rows([r], max_new_tokens=6)[0] for r in rows]   # the steering acts
    assert not m.has_hooks()
