"""Harvesting to disk and reading back: exact contents, token accounting, reader semantics, memory, bad input."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lmscope
from conftest import random_model
from lmscope.core.errors import InputError, LmscopeError
from lmscope.harvest import harvest, open_store
from lmscope.harvest.windows import iter_windows, plan_shards, resolve_prefix, unused_documents
from lmscope.core.models.random_models import BOS

CORPUS = "python"  # always installed (the interpreter's standard library)
SITES = ["resid_post.1", "mlp_out.0"]
SMALL = dict(seq_len=32, batch_size=4, shard_tokens=300, progress=False)


def small_harvest(folder, n_tokens=1000, model=None, **kwargs):
    options = dict(SMALL, **kwargs)
    return harvest(model or random_model("llama"), CORPUS, SITES, n_tokens, folder, **options)


def plans(model, n_tokens, seq_len=32, shard_tokens=300, skip_special=True):
    tok = model.tokenizer
    skip = frozenset(tok.all_special_ids) if skip_special else frozenset()
    windows = iter_windows(tok, [CORPUS], seq_len=seq_len, seed=0, prefix=resolve_prefix(tok, "auto"), skip_ids=skip)
    return list(plan_shards(windows, tokens_target=n_tokens, shard_tokens=shard_tokens))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("h") / "run"
    small_harvest(out)
    return out


def test_manifest_and_token_accounting(folder):
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "lmscope-harvest/1" and m["complete"] and m["n_tokens"] == 1000
    assert m["sites"] == {"mlp_out.0": [64], "resid_post.1": [64]} and m["dtype"] == "float16"
    assert m["corpus"] == {"name": CORPUS, "seed": 0, "seq_len": 32, "skip_special": True, "prefix_token": BOS}
    sizes = [s["n_tokens"] for s in m["shards"]]
    assert sum(sizes) == 1000 and all(n >= 300 for n in sizes[:-1]) and len(sizes) == 4
    store = open_store(folder)
    total = 0
    for entry, shard in zip(m["shards"], store.iter_shards(verify=True)):
        n = entry["n_tokens"]
        assert all(t.shape[0] == n for t in shard.values())
        assert shard["window_ids"][0] == entry["first_window"]
        total += n
    assert total == store.n_tokens == 1000 and store.d_in("resid_post.1") == 64 and store.dtype == torch.float16


def test_shard_contents_equal_a_direct_run_of_the_same_windows(folder):
    model = random_model("llama")
    plan = plans(model, 1000)
    shard = load_file(str(folder / "shard_r0_000001.safetensors"))
    batch = plan[1].windows[:4]  # the shard's first batch (batch_size 4)
    run = model.run([list(w.ids) for w in batch], read=SITES)
    keep = torch.zeros(run.input_ids.shape, dtype=torch.bool)
    for row, w in enumerate(batch):
        keep[row, :len(w.ids)] = torch.tensor(w.keep)
    n = int(keep.sum())
    for site in SITES:
        assert torch.equal(shard[f"acts.{site}"][:n], run.acts[site][keep].half())
    assert torch.equal(shard["token_ids"][:n], run.input_ids[keep])
    # the prefix (position 0, the BOS) is never written; every row keeps its own position and window
    assert shard["positions"][:n].min() == 1 and (shard["token_ids"] != BOS).all()
    rows, cols = keep.nonzero(as_tuple=True)
    assert torch.equal(shard["positions"][:n], cols)
    assert shard["window_ids"][:n].tolist() == [batch[r].index for r in rows.tolist()]
    assert shard["doc_ids"][:n].tolist() == [batch[r].doc for r in rows.tolist()]


def test_target_is_exact_and_last_window_is_cut():
    model = random_model("llama")
    plan = plans(model, 1001)
    assert sum(p.n_tokens for p in plan) == 1001
    last = plan[-1].windows[-1]
    full = plans(model, 10_000)
    whole = next(w for p in full for w in p.windows if w.index == last.index)
    assert last.ids == whole.ids[:len(last.ids)] and len(last.ids) < len(whole.ids)


def test_keep_special_writes_the_prefix(tmp_path):
    small_harvest(tmp_path / "k", n_tokens=200, skip_special=False)
    shard = next(open_store(tmp_path / "k").iter_shards())
    first = shard["positions"] == 0
    assert first.any() and (shard["token_ids"][first] == BOS).all()


def test_iter_batches_every_row_once_shuffled_seeded_and_split_by_rank(folder):
    store = open_store(folder)
    stored = torch.cat([s["acts.resid_post.1"] for s in store.iter_shards()]).float()
    ordered = torch.cat(list(store.iter_batches("resid_post.1", 64, shuffle_buffer=0)))
    assert torch.equal(ordered, stored)
    batches = list(store.iter_batches("resid_post.1", 64, shuffle_buffer=200, seed=3))
    assert all(b.dtype == torch.float32 and b.shape[1] == 64 for b in batches)
    assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)
    shuffled = torch.cat(batches)
    assert not torch.equal(shuffled, stored)
    assert torch.equal(_sorted_rows(shuffled), _sorted_rows(stored))
    again = torch.cat(list(store.iter_batches("resid_post.1", 64, shuffle_buffer=200, seed=3)))
    assert torch.equal(again, shuffled)
    parts = [torch.cat(list(store.iter_batches("resid_post.1", 64, rank=r, world_size=2))) for r in (0, 1)]
    sizes = [s["n_tokens"] for s in store.shards]
    assert [len(p) for p in parts] == [sizes[0] + sizes[2], sizes[1] + sizes[3]]
    assert torch.equal(_sorted_rows(torch.cat(parts)), _sorted_rows(stored))
    two = list(store.iter_batches("resid_post.1", 64, shuffle_buffer=0, epochs=2, drop_last=True))
    assert len(two) == 2 * (1000 // 64) and all(len(b) == 64 for b in two)


def _sorted_rows(x):
    # lexicographic row order: sort by each column from the last to the first (stable sorts)
    for col in reversed(range(x.shape[1])):
        x = x[torch.sort(x[:, col], stable=True).indices]
    return x


def test_buffer_memory_does_not_grow_with_the_token_target(tmp_path):
    small = small_harvest(tmp_path / "a", n_tokens=600)
    large = small_harvest(tmp_path / "b", n_tokens=2400)
    assert large.n_shards == 4 * small.n_shards == 8
    assert small.peak_buffer_bytes == large.peak_buffer_bytes
    # one shard at most: shard_tokens plus one window, two float16 sites of 64 and four int64 indices per token
    assert small.peak_buffer_bytes <= (300 + 32) * (2 * 64 * 2 + 4 * 8)


def test_rerun_of_a_complete_harvest_changes_nothing(folder):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = small_harvest(folder)
    assert result.complete and result.shards_computed == 0 and result.n_tokens == 1000
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_folder_holding_another_run_is_refused_untouched(folder, tmp_path):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InputError, match="already holds another harvest.*sites"):
        harvest(random_model("llama"), CORPUS, ["resid_post.0"], 1000, folder, **SMALL)
    with pytest.raises(InputError, match="tokens_target"):
        small_harvest(folder, n_tokens=999)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        small_harvest(stranger)
    assert [p.name for p in stranger.iterdir()] == ["todo.txt"]


def test_unknown_site_or_corpus_fails_before_the_folder_exists(tmp_path):
    with pytest.raises(LmscopeError, match="resid_post.9"):
        harvest(random_model("llama"), CORPUS, ["resid_post.9"], 100, tmp_path / "x", **SMALL)
    with pytest.raises(LmscopeError):
        harvest(random_model("llama"), CORPUS, ["pattern.0"], 100, tmp_path / "x", **SMALL)
    with pytest.raises(InputError, match="unknown corpus"):
        harvest(random_model("llama"), "nope", SITES, 100, tmp_path / "x", **SMALL)
    assert not (tmp_path / "x").exists()


def test_corrupt_shard_is_caught_by_verify(tmp_path):
    small_harvest(tmp_path / "c", n_tokens=700)
    victim = tmp_path / "c" / "shard_r0_000001.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # one byte of activation data: still a readable file
    victim.write_bytes(bytes(data))
    store = open_store(tmp_path / "c")
    assert len(list(store.iter_batches("resid_post.1", 100))) > 0  # without verify nothing notices
    with pytest.raises(InputError, match="shard_r0_000001.safetensors is corrupt"):
        list(store.iter_batches("resid_post.1", 100, verify=True))
    victim.unlink()
    with pytest.raises(InputError, match="missing"):
        open_store(tmp_path / "c")
    with pytest.raises(InputError, match="no manifest"):
        open_store(tmp_path)


def test_check_model_rejects_another_model_or_site(folder):
    store = open_store(folder)
    store.check_model(random_model("llama"), "blocks.1.hook_resid_post")  # an alias of a stored site is fine
    with pytest.raises(InputError, match="another model"):
        store.check_model(random_model("qwen2"), "resid_post.1")
    with pytest.raises(InputError, match="not site 'resid_post.2'"):
        store.check_model(random_model("llama"), "resid_post.2")
    with pytest.raises(InputError, match="not site"):
        next(store.iter_batches("resid_post.0", 8))


def test_float16_overflow_is_a_clear_error(tmp_path):
    model = lmscope.load("random:llama")
    with torch.no_grad():
        model.module(model.adapter.embed).weight.mul_(1e7)
    with pytest.raises(InputError, match="beyond torch.float16's range"):
        harvest(model, CORPUS, ["embed"], 100, tmp_path / "o", **SMALL)
    ok = harvest(model, CORPUS, ["embed"], 100, tmp_path / "p", dtype="float32", **SMALL)
    assert ok.max_abs["embed"] > 65504


def test_unused_documents_are_the_ones_not_read(folder):
    manifest = open_store(folder).manifest
    used = manifest["documents"][CORPUS]
    last_doc = int(torch.cat([s["doc_ids"] for s in open_store(folder).iter_shards()]).max())
    assert used == last_doc + 1  # one corpus: document index = position in the seed order
    from lmscope.data.corpora import iter_documents
    docs = iter_documents(CORPUS, seed=0)
    expected = [d.text for _, d in zip(range(used + 2), docs)][used:]
    held = unused_documents(manifest, CORPUS)
    assert [next(held), next(held)] == expected


def test_cli_help_run_and_refusal(tmp_path):
    from lmscope.cli import main
    out = tmp_path / "cli"
    args = ["harvest", "--model", "random:gpt2", "--corpus", CORPUS, "--sites", "resid_post.2", "--tokens", "150",
            "--out", str(out), "--seq-len", "16", "--shard-tokens", "100", "--json"]
    assert main(args) == 0
    assert open_store(out).n_tokens == 150
    assert main(args[:-3] + ["--dtype", "float32", "--json"]) == 2  # same folder, another dtype
    assert main(["harvest-check", str(out), "--json", "--html", str(tmp_path / "check.html")]) == 0
    page = (tmp_path / "check.html").read_text()
    assert "tokens per shard (150 tokens, 2 shards)" in page and "resid_post.2: log10 of activation norms" in page
    help_text = subprocess.run([sys.executable, "-m", "lmscope.cli", "harvest", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--shard-tokens" in help_text and "--keep-special" in help_text


@pytest.mark.default_model
def test_default_model_harvest_matches_a_direct_read(smollm2, tmp_path):
    result = harvest(smollm2, "python", ["resid_post.12"], 200, tmp_path / "s", seq_len=64, batch_size=4,
                     progress=False)
    shard = next(open_store(tmp_path / "s").iter_shards(verify=True))
    assert result.n_tokens == 200 and open_store(tmp_path / "s").manifest["corpus"]["prefix_token"] == 0
    plan = next(iter(plan_shards(iter_windows(smollm2.tokenizer, ["python"], seq_len=64, seed=0, prefix=0,
                                              skip_ids=frozenset(smollm2.tokenizer.all_special_ids)),
                                 tokens_target=200, shard_tokens=65536)))
    window = plan.windows[0]
    assert window.ids[0] == smollm2.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    run = smollm2.run([list(w.ids) for w in plan.windows[:4]], read=["resid_post.12"], stop_early=True)
    n = len(window.ids) - 1
    assert torch.equal(shard["acts.resid_post.12"][:n], run.acts["resid_post.12"][0, 1:len(window.ids)].half())


def test_result_saves_json_and_html(tmp_path):
    result = small_harvest(tmp_path / "r", n_tokens=700)
    assert result.shard_sizes == [e["n_tokens"] for e in open_store(tmp_path / "r").shards]
    data = json.loads(result.save(tmp_path / "r.json").read_text())
    assert data["n_tokens"] == 700 and data["n_shards"] == 3 and data["complete"] is True
    page = result.save(tmp_path / "r.html").read_text()
    assert "tokens per shard" in page and "plotly" in page.lower()
    assert "700 of 700 tokens in 3 shards" in result.summary()
