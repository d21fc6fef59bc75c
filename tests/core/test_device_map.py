"""A model dispatched by accelerate with CPU and disk offload (forced by max_memory): reading, editing, resuming
and batched generation give the numbers of the same model loaded plainly."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import lmscope
from lmscope.core.models.model import Model
from lmscope.core.models.random_models import random_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    hf, tok = random_model("llama")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    plain = lmscope.load(f"hf:{folder}")
    # the embedding and block 0 fit in "CPU memory": the rest is offloaded to disk and loaded at each forward
    dispatched = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="auto",
                                                      max_memory={"cpu": "400KB"},
                                                      offload_folder=str(folder / "offload")).eval()
    return plain, Model(dispatched, plain.tokenizer, f"hf:{folder} (offloaded)")


def test_the_model_really_is_offloaded(pair):
    _, off = pair
    assert {"cpu", "disk"} <= set(off.hf.hf_device_map.values())
    assert any(p.device.type == "meta" for p in off.hf.parameters())     # weights not resident


def test_reading_and_editing_match_the_plain_model(pair):
    plain, off = pair
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    v = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(1))
    edits = [lmscope.zero("mlp_out.1", positions=[2, 3]), lmscope.add("resid_pre.2", v),
             lmscope.scale("z.0", 0.0, heads=[1])]
    for kw in ({}, {"edits": edits}):
        a = plain.run(ids, read=["resid_post.*", "neurons.1", "z.2"], **kw)
        b = off.run(ids, read=["resid_post.*", "neurons.1", "z.2"], **kw)
        assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(a.acts[s], b.acts[s]) for s in a.acts)
    assert not torch.equal(plain.run(ids).logits, plain.run(ids, edits=edits).logits)   # the edits act
    assert not off.has_hooks() or all(hasattr(m, "_hf_hook") for m in off.hf.modules() if m._forward_pre_hooks)


def test_resume_and_batched_generation_on_the_offloaded_model(pair):
    plain, off = pair
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    start = plain.run(ids, read=["resid_pre.2"]).acts["resid_pre.2"]
    wrappers = [vars(off.block_module(i))["forward"] for i in range(2)]      # accelerate's, one per block
    assert torch.equal(off.run(ids, resume=(2, start)).logits, plain.run(ids).logits)
    # the skipped blocks get accelerate's own forward back: the next full run is still right
    assert [vars(off.block_module(i))["forward"] for i in range(2)] == wrappers
    assert torch.equal(off.run(ids).logits, plain.run(ids).logits)
    prompts = ["hello there", "ab", "the cat sat on"]
    edits = [lmscope.add("resid_pre.1", torch.randn(plain.d_model, generator=torch.Generator().manual_seed(3)) * 9,
                         positions=[1])]
    assert off.generate_batch(prompts, edits, max_new_tokens=5) == plain.generate_batch(prompts, edits,
                                                                                          max_new_tokens=5)


def test_methods_that_read_weights_match_on_the_offloaded_model(pair):
    # EAP-IG edges slice the q/k/v and output projections' weights, DLA reads the unembedding and the heads' output
    # weights: offloaded weights are meta tensors in place, read as a copy loaded for the moment (core.trace.resident)
    from lmscope.circuits.attribution import attribute
    from lmscope.circuits.tasks import TaskSet
    from lmscope.lenses.dla import direct_logit_attribution
    plain, off = pair
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (3, 6), generator=g).tolist()
    corrupt = [row[:2] + [(row[2] + 5) % 256] + row[3:] for row in clean]
    task = TaskSet("toy", clean, corrupt, [30, 31, 32], [40, 41, 42], "logit_diff", 0, {}, [0, 0, 0])
    a, b = (attribute(m, task, "eap-ig", steps=2, edges=True, batch_size=3) for m in (plain, off))
    assert a.edges == b.edges and a.heads == b.heads
    da, db = (direct_logit_attribution(m, "hello world", "o") for m in (plain, off))
    assert da.heads == db.heads and da.to_json()["components"] == db.to_json()["components"]
    assert any(p.is_meta for p in off.hf.parameters())          # still offloaded: nothing was loaded for good


def test_icl_update_on_the_offloaded_model(pair):
    # the implicit update reads the first MLP matrices' weights and runs the MLP with W + dW: on offloaded matrices
    # (meta in place) it raised "Tensor on device cpu is not on the expected device meta"
    from lmscope.papers.icl_update.dynamics import implicit_update
    plain, off = pair
    a, b = (implicit_update(m, "hello there the cat", " sat on") for m in (plain, off))
    for x, y in zip(a, b):      # the loaded copies may be summed in another order (float32 round-off)
        assert y.update_norms == pytest.approx(x.update_norms, rel=1e-5)
    assert [x.ranks for x in b] == [{"gate_proj": 1, "up_proj": 1}] * len(b)
    assert max(x.mlp_error for x in b) < 1e-6 and max(x.block_error for x in b) < 1e-6
    assert max(abs(x.mlp_error - y.mlp_error) for x, y in zip(a, b)) < 1e-8
    assert any(p.is_meta for p in off.hf.parameters())


def test_sae_logit_effect_on_the_offloaded_model(pair):
    # a latent's logit effect reads the unembedding and the final norm's gain (offloaded: meta tensors in place)
    from lmscope.sae.architectures import build_sae
    from lmscope.sae.config import SAEConfig
    from lmscope.sae.features import logit_effect
    plain, off = pair
    sae = build_sae(SAEConfig(architecture="topk", d_in=plain.d_model, d_sae=16, k=2))
    a = [logit_effect(plain, sae, i, n=5) for i in range(3)]
    assert [logit_effect(off, sae, i, n=5) for i in range(3)] == a
    assert all(up[0][1] > 0 > down[0][1] for up, down in a)


def test_weight_orthogonalisation_is_refused_on_the_offloaded_model(pair):
    # the copy's edited weights would be overwritten by the offload store at each forward: the original model
    from lmscope.core.errors import InputError
    from lmscope.directions.orthogonalize import orthogonalize
    plain, off = pair
    v = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(orthogonalize(plain, v).run("hello").logits, plain.run("hello").logits)
    with pytest.raises(InputError, match="offloaded"):
        orthogonalize(off, v)
