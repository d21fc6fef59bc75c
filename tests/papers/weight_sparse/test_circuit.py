"""Node-level circuits: masks are exact at 0 and 1, ablation gives the stored means, sufficiency / necessity match
independent edits, pruning meets its loss target on train, edges count nonzero weights between kept nodes."""
import functools

import pytest
import torch

import lmscope
import lmscope.results
from lmscope.circuits.tasks import TaskSet
from lmscope.core.errors import InputError
from lmscope.papers.weight_sparse import circuit as C
from lmscope.papers.weight_sparse import edges as E

from conftest import plain_logits


def windows(n=6, length=10, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, length), generator=g).tolist()


@functools.cache
def signal_task(family: str, n: int = 16) -> TaskSet:
    """Random prompts whose answer / wrong are the model's most / least likely next token."""
    model = lmscope.load(f"random:{family}")
    g = torch.Generator().manual_seed(11)
    clean = [torch.randint(0, 256, (6 + i % 2,), generator=g).tolist() for i in range(n)]
    corrupt = [[(t + 7) % 256 for t in row] for row in clean]
    logits = torch.stack([model.run([row]).logits[0, -1] for row in clean])
    return TaskSet("toy", clean, corrupt, logits.argmax(-1).tolist(), logits.argmin(-1).tolist(), "logit_diff", 0, {},
                   [i % 2 for i in range(n)])


def test_all_ones_masks_are_the_model_exactly(model, ids):
    sites = C.node_sites(model)
    means = C.reference_means(model, windows(), sites)
    ones = C.NodeMasks.full(model, sites)
    ones.masks = {s: m.requires_grad_(True) for s, m in ones.masks.items()}   # forces every edit to be applied
    edits = C.mask_edits(model, means, ones)
    assert len(edits) == len(sites)
    run = model.run(ids, edits=edits)
    assert torch.equal(run.logits, plain_logits(model, ids))


def test_all_zero_masks_are_full_mean_ablation_and_ablated_activations_are_the_means():
    model = lmscope.load("random:llama")
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    sites = C.node_sites(model)
    means = C.reference_means(model, windows(), sites)
    zero = C.NodeMasks.full(model, sites, 0.0)
    run = model.run(ids, read=sites, edits=C.mask_edits(model, means, zero))
    by_hand = model.run(ids, edits=[lmscope.replace(s, means[s]) for s in sites])
    assert torch.equal(run.logits, by_hand.logits)
    for s in sites:
        assert torch.equal(run[s], means[s].expand_as(run[s])), s


def test_reference_means_are_float64_means_over_real_tokens():
    model = lmscope.load("random:gpt2")
    rows = [[1, 2, 3, 4], [5, 6]]
    means = C.reference_means(model, rows, ["neurons.1"])
    a = model.run([rows[0]], read=["neurons.1"])["neurons.1"][0]
    b = model.run([rows[1]], read=["neurons.1"])["neurons.1"][0]
    expected = torch.cat([a, b]).double().mean(0).float()
    torch.testing.assert_close(means["neurons.1"], expected, rtol=0, atol=1e-6)


def test_sufficiency_and_necessity_match_independent_edits():
    model = lmscope.load("random:llama")
    task = signal_task("llama")
    sites = C.node_sites(model)
    means = C.reference_means(model, windows(), sites)
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["neurons.1"] = torch.ones(model.d_mlp)           # the circuit: every neuron of layer 1
    ev = C.evaluate_nodes(model, task, means, masks, n_random=2)
    others = [lmscope.replace(s, means[s]) for s in sites if s != "neurons.1"]
    suff = task.metric(lmscope.circuits.task_logits(model, task, others)).double().mean()
    nec = task.metric(lmscope.circuits.task_logits(model, task, [lmscope.replace("neurons.1", means["neurons.1"])]))
    assert ev.metric_circuit == pytest.approx(float(suff), abs=1e-5)
    assert ev.metric_without_circuit == pytest.approx(float(nec.double().mean()), abs=1e-5)
    assert ev.n_nodes == model.d_mlp and ev.nodes_by_kind["neurons"] == model.d_mlp
    full = C.evaluate_nodes(model, task, means, C.NodeMasks.full(model, sites), n_random=0)
    assert full.faithfulness == 1.0 and full.necessity_drop == 1.0
    empty = C.evaluate_nodes(model, task, means, C.NodeMasks.full(model, sites, 0.0), n_random=0)
    assert empty.faithfulness == 0.0 and empty.necessity_drop == 0.0


def test_random_circuits_keep_the_count_per_site():
    model = lmscope.load("random:gpt2")
    sites = C.node_sites(model, ("neurons", "q"))
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["q.0"][1, :3] = 1
    masks.masks["neurons.2"][:5] = 1
    rand = C.random_like(masks, torch.Generator().manual_seed(0))
    for s in sites:
        assert int((rand.masks[s] == 1).sum()) == int((masks.masks[s] == 1).sum())
    assert not torch.equal(rand.masks["neurons.2"], masks.masks["neurons.2"])


def test_pruning_meets_the_loss_target_on_train_and_binarises():
    model = lmscope.load("random:llama")
    task = signal_task("llama")
    config = C.NodePruneConfig(steps=6, batch_size=8, kinds=("neurons", "v"), target_loss=0.3)
    out = C.prune_nodes(model, task, windows(), config)
    masks, ev, info = out.masks, out.evaluation, out.info
    for m in masks.masks.values():
        assert bool(((m == 0) | (m == 1)).all())
    assert ev.n_nodes == masks.n_kept() and len(info["history"]) >= 6
    if info["target_reached_on_train"]:
        assert info["train_loss_circuit"] <= 0.3
    curve = ev.curve
    assert curve[0]["kept"] == ev.n_nodes and curve[-1]["kept"] == 0
    assert curve[-1]["metric"] == pytest.approx(ev.metric_empty, abs=1e-4)


def test_bad_prune_input_is_one_clear_error():
    model = lmscope.load("random:llama")
    with pytest.raises(InputError, match="node kind"):
        C.node_sites(model, ("heads",))
    with pytest.raises(InputError, match="ablation"):
        C.prune_nodes(model, signal_task("llama"), windows(), C.NodePruneConfig(ablation="resample"))


def test_nonsense_task_swaps_labels_of_about_half():
    task = signal_task("llama")
    nonsense = C.nonsense_task(task, seed=0)
    swapped = sum(a != b for a, b in zip(task.answer, nonsense.answer))
    assert 0 < swapped < len(task)
    assert sorted(zip(nonsense.answer, nonsense.wrong)) != sorted(zip(task.answer, task.wrong))


def test_edges_count_nonzero_weights_between_kept_nodes():
    model = lmscope.load("random:gpt2")
    sites = C.node_sites(model)
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["mlp_in.0"][[2, 5]] = 1
    masks.masks["neurons.0"][[0, 1, 7]] = 1
    masks.masks["mlp_out.0"][4] = 1
    w_in = model.hf.transformer.h[0].mlp.c_fc.weight       # Conv1D: [in, out]
    w_out = model.hf.transformer.h[0].mlp.c_proj.weight    # [d_mlp, d_model]
    with torch.no_grad():
        w_in[2, 1] = 0                                      # one weight removed from the circuit
    try:
        e = E.count_edges(model, masks, list_limit=10)
    finally:
        with torch.no_grad():
            w_in[2, 1] = 0.01
    expected_in = 2 * 3 - 1
    expected_out = int((w_out[[0, 1, 7], 4] != 0).sum())
    assert e["by_kind"]["mlp_in->neurons"] == expected_in
    assert e["by_kind"]["neurons->mlp_out"] == expected_out
    assert e["edges"] == expected_in + expected_out
    assert len(e["listed"]) == e["edges"]
    dense = E.count_edges(model, C.NodeMasks.full(model, sites))
    assert dense["by_kind"]["mlp_in->neurons"] == model.n_layers * model.d_model * model.d_mlp - 0


def test_circuit_page_activations_are_the_circuit_runs(tmp_path):
    from lmscope.papers.weight_sparse.compare import find_node_circuit
    from lmscope.papers.weight_sparse.reading import node_activations
    model = lmscope.load("random:llama")
    task = signal_task("llama")
    sites = C.node_sites(model, ("neurons",))
    means = C.reference_means(model, windows(), sites)
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["neurons.1"][[3, 9]] = 1
    rows = node_activations(model, task, means, masks)
    assert [r["node"] for r in rows] == ["neurons.1[3]", "neurons.1[9]"]
    run = model.run(task.clean, read=["neurons.1"], edits=C.mask_edits(model, means, masks))
    last = run.at_last(run["neurons.1"])
    assert rows[0]["clean_last"] == pytest.approx(float(last[:, 3].double().mean()), abs=1e-5)
    # signal_task's corrupt prompts differ from the first token on
    assert rows[1]["clean_change"] == pytest.approx(float(run["neurons.1"][:, 0, 9].double().mean()), abs=1e-5)
    circuit = find_node_circuit(model, task, windows(), C.NodePruneConfig(steps=3, batch_size=8, kinds=("neurons",),
                                                                         target_loss=0.5))
    assert circuit.n_nodes == circuit.evaluation["n_nodes"]
    assert circuit.masks(model).n_kept() == circuit.n_nodes
    page = circuit.save(tmp_path / "circuit.html").read_text()
    assert "Node circuit" in page and page.count("plotly") > 3
    back = lmscope.results.Result.load(circuit.save(tmp_path / "circuit.json"))
    assert type(back).__name__ == "NodeCircuit" and back.nodes == circuit.nodes and back.n_nodes == circuit.n_nodes
    # the removal curve is drawn where there is one; an evaluation without one (a circuit read back from its file)
    # gets no empty figure
    assert len(circuit.figures()) == 3 and circuit.evaluation["curve"]
    back.evaluation["curve"] = []
    assert len(back.figures()) == 2


def test_head_attention_reads_the_pattern_at_the_differing_positions():
    from lmscope.papers.weight_sparse.reading import head_attention
    model = lmscope.load("random:llama")
    base = signal_task("llama").subset(range(4))
    corrupt = [row[:2] + [(row[2] + 1) % 256] + row[3:] for row in base.clean]   # only position 2 differs
    task = TaskSet("one-diff", base.clean, corrupt, base.answer, base.wrong, "logit_diff", 0, {}, base.templates)
    sites = C.node_sites(model, ("q", "k"))
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["q.1"][2, 0] = 1          # query head 2
    masks.masks["k.0"][1, 5] = 1          # KV head 1 -> query heads 2 and 3 (4 heads, 2 KV heads)
    means = C.node_zero_means(model, sites)
    rows = head_attention(model, task, means, masks)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, "0.2"), (0, "0.3"), (1, "1.2")]
    assert all(r["differing_positions"] == 1 for r in rows)
    edits = C.mask_edits(model, means, masks)
    expected = sum(float(model.run([task.clean[r]], read=["pattern.1"], edits=edits)["pattern.1"][0, 2, -1, 2])
                   for r in range(4)) / 4
    assert rows[2]["attention_to_difference"] == pytest.approx(expected, abs=1e-5)
    assert 0 < expected < 1


def test_target_above_the_model_is_its_train_loss_plus_delta():
    model = lmscope.load("random:llama")
    config = C.NodePruneConfig(steps=2, batch_size=8, kinds=("neurons",), above_model=0.05)
    out = C.prune_nodes(model, signal_task("llama"), windows(), config)
    assert out.info["target_loss"] == pytest.approx(out.info["model_train_loss"] + 0.05)
    assert out.info["target_reached_on_train"] and out.info["train_loss_circuit"] <= out.info["target_loss"]


def test_a_given_heldout_task_is_where_the_circuit_is_measured():
    model = lmscope.load("random:llama")
    task = signal_task("llama")
    train, held = task.subset(range(10)), task.subset(range(10, 16))
    out = C.prune_nodes(model, train, windows(), C.NodePruneConfig(steps=2, batch_size=8, kinds=("neurons",)),
                        heldout=held)
    assert out.info["n_train"] == 10 and out.info["n_heldout"] == 6
    assert out.heldout.clean == held.clean


def test_separation_by_answer_pools_clean_and_corrupt_by_their_label():
    from lmscope.papers.weight_sparse.reading import node_activations
    model = lmscope.load("random:llama")
    base = signal_task("llama").subset(range(8))
    # two classes: answer 1 on clean (wrong 2), so the corrupt prompts are the other class
    task = TaskSet("two", base.clean, base.corrupt, [1] * 8, [2] * 8, "logit_diff", 0, {}, base.templates)
    sites = C.node_sites(model, ("neurons",))
    means = C.node_zero_means(model, sites)
    masks = C.NodeMasks.full(model, sites, 0.0)
    masks.masks["neurons.0"][4] = 1
    row = node_activations(model, task, means, masks)[0]
    assert row["label_separation_last"] == pytest.approx(row["separation"], abs=1e-9)
    assert row["label_a"] != row["label_b"]
