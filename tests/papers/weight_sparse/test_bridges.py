"""Bridges on tiny random models sharing the byte vocabulary: shapes, the loss terms at known values, an identity
bridge from a model to itself costs nothing, training lowers the loss, a node flip carried through an identity
bridge moves the other model exactly as it moves the first, and mismatched pairs get one clear error."""
import pytest
import torch
import transformers as tf

import lmscope
import lmscope.results
from lmscope.circuits.tasks import TaskSet
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import byte_tokenizer
from lmscope.papers.weight_sparse import bridges as B


def windows(n, length=8, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def identity_bridge(d):
    bridge = B.Bridge(d, d, k=d)
    with torch.no_grad():
        for lin in (bridge.encoder, bridge.decoder):
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
    return bridge


def test_encoder_keeps_exactly_k_and_shapes():
    bridge = B.Bridge(64, 32, k=5)
    x = torch.randn(2, 7, 64)
    enc = bridge.encode(x)
    assert enc.shape == (2, 7, 32) and bridge.decode(enc).shape == (2, 7, 64)
    assert torch.equal((enc != 0).sum(-1), torch.full((2, 7), 5))
    full = bridge.encoder(x)
    kept = enc != 0
    assert torch.equal(enc[kept], full[kept])
    assert torch.all(full.abs()[~kept].view(2, 7, -1).amax(-1) <= full.abs().masked_fill(~kept, 1e9).amin(-1))


def test_loss_terms_at_known_values():
    x = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5)
    assert float(B.nmse(x, x, mask)) == 0.0
    mean = x.mean((0, 1), keepdim=True).expand_as(x)
    assert float(B.nmse(mean, x, mask)) == pytest.approx(1.0, rel=1e-5)
    logits = torch.randn(3, 5, 11)
    assert float(B.kl_model_to_hybrid(logits, logits, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(B.kl_model_to_hybrid(logits, torch.zeros_like(logits), mask)) > 0


def test_identity_bridge_from_a_model_to_itself_costs_nothing():
    model = lmscope.load("random:llama")
    bridges = [identity_bridge(model.d_model) for _ in range(model.n_layers)]
    pairs = B.layer_pairs(model, model)
    assert pairs == [(i, i) for i in range(model.n_layers)]
    for terms in B.bridge_losses(model, model, bridges, pairs, windows(2), grad=False):
        assert float(terms["nmse_to_sparse"]) == 0 and float(terms["nmse_to_dense"]) == 0
        assert float(terms["kl_dense_to_sparse"]) == pytest.approx(0, abs=1e-6)
        assert float(terms["kl_sparse_to_dense"]) == pytest.approx(0, abs=1e-6)


def test_training_between_two_families_lowers_the_loss_and_reports_every_layer(tmp_path):
    dense, sparse = lmscope.load("random:gpt2"), lmscope.load("random:llama")
    config = B.BridgeConfig(steps=12, batch_size=4, lr=3e-3, k=16)
    bridges, result = B.train_bridges(dense, sparse, windows(16), windows(4, seed=1), config)
    assert len(result.per_layer) == sparse.n_layers and len(bridges) == sparse.n_layers
    hist = result.training["history"]
    assert sum(h["loss"] for h in hist[-3:]) < sum(h["loss"] for h in hist[:3])
    for row in result.per_layer:
        assert row["nmse_to_sparse"] > 0 and row["kl_sparse_to_dense"] >= 0
    assert not dense.has_hooks() and not sparse.has_hooks()
    assert all(p.requires_grad for p in dense.hf.parameters())   # restored after training
    assert result.save(tmp_path / "b.html").exists()
    back = lmscope.results.Result.load(result.save(tmp_path / "b.json"))
    assert back.per_layer == result.per_layer and back.pairs == result.pairs
    B.save_bridges(bridges, tmp_path / "bridges.safetensors")
    assert (tmp_path / "bridges.safetensors").stat().st_size > 0


def test_identity_bridge_carries_a_node_flip_exactly():
    model = lmscope.load("random:llama")
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (6, 7), generator=g).tolist()
    corrupt = [[(t + 3) % 256 for t in row] for row in clean]
    task = TaskSet("toy", clean, corrupt, [1] * 6, [2] * 6, "logit_diff", 0, {}, [0] * 6)
    s = B.bridge_steering(model, model, identity_bridge(model.d_model), (1, 1), task, "neurons.0", (5,),
                          n_random=2)
    assert s["sparse_change"] != 0
    assert s["dense_change"] == pytest.approx(s["sparse_change"], abs=1e-4)
    assert len(s["dense_change_random"]) == 2


def test_mismatched_pairs_are_one_clear_error():
    dense = lmscope.load("random:gpt2")
    config = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300)
    other = lmscope.Model(tf.AutoModelForCausalLM.from_config(config).eval(), byte_tokenizer(), "other")
    with pytest.raises(InputError, match="one vocabulary"):
        B.check_pair(dense, other)
    with pytest.raises(InputError, match="one length"):
        B.train_bridges(dense, lmscope.load("random:llama"), [[1, 2, 3], [1, 2]], windows(2))
