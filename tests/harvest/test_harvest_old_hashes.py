"""Harvest folders, SAE folders and circuit files written before the config hash moved to lmscope.core.fingerprint
hold the hash as it was computed then; they must keep loading for their own model and keep being refused for
another."""
import hashlib
import json

import pytest

from conftest import random_model
from lmscope.circuits import CircuitFile, load_circuit
from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256
from lmscope.harvest import harvest, open_store
from lmscope.sae import SAEConfig, build_sae, load_sae, save_sae

OLD_HARVEST_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype",
                    "_attn_implementation", "_attn_implementation_internal", "use_cache")
OLD_CIRCUIT_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "architectures")


def old_hash(model, keys) -> str:
    """The formula the harvest (and SAE) and circuit files used before issue 12's layout, written out here."""
    config = {k: v for k, v in model.hf.config.to_dict().items() if k not in keys}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def test_the_hash_changed_so_old_files_need_the_fallback():
    m = random_model("llama")
    assert old_hash(m, OLD_HARVEST_KEYS) != config_sha256(m)
    assert old_hash(m, OLD_CIRCUIT_KEYS)[:16] != config_sha256(m)[:16]


def test_old_harvest_manifest_still_matches_and_resumes(tmp_path):
    m, other = random_model("llama"), random_model("qwen2")
    out = tmp_path / "h"
    harvest(m, "python", ["resid_post.1"], 60, out, seq_len=16, shard_tokens=40, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_config_hash"] == config_sha256(m)
    manifest["model_config_hash"] = old_hash(m, OLD_HARVEST_KEYS)
    (out / "manifest.json").write_text(json.dumps(manifest))
    open_store(out).check_model(m, "resid_post.1")
    with pytest.raises(InputError, match="another model"):
        open_store(out).check_model(other)
    again = harvest(m, "python", ["resid_post.1"], 60, out, seq_len=16, shard_tokens=40, progress=False)
    assert again.shards_skipped == 2 and again.shards_computed == 0


def test_old_sae_and_circuit_files_still_load(tmp_path):
    m, other = random_model("llama"), random_model("qwen2")
    cfg = SAEConfig(architecture="topk", d_in=m.d_model, d_sae=32, k=4, model=m.spec, site_in="resid_post.1",
                    model_config_hash=old_hash(m, OLD_HARVEST_KEYS))
    folder = save_sae(build_sae(cfg), tmp_path / "sae")
    assert load_sae(folder, model=m).cfg.model_config_hash == cfg.model_config_hash
    cfg.model_config_hash = old_hash(other, OLD_HARVEST_KEYS)
    with pytest.raises(InputError, match="another model"):
        load_sae(save_sae(build_sae(cfg), tmp_path / "sae2"), model=m)
    circuit = CircuitFile(m.spec, old_hash(m, OLD_CIRCUIT_KEYS)[:16], m.n_layers, m.n_heads, "toy", "prune", "mean",
                          [[1, 2]], [0])
    path = circuit.save(tmp_path / "c.json")
    assert load_circuit(path, m).heads == [[1, 2]]
    circuit.config_hash = old_hash(other, OLD_CIRCUIT_KEYS)[:16]
    with pytest.raises(InputError, match="is a circuit of"):
        load_circuit(circuit.save(tmp_path / "c2.json"), m)
