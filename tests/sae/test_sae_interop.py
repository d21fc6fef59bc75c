"""Saving and loading SAEs: lmscope's format, SAELens and sparsify folders written by hand with known weights."""
import json

import pytest
import torch
from conftest import random_model
from safetensors.torch import save_file

from lmscope.core.errors import InputError
from lmscope.sae import SAEConfig, build_sae, detect_format, load_sae, save_sae


def _weights(d_in, d_sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
            "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_roundtrip_is_exact(tmp_path, arch):
    sae = build_sae(SAEConfig(architecture=arch, d_in=8, d_sae=16, k=3, input_scale=0.25, output_scale=0.25,
                              site_in="resid_post.1", model="random:llama"))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if arch == "batchtopk":
        sae.threshold.fill_(0.3)
    sae.eval()
    save_sae(sae, tmp_path / "s")
    assert detect_format(tmp_path / "s") == "lmscope"
    back = load_sae(tmp_path / "s")
    x = torch.randn(10, 8)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x).recon, sae(x).recon)
    assert back.cfg.site_in == "resid_post.1" and float(back.input_scale) == 0.25


def test_saelens_jumprelu_folder(tmp_path):
    w = _weights(8, 16)
    w["threshold"] = torch.rand(16)
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "architecture": "jumprelu",
                                                   "hook_name": "blocks.1.hook_resid_post",
                                                   "apply_b_dec_to_input": False,
                                                   "normalize_activations": "none", "model_name": "x"}))
    sae = load_sae(tmp_path)
    assert detect_format(tmp_path) == "saelens" and sae.cfg.site_in == "resid_post.1"
    x = torch.randn(4, 8)
    pre = x @ w["W_enc"] + w["b_enc"]                         # no b_dec subtraction (apply_b_dec_to_input False)
    want = torch.relu(pre) * (torch.relu(pre) > w["threshold"])
    assert torch.allclose(sae.encode(x), want, atol=1e-5)
    assert torch.allclose(sae.decode(want), want @ w["W_dec"] + w["b_dec"], atol=1e-5)


def test_saelens_topk_and_standard(tmp_path):
    w = _weights(8, 16, seed=1)
    for arch, extra in (("topk", {"activation_fn_kwargs": {"k": 4}}), ("standard", {})):
        folder = tmp_path / arch
        folder.mkdir()
        save_file(w, str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "architecture": arch,
                                                     "hook_name": "blocks.0.hook_resid_pre", **extra}))
        sae = load_sae(folder)
        x = torch.randn(4, 8)
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        z = sae.encode(x)
        if arch == "topk":
            assert ((z > 0).sum(1) <= 4).all()
            top = pre.topk(4, dim=1)
            assert torch.allclose(z.gather(1, top.indices), torch.relu(top.values), atol=1e-5)
        else:
            assert torch.allclose(z, torch.relu(pre), atol=1e-5)


def test_sparsify_folder(tmp_path):
    folder = tmp_path / "layers.2"
    folder.mkdir()
    w = _weights(8, 24, seed=2)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "expansion_factor": 3, "k": 5, "num_latents": 0}))
    sae = load_sae(folder)
    assert detect_format(folder) == "sparsify"
    assert (sae.cfg.d_sae, sae.cfg.k, sae.cfg.site_in) == (24, 5, "resid_post.2")
    x = torch.randn(3, 8)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(5, dim=1)
    assert torch.allclose(sae.encode(x).gather(1, top.indices), torch.relu(top.values), atol=1e-5)


def test_d_in_mismatch_is_one_clear_error(tmp_path):
    w = _weights(8, 16)
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 9, "d_sae": 16, "architecture": "standard",
                                                   "hook_name": "blocks.0.hook_resid_post"}))
    with pytest.raises(InputError, match="d_in mismatch"):
        load_sae(tmp_path)
    # right shapes, wrong model: random:llama has d_model 64, the SAE reads 8
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "architecture": "standard",
                                                   "hook_name": "blocks.0.hook_resid_post"}))
    with pytest.raises(InputError, match="d_in mismatch"):
        load_sae(tmp_path, model=random_model("llama"))


def test_sae_from_another_model_is_refused(tmp_path):
    from lmscope.core.fingerprint import config_sha256
    llama, qwen = random_model("llama"), random_model("qwen2")
    assert llama.d_model == qwen.d_model
    sae = build_sae(SAEConfig(architecture="topk", d_in=llama.d_model, d_sae=32, k=2, site_in="resid_post.0",
                              model=llama.spec, model_config_hash=config_sha256(llama)))
    save_sae(sae, tmp_path / "s")
    load_sae(tmp_path / "s", model=llama)
    with pytest.raises(InputError, match="another model"):
        load_sae(tmp_path / "s", model=qwen)


def test_not_an_sae_folder(tmp_path):
    with pytest.raises(InputError, match="cfg.json"):
        load_sae(tmp_path)
