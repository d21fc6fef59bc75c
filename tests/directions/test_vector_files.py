"""Vector files: safetensors + JSON metadata, loaded back with checks against the model."""
import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_model
from lmscope.directions.contrast import contrast
from lmscope.directions.vector_files import Direction
from lmscope.core.errors import InputError
from lmscope.core.fingerprint import config_sha256
from lmscope.directions.vector_files import load_vector, read_metadata, save_vector


@pytest.fixture(scope="module")
def direction():
    m = random_model("llama")
    return contrast(m, ["good day", "fine time"], ["bad day", "sad time"], layers=[2], probe=False).direction(2)


def test_round_trip_keeps_vector_and_metadata(direction, tmp_path):
    path = save_vector(tmp_path / "v.safetensors", direction)
    meta = read_metadata(path)
    assert meta["model"] == "random:llama" and meta["site"] == "resid_post.2" and meta["layer"] == 2
    assert meta["d_model"] == 64 and meta["method"] == "dom" and meta["prompt_sha256"] == direction.prompt_sha256
    assert meta["position"] == -1 and meta["lmscope_version"]
    m = random_model("llama")
    back = load_vector(path, m)
    assert torch.equal(back.vector, direction.vector.float()) and back.vector.dtype == m.dtype
    assert back.site == direction.site and back.resid_norm == pytest.approx(direction.resid_norm)
    assert load_vector(path).model == "random:llama"          # no model: no checks, metadata only


def test_existing_file_is_never_overwritten_silently(direction, tmp_path):
    path = save_vector(tmp_path / "v.safetensors", direction)
    before = path.read_bytes()
    other = Direction(direction.vector * 2, direction.site, -1, 2, 2, 0.0, "dom", "random:llama")
    with pytest.raises(InputError, match="exists"):
        save_vector(path, other)
    assert path.read_bytes() == before
    save_vector(path, other, overwrite=True)
    assert torch.equal(load_vector(path).vector, direction.vector.float() * 2)


def test_wrong_model_size_or_layer_one_clear_error(direction, tmp_path):
    path = save_vector(tmp_path / "v.safetensors", direction)
    qwen = random_model("qwen2")
    with pytest.raises(InputError, match=r"belongs to another model \(random:llama"):
        load_vector(path, qwen)
    assert load_vector(path, qwen, allow_other_model=True).site == "resid_post.2"
    small = Direction(torch.ones(32), "resid_post.1", -1, 1, 1, 0.0, "dom", "random:llama")
    with pytest.raises(InputError, match="d_model 32"):
        load_vector(save_vector(tmp_path / "small.safetensors", small), random_model("llama"))
    deep = Direction(torch.ones(64), "resid_post.7", -1, 1, 1, 0.0, "dom", "random:llama",
                     config_sha256=config_sha256(random_model("llama")))
    with pytest.raises(InputError, match="site does not exist"):
        load_vector(save_vector(tmp_path / "deep.safetensors", deep), random_model("llama"))
    assert not random_model("llama").has_hooks()


def test_damaged_or_foreign_files_refused(direction, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(foreign))
    with pytest.raises(InputError, match="not a lmscope vector file"):
        load_vector(foreign)
    meta = read_metadata(save_vector(tmp_path / "v.safetensors", direction))
    meta["norm"] *= 2
    tampered = tmp_path / "t.safetensors"
    save_file({"vector": direction.vector.float()}, str(tampered), metadata={"lmscope": json.dumps(meta)})
    with pytest.raises(InputError, match="was changed"):
        load_vector(tampered)
    with pytest.raises(InputError, match="not found"):
        load_vector(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="must end in .safetensors"):
        save_vector(tmp_path / "v.pt", direction)
    with pytest.raises(InputError, match="non-zero"):
        save_vector(tmp_path / "z.safetensors", Direction(torch.zeros(64), "resid_post.0", -1, 1, 1, 0.0))
    assert not (tmp_path / "z.safetensors").exists()


@pytest.mark.default_model
def test_default_model_vector_checks(smollm2, tmp_path):
    d = contrast(smollm2, ["I love it."], ["I hate it."], layers=[4], probe=False).direction(4)
    path = d.save(tmp_path / "s.safetensors")
    assert load_vector(path, smollm2).vector.shape == (576,)
    with pytest.raises(InputError, match="d_model 576"):
        load_vector(path, random_model("llama"), allow_other_model=True)
