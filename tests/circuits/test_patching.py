import json
import math

import pytest
import torch

from conftest import random_model
from lmscope.circuits.patching import activation_patching, patch_metric
from lmscope.circuits.tasks import TaskSet, task_logits
from lmscope.core.errors import InputError


def _task(corrupt=None, **kw):
    """Four aligned prompts of byte tokens; the corrupt prompts differ from the clean ones at position 2 only."""
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 256, (4, 6), generator=g).tolist()
    if corrupt is None:
        corrupt = [row[:2] + [(row[2] + 7) % 256] + row[3:] for row in clean]
    args = dict(name="toy", clean=clean, corrupt=corrupt, answer=[10, 11, 12, 13], wrong=[20, 21, 22, 23],
                metric_name="logit_diff", n_filtered=0, filtered={}, templates=[0] * 4)
    args.update(kw)
    return TaskSet(**args)


def test_patching_clean_into_clean_is_identity(model):
    task = _task()
    same = _task(corrupt=_task().clean)
    sites = ["resid_pre", "attn_out", "mlp_out", "z"] + ([] if model.parallel else ["resid_mid"])
    r = activation_patching(model, same, sites, batch_size=3, skip_equal=False, prefix_cache=False,
                            head_batch=False, layer_batch=False)   # the bit-exact path (batched: ~1e-7)
    clean = task.metric(task_logits(model, task, batch_size=3)).double().mean().item()
    assert r.clean_metric == r.corrupt_metric == clean
    for kind in sites:
        assert all(v == clean for row in r.raw[kind] for v in row), kind      # exactly the clean metric
        assert all(math.isnan(v) for row in r.effects[kind] for v in row)
    plan = sum(len(row) for k in sites for row in r.raw[k])
    assert "undefined" in r.notes[-1] and r.n_forwards == (plan + 2) * 2      # two batches
    skipping = activation_patching(model, same, sites, batch_size=3)
    assert skipping.raw == r.raw and skipping.n_forwards == 4 and "skipped" in skipping.notes[-1]
    # the same identity one run at a time, on the logits themselves
    for site, heads in (("resid_pre.1", None), ("z.2", [1]), ("mlp_out.0", None)):
        m = patch_metric(model, same, site, heads=heads, positions=[1, 3], batch_size=3)
        assert torch.equal(m, task.metric(task_logits(model, task, batch_size=3)))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_whole_layer_resid_pre_from_corrupt_gives_corrupt_logits(family):
    m = random_model(family)
    task = _task()
    corrupt = task.metric(task_logits(m, task, which="corrupt", batch_size=3))
    clean = task.metric(task_logits(m, task, batch_size=3))
    for layer in range(m.n_layers):
        assert torch.equal(patch_metric(m, task, f"resid_pre.{layer}", direction="noising", batch_size=3), corrupt)
        assert torch.equal(patch_metric(m, task, f"resid_pre.{layer}", batch_size=3), clean)
    r = activation_patching(m, task, ["resid_pre"], direction="noising", per_position=False, batch_size=3,
                            prefix_cache=False)
    assert r.axes == {"resid_pre": "all positions"}
    assert all(row == [pytest.approx(0.0, abs=1e-12)] for row in r.effects["resid_pre"])
    assert all(row[0] == r.corrupt_metric for row in r.raw["resid_pre"])


def test_position_map_semantics():
    m = random_model("llama")
    task = _task()
    r = activation_patching(m, task, ["resid_pre", "z"], batch_size=4, prefix_cache=False, layer_batch=False)
    assert r.direction == "denoising" and r.axes == {"resid_pre": "position", "z": "head"}
    row0 = r.effects["resid_pre"][0]
    # at layer 0 only position 2 differs: putting it back restores the clean run exactly, the rest do nothing
    assert row0[2] == 1.0 and all(v == 0.0 for i, v in enumerate(row0) if i != 2)
    assert len(r.effects["z"]) == m.n_layers and len(r.effects["z"][0]) == m.n_heads
    assert len(r.tokens) == 6 and r.n_prompts == 4
    # skipping runs whose patch writes equal values (positions 0, 1 everywhere) changes no number
    exact = dict(batch_size=3, prefix_cache=False, layer_batch=False)   # batches of other sizes round differently
    full = activation_patching(m, task, ["resid_pre", "z"], skip_equal=False, **exact)
    skip = activation_patching(m, task, ["resid_pre", "z"], **exact)
    assert skip.raw == full.raw and skip.n_forwards < full.n_forwards and "skipped" in skip.notes[0]
    # all heads of a layer at once are the whole attention output (no projection bias in llama)
    assert torch.equal(patch_metric(m, task, "z.1", direction="noising"),
                       patch_metric(m, task, "attn_out.1", direction="noising"))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_prefix_cache_matches_full_runs(family):
    m = random_model(family)
    task = _task()
    kw = dict(sites=["resid_pre", "mlp_out", "z"], batch_size=3)
    cached, full = activation_patching(m, task, **kw), activation_patching(m, task, prefix_cache=False, **kw)
    assert "prefix cache" in cached.notes[-1] and not any("prefix" in n for n in full.notes)
    for kind in full.raw:
        assert torch.allclose(torch.tensor(cached.raw[kind]), torch.tensor(full.raw[kind]), atol=1e-5), kind
    assert cached.effects["resid_pre"][0][2] == pytest.approx(1.0, abs=5e-5)   # batched layers: float rounding
    assert 0 < cached.seconds < 300                          # the wall time of this call, not a position


def test_unaligned_task_uses_largest_group(tmp_path):
    m = random_model("llama")
    task = _task()
    longer = TaskSet("toy", task.clean + [[1, 2, 3]], task.corrupt + [[1, 2, 4]], task.answer + [1],
                     task.wrong + [2], "logit_diff", 0, {}, [0, 0, 0, 0, 1])
    r = activation_patching(m, longer, ["attn_out"], layers=[-1])
    assert r.rows == [0, 1, 2, 3] and r.n_prompts == 4 and r.layers == [m.n_layers - 1]
    assert "largest group" in r.notes[0]
    path = r.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["direction"] == "denoising" and len(data["effects"]["attn_out"][0]) == 6
    assert r.save(tmp_path / "p.html").read_text().count("<h2>") == 1
    assert "attn_out" in r.summary()


def test_bad_input():
    m = random_model("llama")
    task = _task()
    with pytest.raises(InputError, match="site kinds"):
        activation_patching(m, task, ["neurons"])
    with pytest.raises(InputError, match="direction"):
        activation_patching(m, task, ["z"], direction="sideways")
    with pytest.raises(InputError, match="out of range"):
        activation_patching(m, task, ["z"], layers=[7])
    with pytest.raises(InputError, match="parallel"):
        activation_patching(random_model("gpt_neox"), task, ["resid_mid"])
    with pytest.raises(InputError, match="TaskSet"):
        activation_patching(m, ["a"], ["z"])
    assert not m.has_hooks()


def _pair_file(tmp_path):
    rows = [{"clean": "abcde", "corrupt": "abxde", "answer": "f", "wrong": "g"},
            {"clean": "hijkl", "corrupt": "hiykl", "answer": "m", "wrong": "n"},
            {"clean": "hijk", "corrupt": "hijkl", "answer": "m", "wrong": "n"}]       # unequal: filtered
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_patch_and_task_cli(tmp_path, capsys):
    from lmscope.cli import main
    pairs = _pair_file(tmp_path)
    page = tmp_path / "p.html"
    argv = ["patch", "--pairs", str(pairs), "--model", "random:llama", "--sites", "resid_pre,z", "--json",
            "--html", str(page)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["direction"] == "denoising" and out["n_prompts"] == 2 and out["axes"]["z"] == "head"
    assert out["effects"]["resid_pre"][0][2] == pytest.approx(1.0, abs=1e-5) and page.exists()
    assert main(argv) == 2                                    # the page is never replaced silently
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["task", "--pairs", str(pairs), "--model", "random:llama", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert base["n"] == 2 and base["filtered"] == {"unequal length": 1}
    assert main(["patch", "ioi", "--pairs", str(pairs), "--model", "random:llama"]) == 2
    assert "not both" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["task", "--pairs", str(empty), "--model", "random:llama"]) == 2
    assert capsys.readouterr().err.strip() == f"lmscope: error: pair file {empty} is empty"


def test_prompts_batch_by_their_first_change():
    """Prompts whose first changes alternate (1, 4, 1, 4) in batches of 2: in the task's order every batch shares a
    1-token prefix; ordered by first change the second batch shares 4 tokens, so its patched runs are shorter. The
    numbers are those of the full runs."""
    m = random_model("llama")
    g = torch.Generator().manual_seed(9)
    clean = torch.randint(0, 256, (4, 7), generator=g).tolist()
    firsts = (1, 4, 1, 4)
    corrupt = [row[:f] + [(row[f] + 3) % 256] + row[f + 1:] for row, f in zip(clean, firsts)]
    task = TaskSet("toy", clean, corrupt, [10, 11, 12, 13], [20, 21, 22, 23], "logit_diff", 0, {}, [0] * 4)
    lengths = []
    hook = m.hf.register_forward_pre_hook(lambda mod, a, k: lengths.append(k["input_ids"].shape[1]),
                                          with_kwargs=True)
    try:
        r = activation_patching(m, task, ["z", "mlp_out"], per_position=False, direction="noising", batch_size=2)
    finally:
        hook.remove()
    full = activation_patching(m, task, ["z", "mlp_out"], per_position=False, direction="noising", batch_size=2,
                               prefix_cache=False)
    assert 3 in lengths                          # 7 - 4 positions after the shared 4-token prefix of prompts 2 and 4
    for kind in full.raw:
        torch.testing.assert_close(torch.tensor(r.raw[kind]), torch.tensor(full.raw[kind]), rtol=1e-4, atol=1e-5)
    assert r.tokens == full.tokens == m.to_str_tokens(clean[0])    # the axis shows the task's first prompt


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma3", "sparse_gpt"])
def test_rows_with_their_own_prefixes_give_the_full_runs(family):
    """First changes 2, 6, 6 and the row that changes first the shortest (5 tokens, the others 9), in one batch:
    each row's unchanged tokens go to the prefix cache (6 columns, padding inside the short row) and every patched
    run computes 3 positions, not the 7 after a shared 2-token prefix; the numbers are those of the full runs."""
    m = random_model(family)
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(0, 256, (3, 9), generator=g).tolist()
    clean[0] = clean[0][:5]
    corrupt = [row[:f] + [(row[f] + 13) % 256] + row[f + 1:] for row, f in zip(clean, (2, 6, 6))]
    task = TaskSet("toy", clean, corrupt, [30, 31, 32], [60, 61, 62], "logit_diff", 0, {}, [0] * 3)
    kw = dict(sites=["z", "mlp_out"], per_position=False, direction="noising", batch_size=3)
    lengths = []
    hook = m.hf.register_forward_pre_hook(lambda mod, a, k: lengths.append(k["input_ids"].shape[1]),
                                          with_kwargs=True)
    try:
        r = activation_patching(m, task, **kw)
    finally:
        hook.remove()
    full = activation_patching(m, task, prefix_cache=False, **kw)
    assert sorted(set(lengths)) == [3, 6, 9]       # clean and corrupt runs, the 6-column prefix, the patched runs
    for kind in full.raw:
        torch.testing.assert_close(torch.tensor(r.raw[kind]), torch.tensor(full.raw[kind]), rtol=1e-4, atol=1e-5)
    assert r.clean_metric == pytest.approx(full.clean_metric, rel=1e-5, abs=1e-6)
