"""Evaluation, feature statistics, dashboards and steering, pinned with SAEs whose behaviour is known exactly."""
import pytest
import torch
from conftest import random_model

from lmscope.cli import main
from lmscope.core.errors import InputError
from lmscope.sae import SAEConfig, build_sae, evaluate_sae, feature_stats, sae_steer, save_sae, write_dashboards
from lmscope.core.fingerprint import config_sha256
from lmscope.sae.steer import steering_delta

TEXTS = ["The cat sat on the mat and looked at the door for a long time.",
         "Paris is the capital of France, a country in western Europe with a long history.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]


def _sae(model, kind, site="resid_post.1"):
    """'identity': latents relu(x_i), relu(-x_i): reconstructs exactly. 'zero': predicts 0. 'mean': predicts b_dec."""
    d = model.d_model
    sae = build_sae(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, site_in=site, model=model.spec,
                              model_config_hash=config_sha256(model)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0) if kind == "identity" else torch.zeros(2 * d, d))
    return sae.eval()


def test_perfect_and_null_saes_give_the_known_end_points():
    model = random_model("llama")
    perfect = evaluate_sae(model, _sae(model, "identity"), TEXTS, progress=False)
    assert perfect.fvu < 1e-10 and perfect.kl < 1e-8
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert perfect.ce_recovered_mean == pytest.approx(1.0, abs=1e-4)
    assert perfect.n_tokens == perfect.n_spliced == sum(len(model.tokenizer(t, add_special_tokens=False)
                                                            ["input_ids"]) for t in TEXTS)
    null = evaluate_sae(model, _sae(model, "zero"), TEXTS, progress=False)
    assert null.ce_sae == pytest.approx(null.ce_zero, abs=1e-6) and null.ce_recovered == pytest.approx(0, abs=1e-5)
    assert null.fvu > 1 and null.kl == pytest.approx(null.kl_zero, abs=1e-6)
    assert perfect.ce_clean == null.ce_clean and perfect.ce_zero == null.ce_zero


def test_mean_ablation_end_point():
    model = random_model("llama")
    probe = evaluate_sae(model, _sae(model, "identity"), TEXTS, progress=False)
    mean_sae = _sae(model, "zero")
    # the mean over the evaluated tokens, computed independently
    from lmscope.sae.data import token_windows
    windows = token_windows(model.tokenizer, TEXTS, n_tokens=10 ** 6)
    rows = [model.run(torch.tensor([w]), read=["resid_post.1"])["resid_post.1"][0, 1:] for w in windows]
    with torch.no_grad():
        mean_sae.b_dec.copy_(torch.cat(rows).double().mean(0).float())
    r = evaluate_sae(model, mean_sae, TEXTS, progress=False)
    assert r.ce_sae == pytest.approx(r.ce_mean, abs=1e-5) and r.ce_recovered_mean == pytest.approx(0, abs=1e-3)
    assert r.fvu == pytest.approx(1.0, abs=1e-5)
    assert probe.ce_mean == pytest.approx(r.ce_mean, abs=1e-9)


def test_feature_stats_match_a_direct_computation(tmp_path):
    model = random_model("llama")
    sae = _sae(model, "identity")
    stats = feature_stats(model, sae, TEXTS, k=3, progress=False)
    from lmscope.sae.data import token_windows
    windows = token_windows(model.tokenizer, TEXTS, n_tokens=10 ** 6)
    x = torch.cat([model.run(torch.tensor([w]), read=["resid_post.1"])["resid_post.1"][0, 1:] for w in windows])
    assert stats.n_tokens == len(x)
    assert torch.equal(stats.count[:model.d_model], (x > 0).sum(0))
    assert torch.allclose(stats.top_values[:, 0][:model.d_model], x.max(0).values.clamp_min(0))
    f = stats.feature(3)
    best = int(x[:, 3].argmax())
    assert f.contexts[0].value == pytest.approx(float(x[best, 3]))
    assert f.contexts[0].acts[f.contexts[0].centre] == pytest.approx(float(x[best, 3]), abs=1e-4)
    w_u = model.module(model.adapter.lm_head).weight
    gain = model.module(model.adapter.final_norm).weight
    top = int((w_u @ (gain * torch.eye(model.d_model)[3])).argmax())
    assert f.promoted[0][0] == model.tokenizer.decode([top])
    result = write_dashboards(stats, tmp_path / "dash", [3, 70])
    assert sorted(p.name for p in (tmp_path / "dash").iterdir()) == ["feature_3.html", "feature_70.html",
                                                                      "index.html"]
    assert "feature_70.html" in (tmp_path / "dash" / "index.html").read_text()
    with pytest.raises(InputError, match="not empty"):
        write_dashboards(stats, tmp_path / "dash", [3])
    assert result.latents == [3, 70]


def test_steering_keeps_the_error_term():
    model = random_model("llama")
    sae = _sae(model, "zero")      # reconstructs nothing: everything is error, and must survive
    x = torch.randn(2, 5, model.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec[7] = torch.arange(model.d_model, dtype=torch.float32)
    delta = steering_delta(sae, x, 7, 2.5, "add")
    assert torch.allclose(delta, 2.5 * sae.W_dec[7].expand_as(x))
    clamped = steering_delta(sae, x, 7, 1.0, "clamp")
    # decode(z') - decode(z) subtracts two vectors of size ~60: absolute, not relative, float32 rounding
    assert torch.allclose(clamped, (1.0 - torch.relu(x[..., 7:8])) * sae.W_dec[7], atol=1e-4)
    same = sae_steer(model, sae, "Hello there", 7, 0.0, max_new_tokens=4)
    assert same.steered == same.clean
    assert not model.has_hooks()


def test_cli_eval_json_and_bad_sae(tmp_path, capsys):
    import json
    model = random_model("llama")
    save_sae(_sae(model, "identity"), tmp_path / "s")
    assert main(["sae", "eval", str(tmp_path / "s"), "--model", "random:llama", "--tokens", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"fvu", "l0", "dead_frac", "ce_recovered", "kl", "n_tokens"} <= set(out) and out["n_tokens"] == 300
    assert out["fvu"] < 1e-10
    assert main(["sae", "eval", str(tmp_path / "s"), "--model", "random:gpt2", "--tokens", "300"]) == 2
    assert "another model" in capsys.readouterr().err


def test_feature_histogram_shows_the_bins_the_latent_reaches():
    from lmscope.sae.dashboard import feature_histogram
    from lmscope.sae.features import LOG_EDGES, Feature
    edges = [float(e) for e in LOG_EDGES]
    counts = [0] * (len(edges) + 1)
    counts[20], counts[22] = 5, 7                       # the underflow bin is counts[0]; bin i+1 starts at edges[i]
    fig = feature_histogram(Feature(7, 0.1, 0.1, 0.2, {"log10_edges": edges, "counts": counts}, [], [], []))
    bar = fig.data[0]
    assert list(bar.y) == [0, 5, 0, 7, 0]               # one empty bin either side of the used range
    assert bar.x[1] == f"{10 ** edges[19]:.3g}" and sum(bar.y) == 12
    empty = feature_histogram(Feature(8, 0.0, 0.0, 0.0, {"log10_edges": edges, "counts": [0] * len(counts)},
                                      [], [], []))
    assert len(empty.data[0].y) == len(counts)          # a latent that never fired: every bin, all zero
