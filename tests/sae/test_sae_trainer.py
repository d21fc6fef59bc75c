"""Trainer and data sources: normalisation, decoder constraint, dead latents, schedule, folders, harvest input."""
import json

import pytest
import torch
from conftest import random_model

from lmscope.cli import main
from lmscope.core.errors import InputError
from lmscope.sae import ModelSource, StoreSource, TensorSource, TrainConfig, load_sae, train_sae
from lmscope.sae.trainer import lr_factor


def _data(n=4096, d=16, norm=5.0, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True) * norm


def test_rank_slices_make_up_the_global_batch():
    src = TensorSource(_data(256))
    whole = next(src.batches(64, seed=3))[0]
    parts = [next(src.batches(64, rank=r, world_size=2, seed=3))[0] for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_lr_schedule():
    f = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert f[0] == 0.1 and f[9] == 1.0 and f[50] == 1.0 and f[80] == 1.0 and f[90] == 0.5 and f[99] == 0.05


def test_training_normalises_constrains_and_saves(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), architecture="topk", d_sae=64, k=4, n_tokens=64 * 40,
                      batch_size=64, lr=1e-3, outlier_factor=0)
    result = train_sae(cfg, TensorSource(_data()), progress=False)
    sae = result.sae
    assert float(sae.input_scale) == pytest.approx(0.2, rel=1e-5)      # every row has norm 5
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert result.n_steps == 40 and result.n_tokens == 2560
    assert result.history[-1]["fvu"] < result.history[0]["fvu"]
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["cfg.json", "sae.safetensors", "train.json", "train_config.json"]
    back = load_sae(tmp_path / "run")
    x = _data(8, seed=9)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert json.loads((tmp_path / "run" / "train.json").read_text())["n_steps"] == 40


def test_dead_latents_are_counted():
    # k=1 and 32 rows per step: at most 32 of 64 latents fire in a step, so with a one-batch window >= half are dead
    cfg = TrainConfig(architecture="topk", d_sae=64, k=1, n_tokens=32 * 10, batch_size=32, dead_tokens=32,
                      outlier_factor=0)
    result = train_sae(cfg, TensorSource(_data()), progress=False)
    assert all(h["dead_frac"] >= 0.5 for h in result.history)
    never = TrainConfig(architecture="topk", d_sae=64, k=1, n_tokens=32 * 10, batch_size=32, dead_tokens=10 ** 9,
                        outlier_factor=0)
    assert all(h["dead_frac"] == 0 for h in train_sae(never, TensorSource(_data()), progress=False).history)


def test_outlier_rows_are_left_out():
    x = _data(2048)
    x[::100] *= 1000                       # attention-sink-like rows
    cfg = TrainConfig(architecture="topk", d_sae=32, k=2, n_tokens=256 * 4, batch_size=256, outlier_factor=10)
    result = train_sae(cfg, TensorSource(x), progress=False)
    assert result.sae.cfg.max_norm == pytest.approx(50.0, rel=1e-4)
    assert result.final["outlier_rows_dropped"] > 0
    assert float(result.sae.input_scale) == pytest.approx(0.2, rel=1e-4)


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu"])
def test_other_architectures_train(arch):
    from lmscope.sae import SyntheticFeatures
    x, _ = SyntheticFeatures(32, 16, 3, seed=1).sample(4096, torch.Generator().manual_seed(0))
    cfg = TrainConfig(architecture=arch, d_sae=64, k=4, n_tokens=128 * 40, batch_size=128, lr=3e-3, l1_coeff=0.01,
                      l0_coeff=1e-4, outlier_factor=0)
    result = train_sae(cfg, TensorSource(x), progress=False)
    assert result.history[-1]["fvu"] < 0.7 * result.history[0]["fvu"]


def test_an_occupied_output_folder_is_refused_untouched(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cfg.json").write_text("another run")
    cfg = TrainConfig(out=str(tmp_path / "run"), d_sae=32, n_tokens=128, batch_size=64)
    with pytest.raises(InputError, match="not empty"):
        train_sae(cfg, TensorSource(_data()), progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["cfg.json"]
    assert (tmp_path / "run" / "cfg.json").read_text() == "another run"


def test_model_source_leaves_out_the_prefix_position():
    model = random_model("llama")
    src = ModelSource(model, "resid_post.1", "wiki", windows_per_pass=4)
    rows = next(src.rows(n_tokens=400))
    from lmscope.sae.data import iter_prefixed_windows
    from lmscope.data.corpora import iter_documents
    windows = list(iter_prefixed_windows(model.tokenizer, (d.text for d in iter_documents("wiki")), n_tokens=400))
    assert rows.shape == (sum(len(w) - 1 for w in windows[:4]), model.d_model)
    ids, _ = model.encode(windows[:4])
    want = model.run(ids, read=["resid_post.1"])["resid_post.1"][0, 1:len(windows[0])]
    assert torch.equal(rows[:len(windows[0]) - 1], want)


@pytest.fixture(scope="module")
def tiny_harvest(tmp_path_factory):
    from lmscope.harvest import harvest
    out = tmp_path_factory.mktemp("h") / "harvest"
    harvest(random_model("llama"), "wiki", ["resid_post.1", "resid_mid.1", "mlp_out.1"], 3000, out,
            shard_tokens=1000, progress=False)
    return out


def test_training_from_a_harvest_and_a_transcoder(tiny_harvest, tmp_path):
    from lmscope.harvest import open_store
    store = open_store(tiny_harvest)
    cfg = TrainConfig(architecture="topk", d_sae=128, k=8, n_tokens=256 * 8, batch_size=256, outlier_factor=0)
    result = train_sae(cfg, StoreSource(store, "resid_post.1", buffer=1024), progress=False)
    assert result.n_steps == 8 and result.sae.cfg.model == "random:llama"
    tc = train_sae(cfg, StoreSource(store, "resid_mid.1", "mlp_out.1", buffer=1024), progress=False)
    assert tc.sae.is_transcoder and tc.sae.cfg.site_out == "mlp_out.1"


def test_cli_refuses_shards_of_another_model_or_site(tiny_harvest, tmp_path, capsys):
    out = tmp_path / "new"
    base = ["sae", "train", "--harvest", str(tiny_harvest), "--out", str(out), "--n-tokens", "512",
            "--batch-size", "256", "--d-sae", "64"]
    assert main(base + ["--model", "random:qwen2", "--site", "resid_post.1"]) == 2
    assert "another model" in capsys.readouterr().err
    assert main(base + ["--model", "random:llama", "--site", "resid_post.0"]) == 2
    assert "not site 'resid_post.0'" in capsys.readouterr().err
    assert not out.exists()
    assert main(base + ["--model", "random:llama", "--site", "resid_post.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_steps"] == 2
    assert main(base + ["--model", "random:llama", "--site", "resid_post.1"]) == 2
    assert "not empty" in capsys.readouterr().err
