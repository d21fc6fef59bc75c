import pytest
import torch

import lmscope
from conftest import ADDITIVE_HEADS, random_model
from lmscope.circuits.attribution import attribute, compare, spearman
from lmscope.circuits.patching import activation_patching
from lmscope.circuits.tasks import TaskSet, task_last_logits
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import FAMILIES


def _task(n=3, length=5, seed=2):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (n, length), generator=g).tolist()
    corrupt = [row[:1] + torch.randint(0, 256, (2,), generator=g).tolist() + row[3:] for row in clean]
    clean[-1] = clean[-1][:-1]                      # one shorter prompt: padding is exercised
    corrupt[-1] = corrupt[-1][:-1]
    return TaskSet("toy", clean, corrupt, list(range(30, 30 + n)), list(range(60, 60 + n)), "logit_diff", 0, {},
                   [0] * n)


def _grad_at(model, task, site, ids, mask, rows):
    """dm/d(site) at the clean run, by replacing the site with a leaf that requires grad."""
    _, acts = task_last_logits(model, ids, mask, read=[site])
    leaf = acts[site].clone().requires_grad_()
    logits, _ = task_last_logits(model, ids, mask, [lmscope.replace(site, leaf)], grad=True)
    task.metric(logits, rows).sum().backward()
    return acts[site], leaf.grad


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_node_scores_by_hand(family):
    m = random_model(family)
    task = _task()
    r = attribute(m, task, "eap", batch_size=8)
    clean, corrupt, mask, rows = next(task.batches(m, 8))
    for site in ("z.1", "mlp_out.0", "embed"):
        a_clean, grad = _grad_at(m, task, site, clean, mask, rows)
        _, a_corrupt = task_last_logits(m, corrupt, mask, read=[site])
        prod = (a_corrupt[site] - a_clean) * grad
        if site == "z.1":
            want = prod.double().sum((0, 1, 3)) / len(task)
            assert torch.allclose(torch.tensor(r.heads[1], dtype=torch.float64), want, rtol=1e-4, atol=1e-7)
        else:
            want = float(prod.double().sum()) / len(task)
            got = r.mlps[0] if site == "mlp_out.0" else r.embed
            assert got == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert r.clean_metric != r.corrupt_metric and len(r.heads) == m.n_layers and len(r.heads[0]) == m.n_heads


def test_eap_ig_one_step_is_eap_and_more_steps_differ():
    m = random_model("llama")
    task = _task()
    eap = attribute(m, task, "eap", batch_size=2)
    ig1 = attribute(m, task, "eap-ig", steps=1, batch_size=2)
    assert ig1.heads == eap.heads and ig1.mlps == eap.mlps and ig1.embed == eap.embed
    ig4 = attribute(m, task, "eap-ig", steps=4, batch_size=2)
    assert ig4.steps == 4 and ig4.heads != eap.heads


@pytest.mark.parametrize("family", ADDITIVE_HEADS)
def test_edge_scores_sum_to_node_scores(family):
    m = random_model(family)
    task = _task()
    r = attribute(m, task, "eap-ig", steps=2, edges=True, batch_size=2)
    nodes = r.nodes()
    assert r.upstream[0] == "embed" and r.downstream[-1] == "logits"
    for u, row in zip(r.upstream, r.edges):
        out = sum(s for s in row if s is not None)
        assert out == pytest.approx(nodes[u], rel=1e-3, abs=1e-5), u
    # a node never feeds a node of an earlier layer, nor (parallel attention) the MLP of its own layer
    col = {v: j for j, v in enumerate(r.downstream)}
    assert r.edges[r.upstream.index("head.1.0")][col["head.0.2"]] is None
    assert r.edges[r.upstream.index("head.1.0")][col["head.1.2"]] is None
    same_layer_mlp = r.edges[r.upstream.index("head.1.0")][col["mlp.1"]]
    assert (same_layer_mlp is None) == m.parallel
    assert r.top_edges(3) and "->" in r.summary()


def test_edge_into_logits_by_hand():
    m = random_model("llama")
    task = _task()
    r = attribute(m, task, "eap", edges=True, batch_size=8)
    clean, corrupt, mask, rows = next(task.batches(m, 8))
    last = f"resid_post.{m.n_layers - 1}"
    _, grad = _grad_at(m, task, last, clean, mask, rows)
    _, ca = task_last_logits(m, clean, mask, read=["mlp_out.0"])
    _, ka = task_last_logits(m, corrupt, mask, read=["mlp_out.0"])
    want = float(((ka["mlp_out.0"] - ca["mlp_out.0"]) * grad).double().sum()) / len(task)
    got = r.edges[r.upstream.index("mlp.0")][r.downstream.index("logits")]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_compare_with_patching_and_spearman(tmp_path):
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)   # average ranks for ties
    m = random_model("llama")
    task = _task()
    r = attribute(m, task, "eap")
    p = activation_patching(m, task, ["z", "mlp_out"], direction="noising", per_position=False)
    c = compare(r, p)
    assert c["heads"]["n"] == m.n_layers * m.n_heads and c["mlps"]["n"] == m.n_layers
    assert -1 <= c["heads"]["spearman"] <= 1
    with pytest.raises(InputError, match="noising"):
        compare(r, activation_patching(m, task, ["z"], layers=[0]))
    assert r.save(tmp_path / "a.html").exists() and "node scores" in r.summary()


def test_bad_input():
    m = random_model("llama")
    task = _task()
    with pytest.raises(InputError, match="method"):
        attribute(m, task, "acdc")
    with pytest.raises(InputError, match="steps"):
        attribute(m, task, "eap-ig", steps=0)
    with pytest.raises(InputError, match="gemma"):
        attribute(random_model("gemma2"), task, edges=True)
    for family in ("olmo2", "sparse_gpt"):       # a norm / a top-k after the heads are summed
        with pytest.raises(InputError, match="edge scores are refused"):
            attribute(random_model(family), task, edges=True)
    with pytest.raises(InputError, match="spearman"):
        spearman([1], [2])
    assert not m.has_hooks()


def test_attribute_cli(tmp_path, capsys):
    import json

    from lmscope.cli import main
    rows = [{"clean": "abcde", "corrupt": "abxde", "answer": "f", "wrong": "g"},
            {"clean": "hijkl", "corrupt": "hiykl", "answer": "m", "wrong": "n"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["attribute", "--pairs", str(pairs), "--model", "random:llama", "--method", "eap-ig", "--steps",
                 "2", "--compare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "eap-ig" and out["steps"] == 2 and out["n_prompts"] == 2
    assert out["comparison"]["heads"]["n"] == 12 and out["comparison"]["patching"]["direction"] == "noising"
    assert main(["attribute", "--pairs", str(pairs), "--model", "random:llama", "--method", "eap-ig",
                 "--steps", "0"]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
