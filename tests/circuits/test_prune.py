"""Node gates and mask pruning: empty = full ablation, full = the model, means are what they claim."""
import importlib

import pytest
import torch

import lmscope
from circuit_toy_task import toy_task, with_signal
from conftest import random_model
from lmscope.circuits.faithfulness import gated_logits
from lmscope.circuits.means import ablation_means, task_means, zero_means
from lmscope.circuits.tasks import TaskSet
from lmscope.circuits.nodes import Node, all_nodes, gate_edits, gates, kept_nodes, parse_node
from lmscope.circuits.prune import EDGE_PRUNING, PruneConfig, deterministic_gates, prune
from lmscope.core.errors import InputError


def _last(model, task, edits_for=None):
    """Plain forward (optionally with per-batch edits) -> logits at each prompt's last real token."""
    ids, mask = model.encode(task.clean)
    edits = edits_for(ids.shape[1]) if edits_for else []
    logits = model.run(task.clean, edits=edits).logits
    return logits[torch.arange(len(task)), mask.sum(1) - 1]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_empty_gates_equal_full_mean_ablation(family):
    m, task = random_model(family), toy_task(8)
    means = task_means(m, task)
    zero_h, zero_m = torch.zeros(m.n_layers, m.n_heads), torch.zeros(m.n_layers)
    got = gated_logits(m, task, means, zero_h, zero_m)
    groups = means.groups_for(task, range(len(task)))

    def replace_everything(seq):   # the same ablation written with lmscope's plain replace edits
        edits = []
        for layer in range(m.n_layers):
            z, mlp = means.values(groups, seq, layer)
            edits += [lmscope.mean_ablate(f"z.{layer}", z), lmscope.mean_ablate(f"mlp_out.{layer}", mlp)]
        return edits
    assert torch.equal(got, _last(m, task, replace_everything))
    assert not torch.allclose(got, _last(m, task))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_full_gates_equal_the_model(family):
    m, task = random_model(family), toy_task(8)
    means = task_means(m, task)
    ones_h, ones_m = torch.ones(m.n_layers, m.n_heads), torch.ones(m.n_layers)
    plain = gated_logits(m, task, means, ones_h, ones_m)          # all gates 1: no edit is installed
    # gates that require grad are installed as interpolate edits with weight exactly 1: bit-for-bit the same
    forced = gated_logits(m, task, means, ones_h.clone().requires_grad_(), ones_m.clone().requires_grad_(),
                          grad=True)
    assert torch.equal(forced.detach(), plain)
    torch.testing.assert_close(plain, _last(m, task), rtol=1e-5, atol=1e-5)   # lm_head on fewer positions


def test_ablated_activation_is_the_stored_mean_and_the_mean_is_right():
    m, task = random_model("llama"), toy_task(8, lengths=(7, 9))
    means = task_means(m, task)                     # two groups of 4 prompts, one per template and length
    # the stored mean, recomputed by hand: clean and corrupt prompts of template 1 at position 8, layer 1
    rows = [i for i, t in enumerate(task.templates) if t == 1]
    acts = [m.run([side[i]], read=["z.1", "mlp_out.1"]).acts for i in rows for side in (task.clean, task.corrupt)]
    g = means.group_of[(1, 9)]
    want_z = torch.stack([a["z.1"][0, 8] for a in acts]).double().mean(0)
    want_mlp = torch.stack([a["mlp_out.1"][0, 8] for a in acts]).double().mean(0)
    torch.testing.assert_close(means.z[g, 8, 1].double(), want_z, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(means.mlp[g, 8, 1].double(), want_mlp, rtol=1e-6, atol=1e-7)
    assert means.counts[g, 8] == 2 * len(rows) and means.counts[means.group_of[(0, 7)], 8] == 0
    # the pooled group averages every prompt at each position
    want_pooled = torch.stack([m.run([side[i]], read=["z.1"]).acts["z.1"][0, 3] for i in range(len(task))
                               for side in (task.clean, task.corrupt)]).double().mean(0)
    torch.testing.assert_close(means.z[0, 3, 1].double(), want_pooled, rtol=1e-6, atol=1e-7)
    assert means.counts[0, 3] == 2 * len(task) and means.counts[0, 8] == 2 * len(rows)
    # ablating head (1, 2) and MLP 1 puts exactly those stored means in, per template and position
    heads, mlps = gates(m, [n for n in all_nodes(m) if n not in (Node("head", 1, 2), Node("mlp", 1))])
    ids, _ = m.encode(task.clean)
    groups = means.groups_for(task, range(len(task)))
    assert sorted(set(groups)) == [1, 2]
    run = m.run(task.clean, read=["z.1", "mlp_out.1"], edits=gate_edits(m, means, heads, mlps, groups, ids.shape[1]))
    for i, grp in enumerate(groups):
        n = len(task.clean[i])
        assert torch.equal(run.acts["z.1"][i, :n, 2], means.z[grp, :n, 1, 2])
        assert torch.equal(run.acts["mlp_out.1"][i, :n], means.mlp[grp, :n, 1])
    clean = m.run(task.clean, read=["z.1"]).acts["z.1"]
    assert torch.equal(run.acts["z.1"][:, :, :2], clean[:, :, :2])   # other heads untouched


def test_zero_ablation_puts_zeros():
    m, task = random_model("llama"), toy_task(4)
    heads, mlps = gates(m, [])
    run = m.run(task.clean, read=["z.0", "mlp_out.2"],
                edits=gate_edits(m, zero_means(m, task), heads, mlps, [0] * 4, 9))
    assert torch.count_nonzero(run.acts["z.0"]) == 0 and torch.count_nonzero(run.acts["mlp_out.2"]) == 0


def test_nodes_parse_and_reject():
    m = random_model("llama")
    assert parse_node(m, "head.2.3") == parse_node(m, [2, 3]) == parse_node(m, "2.3") == Node("head", 2, 3)
    assert parse_node(m, "mlp.1") == Node("mlp", 1)
    for bad in ("head.3.0", "head.0.4", "mlp.9", "attn.1", [1], "x"):
        with pytest.raises(InputError, match="unknown node"):
            parse_node(m, bad)
    heads, mlps = gates(m, ["head.0.1", "mlp.2"])
    assert kept_nodes(heads, mlps) == [Node("head", 0, 1), Node("mlp", 2)]


def test_prune_runs_is_seeded_and_leaves_the_model_as_it_was():
    m, task = random_model("llama"), toy_task(12)
    flags = [p.requires_grad for p in m.hf.parameters()]
    config = PruneConfig(steps=4, batch_size=4, n_random=2, target_heads=3, max_heads=5)
    a, b = prune(m, task, config), prune(m, task, config)
    assert a.to_json() == {**b.to_json(), "training": {**b.training, "seconds": a.training["seconds"]}}
    assert [p.requires_grad for p in m.hf.parameters()] == flags and not m.has_hooks()
    assert a.heads_kept <= 5 and a.heads_total == 12 and a.training["n_train"] == 6 and a.n_prompts == 6
    logits = torch.tensor(a.training["head_logits"])
    kept = {tuple(h) for h in a.heads}
    # with a target, the circuit is the target's number of heads of highest logit
    top = sorted(((float(logits[l, h]), l, h) for l in range(3) for h in range(4)), reverse=True)[:3]
    assert kept == {(l, h) for _, l, h in top}
    on = (deterministic_gates(logits) > 0.5).sum()
    assert a.training["gates_on"] == int(on)


def test_lagrangian_brings_the_expected_heads_to_the_target():
    m = random_model("llama")
    task = with_signal(toy_task(12), m)
    r = prune(m, task, PruneConfig(steps=40, batch_size=6, n_random=0, target_heads=3, lr=0.3))
    hist = r.training["history"]
    assert hist[0]["expected_heads"] > 11 and hist[-1]["expected_heads"] < 9
    assert hist[-1]["lagrange"][0] > 0 and hist[-1]["target_fraction"] == 0.25


def test_prune_rejects_bad_config_before_running():
    m, task = random_model("llama"), toy_task(12)
    for bad in (PruneConfig(ablation="resample"), PruneConfig(steps=0), PruneConfig(n_train=12),
                PruneConfig(target_heads=0)):
        with pytest.raises(InputError):
            prune(m, task, bad)
    with pytest.raises(InputError, match="at least 4"):
        prune(m, toy_task(3), PruneConfig())


def test_small_groups_use_the_pooled_mean():
    m, task = random_model("llama"), toy_task(6, lengths=(7, 9))      # 3 prompts per group: below min_group 4
    means = task_means(m, task)
    assert means.group_of == {} and means.groups_for(task, range(6)) == [0] * 6 and means.z.shape[0] == 1
    assert task_means(m, task, min_group=3).groups_for(task, range(6)) == [1, 2] * 3


def _spy_means(monkeypatch, module):
    """Record the reference task every ablation_means call of `module` gets."""
    seen = []
    real = module.ablation_means

    def spy(model, reference, ablation):
        seen.append((reference, ablation))
        return real(model, reference, ablation)
    monkeypatch.setattr(module, "ablation_means", spy)
    return seen


def test_circuit_means_are_computed_without_the_evaluated_prompts(monkeypatch):
    prune_module, run_module = (importlib.import_module(f"lmscope.circuits.{n}") for n in ("prune", "run"))
    m, toy = random_model("llama"), toy_task(12)
    task = TaskSet("toy", toy.clean, toy.corrupt, toy.answer, toy.wrong, "logit_diff", 0, {}, toy.templates)
    seen = _spy_means(monkeypatch, prune_module)
    r = prune(m, task, PruneConfig(steps=2, batch_size=4, n_random=1, target_heads=3))
    _, held = task.split(6, seed=0)
    (reference, _), = seen
    assert len(reference) == 6 and r.n_prompts == len(held) == 6
    assert not {tuple(c) for c in reference.clean} & {tuple(c) for c in held.clean}
    # the held-out metrics do not depend on the held-out prompts' own activations: the means equal the train means
    train, _ = task.split(6, seed=0)
    torch.testing.assert_close(task_means(m, reference).z, task_means(m, train).z, rtol=0, atol=0)
    seen = _spy_means(monkeypatch, run_module)
    result, circuit = run_module.find_circuit(m, task, method="eap", max_heads=3, n_random=1)
    (reference, _), = seen
    assert not {tuple(c) for c in reference.clean} & {tuple(c) for c in held.clean} and result.n_prompts == 6
    saved = run_module.evaluate_saved(m, circuit, task, n_random=1)
    (reference, _) = seen[-1]
    assert saved.n_prompts == 6 and len(reference) == 6 and "seeded half" in " ".join(saved.notes)
    scored = task.split(6, seed=0)[1]
    assert not {tuple(c) for c in reference.clean} & {tuple(c) for c in scored.clean}
    with pytest.raises(InputError, match="also scored"):
        run_module.evaluate_saved(m, circuit, task, reference=task.subset([0, 1]))


def test_interchange_ablation_puts_the_corrupt_activations():
    """Edge Pruning's ablation: an ablated node carries its activation on the same pair's corrupt prompt, so the
    empty circuit is the corrupt run itself."""
    m, task = random_model("llama"), toy_task(6)
    acts = ablation_means(m, task, "corrupt")
    zero_h, zero_m = torch.zeros(m.n_layers, m.n_heads), torch.zeros(m.n_layers)
    sub = task.subset([3, 1])
    got = gated_logits(m, sub, acts, zero_h, zero_m)
    ids, mask = m.encode(sub.corrupt)
    plain = m.run(sub.corrupt).logits[torch.arange(len(sub)), mask.sum(1) - 1]
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_edge_pruning_protocol_fits_kl_to_the_model():
    m, task = random_model("llama"), toy_task(12)
    r = prune(m, task, PruneConfig(steps=3, batch_size=4, n_random=1, target_heads=3, **EDGE_PRUNING))
    assert r.training["loss"] == "kl" and r.training["ablation"] == "corrupt"
    assert all(h["fit"] >= 0 for h in r.training["history"])        # a KL
    assert "KL(reference || edited)" in " ".join(r.notes) and "corrupt prompt" in " ".join(r.notes)
    with pytest.raises(InputError, match="loss"):
        prune(m, task, PruneConfig(steps=1, loss="l2"))
