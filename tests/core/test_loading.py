import os
import subprocess
import sys
from pathlib import Path

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
