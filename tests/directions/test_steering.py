"""Steering: add / subtract / clamp / ablate, positions during generation, side-by-side runs, dose-response."""
import pytest
import torch

from conftest import plain_logits, random_model
from lmscope.directions.vector_files import Direction
from lmscope.core.errors import InputError
from lmscope.directions.steering import ablation_edits, steer, steering_edits
from lmscope.directions.steering_eval import kl_cost, steering_dose_response


def _direction(model, layer=1, seed=0):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    return Direction(v, f"resid_post.{layer}", -1, 1, 1, float(v.norm()), "dom", model.spec, None, 3.0)


def test_adding_a_zero_vector_is_the_identity(model, ids):
    zero = Direction(torch.zeros(model.d_model), "resid_post.1", -1, 1, 1, 0.0)
    edits = steering_edits(model, zero, coef=5.0)
    assert torch.equal(model.run(ids, edits=edits).logits, plain_logits(model, ids))
    prompt = [list(range(40, 46))]
    assert model.generate_rows(prompt, edits, max_new_tokens=5) == model.generate_rows(prompt, max_new_tokens=5)


def test_ablation_leaves_no_component_anywhere(model, ids):
    d = _direction(model)
    u = d.vector.double() / d.vector.double().norm()
    read = ["resid_pre.*", "resid_mid.*", "resid_post.*"]
    clean = model.run(ids, read=read)
    run = model.run(ids, read=read, edits=ablation_edits(model, d))
    for site, act in run.acts.items():
        along = (act.double() @ u).abs().max()
        assert along < 1e-5 * act.double().norm(dim=-1).max(), site
        assert (clean.acts[site].double() @ u).abs().max() > 1e-3, site   # there was something to remove
    assert not torch.equal(run.logits, plain_logits(model, ids))


def test_add_subtract_clamp_at_the_site():
    m = random_model("llama")
    d = _direction(m)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    clean = m.run(ids, read=["resid_post.1"]).acts["resid_post.1"]
    added = m.run(ids, read=["resid_post.1"], edits=steering_edits(m, d, coef=2.0)).acts["resid_post.1"]
    torch.testing.assert_close(added, clean + 2 * d.vector, rtol=0, atol=1e-6)
    sub = m.run(ids, edits=steering_edits(m, d, mode="subtract", coef=2.0)).logits
    assert torch.equal(sub, m.run(ids, edits=steering_edits(m, d, coef=-2.0)).logits)
    clamped = m.run(ids, read=["resid_post.1"], edits=steering_edits(m, d, mode="clamp", coef=0.5)).acts["resid_post.1"]
    u = d.vector / d.vector.norm()
    target = 0.5 * float(d.vector.norm())
    torch.testing.assert_close(clamped @ u, torch.full(clean.shape[:2], target), rtol=0, atol=1e-4)
    torch.testing.assert_close(clamped - (clamped @ u)[..., None] * u, clean - (clean @ u)[..., None] * u,
                               rtol=0, atol=1e-5)
    other = steering_edits(m, d, layers=[0, 2], site_kind="resid_pre")
    assert [e.site for e in other] == ["resid_pre.0", "resid_pre.2"]


def test_prompt_and_generated_positions():
    m = random_model("qwen2")
    d = _direction(m)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(2))
    clean = m.run(ids, read=["resid_post.1"]).acts["resid_post.1"]
    for mode, changed in (("prompt", slice(0, 6)), ("generated", slice(6, None))):
        got = m.run(ids, read=["resid_post.1"],
                    edits=steering_edits(m, d, coef=1.0, positions=mode, prompt_length=6)).acts["resid_post.1"]
        mask = torch.zeros(9, dtype=torch.bool)
        mask[changed] = True
        assert torch.equal(got[0, ~mask], clean[0, ~mask])
        torch.testing.assert_close(got[0, mask], clean[0, mask] + d.vector, rtol=0, atol=1e-6)
    # during generation, "generated" leaves the prompt (and so the first new token) untouched, "all" does not
    row = [ids[0].tolist()]
    gen = m.generate_rows(row, steering_edits(m, d, coef=30.0, positions="generated", prompt_length=9),
                          max_new_tokens=6)
    base = m.generate_rows(row, max_new_tokens=6)
    assert gen[0][:1] == base[0][:1]
    prompt_only = m.run(ids, edits=steering_edits(m, d, coef=30.0, positions="generated", prompt_length=9)).logits
    assert torch.equal(prompt_only, plain_logits(m, ids))


def test_steer_side_by_side_coefficient_zero_is_clean():
    m = random_model("llama")
    d = _direction(m)
    r = steer(m, ["hello", "the cat", "ab"], d, coefs=[-3, 0, 3], max_new_tokens=4, scorer=len, score_name="len")
    assert r.coefs == [-3.0, 0.0, 3.0] and len(r.texts) == 3 and len(r.texts[1]) == 3
    assert r.texts[1] == [m.generate_rows([m.tokenizer(p)["input_ids"]], max_new_tokens=4)[0]
                          for p in ["hello", "the cat", "ab"]]
    assert r.scores[1] == [float(len(t)) for t in r.texts[1]]
    ab = steer(m, ["hello"], d, mode="ablate", max_new_tokens=3)
    assert ab.coefs == [0.0, 1.0] and "attn_out" in ab.site
    assert "coef" in r.summary() and r.to_json()["mean_scores"] == r.mean_scores()
    assert not m.has_hooks()


def test_dose_response_and_kl():
    m = random_model("llama")
    d = _direction(m)
    rows = [list(range(30, 50)), list(range(60, 70))]
    assert kl_cost(m, [], rows) == 0.0
    assert kl_cost(m, steering_edits(m, d, coef=2.0), rows) > 0
    r = steering_dose_response(m, d, ["hello", "abc"], coefs=[-2, 0, 2], max_new_tokens=3, kl_tokens=40, scale="resid")
    assert r.kl[1] == 0.0 and r.kl[0] > 0 and r.kl[2] > 0 and r.unit_norm == pytest.approx(3.0)
    assert r.kl_tokens == 40 and len(r.scores) == 3 and "KL" in r.summary()


@pytest.mark.parametrize("call, message", [
    (lambda m, d: steering_edits(m, torch.ones(12)), "needs \\[64\\]"),
    (lambda m, d: steering_edits(m, d, mode="push"), "mode must be"),
    (lambda m, d: steering_edits(m, d, positions="middle"), "positions must be"),
    (lambda m, d: steering_edits(m, d, positions="prompt"), "needs the prompt length"),
    (lambda m, d: steering_edits(m, d, layers=[3]), "out of range"),
    (lambda m, d: steering_edits(m, d, coef=float("nan")), "finite"),
    (lambda m, d: steering_edits(m, d.vector), "give layers="),
    (lambda m, d: steer(m, [], d), "empty"),
    (lambda m, d: steer(m, ["hi"], d, scale="huge"), "scale must be"),
    (lambda m, d: steer(m, ["hi"], Direction(torch.ones(8), "resid_post.0", -1, 1, 1, 1.0)), "needs \\[64\\]"),
])
def test_bad_input_one_clear_error(call, message):
    m = random_model("llama")
    with pytest.raises(InputError, match=message):
        call(m, _direction(m))
    assert not m.has_hooks()


def test_cli_extract_steer_sweep_orthogonalize(tmp_path, capsys):
    import json

    from lmscope.cli import main
    vec = tmp_path / "v.safetensors"
    assert main(["direction", "extract", "formality", "--model", "random:llama", "--layers", "1,2", "--no-probe",
                 "--save", str(vec), "--layer", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"] == [1, 2] and out["n_positive"] == 48 and vec.is_file()
    assert main(["steer", "hello", "--vector", str(vec), "--model", "random:llama", "--coefs=-2,0,2",
                 "--max-new-tokens", "3", "--score", "sentiment", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["coefs"] == [-2.0, 0.0, 2.0] and out["site"] == "resid_post.1" and len(out["texts"]) == 3
    assert main(["steer", "hello", "--vector", str(vec), "--model", "random:qwen2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-other-model" in err
    assert main(["direction", "extract", "formality", "--model", "random:llama", "--save", str(vec),
                 "--layer", "1", "--no-probe"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["direction", "sweep", "sentiment", "--model", "random:llama", "--layers", "0", "--tokens", "a",
                 "--n-eval", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_eval"] == [2, 2, 2]
    assert main(["direction", "orthogonalize", "--vector", str(vec), "--out", str(tmp_path / "o"),
                 "--model", "random:llama"]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()
