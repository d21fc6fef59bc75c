"""Circuit graph: EAP edge scores between circuit nodes, drawn by layer."""
import pytest
import torch

from circuit_toy_task import toy_task
from conftest import random_model
from lmscope.circuits.graph import circuit_graph
from lmscope.circuits.nodes import Node, all_nodes
from lmscope.core.errors import InputError


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_edges_into_logits_sum_to_the_residual_attribution(family):
    """With every node in the circuit, the residual stream is embed + every head's write + every MLP's write (+ the
    output projections' biases, equal in both runs), so the scores into 'logits' must add up to
    (final residual corrupt - clean) . dm/d(final residual), computed here without the graph code."""
    m, task = random_model(family), toy_task(6)
    g = circuit_graph(m, task, all_nodes(m), n_prompts=6, max_edges=10_000)
    into = sum(e["score"] for e in g.edges if e["dst"] == "logits")
    last = f"resid_post.{m.n_layers - 1}"
    ids, mask = m.encode(task.clean)
    run = m.run(task.clean, read=[last], grad=True)
    metric = task.metric(run.logits[torch.arange(6), mask.sum(1) - 1]).sum()
    (grad,) = torch.autograd.grad(metric, run.acts[last])
    corrupt = m.run(task.corrupt, read=[last]).acts[last]
    want = float(((corrupt - run.acts[last].detach()) * grad * mask[..., None]).double().sum() / 6)
    assert into == pytest.approx(want, rel=1e-4, abs=1e-7)
    srcs = {e["src"] for e in g.edges if e["dst"] == "logits"}
    assert srcs == {"embed"} | {n.name for n in all_nodes(m)}


def test_edges_only_run_forward_and_a_head_edge_is_its_gradient_path():
    m, task = random_model("llama"), toy_task(6)
    nodes = [Node("head", 0, 1), Node("mlp", 0), Node("head", 1, 2), Node("mlp", 2)]
    g = circuit_graph(m, task, nodes, n_prompts=6)
    order = {"embed": -1, "head.0.1": 0, "mlp.0": 0.5, "head.1.2": 1, "mlp.2": 2.5, "logits": 99}
    assert all(order[e["src"]] < order[e["dst"]] for e in g.edges)
    assert {(e["src"], e["dst"]) for e in g.edges} == {(a, b) for a in order for b in order
                                                       if a != "logits" and b != "embed" and order[a] < order[b]}
    # head.0.1 -> head.1.2 by hand: head 0.1's write . d(z_1.2 . dm/dz_1.2)/d resid_pre.1
    ids, mask = m.encode(task.clean)
    from lmscope.core.edits import scale
    run = m.run(task.clean, read=["z.0", "z.1", "resid_pre.1"], edits=[scale("z.1", 1.0)], grad=True)
    metric = task.metric(run.logits[torch.arange(6), mask.sum(1) - 1]).sum()
    (gz,) = torch.autograd.grad(metric, run.acts["z.1"], retain_graph=True)
    (gx,) = torch.autograd.grad((run.acts["z.1"][:, :, 2] * gz[:, :, 2]).sum(), run.acts["resid_pre.1"])
    dz = m.run(task.corrupt, read=["z.0"]).acts["z.0"][:, :, 1] - run.acts["z.0"][:, :, 1].detach()
    w_o = m.block_module(0, m.adapter.o_proj).weight.detach()[:, 1 * m.d_head:2 * m.d_head]
    write = (dz @ w_o.T) * mask[..., None]
    want = float((write * gx).double().sum() / 6)
    got = next(e["score"] for e in g.edges if (e["src"], e["dst"]) == ("head.0.1", "head.1.2"))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-8)


def test_graph_page_and_refusal(tmp_path):
    m, task = random_model("llama"), toy_task(4)
    g = circuit_graph(m, task, [Node("head", 0, 0), Node("mlp", 1)], n_prompts=4)
    path = g.save(tmp_path / "g.html")
    text = path.read_text()
    assert "plotly" in text.lower() and "head.0.0" in text
    assert len(g.figure().data) >= 3 and "strongest" in g.summary()
    with pytest.raises(InputError):
        circuit_graph(m, task, [])


def test_figure_labels_the_strongest_edges_and_bows_edges_within_a_row():
    from lmscope.circuits.graph import CircuitGraph
    nodes = ([{"name": "embed", "layer": -1, "y": 1.0, "kind": "embed"}]
             + [{"name": f"head.{layer}.0", "layer": layer, "y": 0, "kind": "head"} for layer in range(4)]
             + [{"name": "mlp.3", "layer": 3, "y": 2.5, "kind": "mlp"},
                {"name": "logits", "layer": 4, "y": 1.0, "kind": "logits"}])
    edges = [{"src": "head.0.0", "dst": "head.3.0", "score": -2.0},     # along the head-0 row: an arc
             {"src": "head.2.0", "dst": "logits", "score": 1.0},
             {"src": "embed", "dst": "head.1.0", "score": 0.1}]
    fig = CircuitGraph("m", "toy", nodes, edges, 4).figure(labelled_edges=2)
    lines = [t for t in fig.data if t.mode == "lines"]
    arc = next(t for t in lines if t.text.startswith("head.0.0 -> head.3.0"))
    assert len(arc.x) > 2 and max(arc.y) > 0                          # bows above the row
    assert all(len(t.x) == 2 for t in lines if t is not arc)
    heads = next(t for t in fig.data if t.name == "head")
    assert list(heads.hovertext) == [f"head.{layer}.0" for layer in range(4)]
    assert list(heads.text) == ["0.0", "", "2.0", "3.0"]              # the 2 strongest edges' nodes only
    assert next(t for t in fig.data if t.name == "embed").text == ("",)
    assert fig.layout.xaxis.ticktext[0] == "embed" and fig.layout.xaxis.ticktext[-1] == "logits"
    assert list(fig.layout.yaxis.ticktext) == ["head 0", "MLP"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "granite", "gpt_neox"])
def test_edges_equal_attribution_patchings_eap_edges(family):
    # two implementations of the same EAP edge score: the circuit graph's (one backward per node) and attribute's
    # (Granite: both must carry the residual multiplier in a head's write)
    from lmscope.circuits.attribution import attribute
    from lmscope.circuits.tasks import TaskSet
    m, toy = random_model(family), toy_task(6)
    task = TaskSet("toy", toy.clean, toy.corrupt, toy.answer, toy.wrong, "logit_diff", 0, {}, toy.templates)
    nodes = [Node("head", 0, 1), Node("mlp", 0), Node("head", 1, 2), Node("mlp", 2)]
    g = circuit_graph(m, task, nodes, n_prompts=6)
    r = attribute(m, task, "eap", edges=True, batch_size=6)
    for e in g.edges:
        want = r.edges[r.upstream.index(e["src"])][r.downstream.index(e["dst"])]
        assert e["score"] == pytest.approx(want, rel=1e-3, abs=1e-6 * max(1.0, abs(want))), (e["src"], e["dst"])
    assert max(abs(e["score"]) for e in g.edges) > 0
