import json

import pytest
import torch

from conftest import random_model
from lmscope.core.errors import InputError
from lmscope.lenses.patchscope import patch_edit, patchscope, placeholder_position


def test_identical_state_leaves_generation_unchanged():
    m = random_model("llama")
    template = "ab -> ab; x ->"
    tpos = placeholder_position(m, template, "x")
    assert m.to_str_tokens(m.encode(template)[0])[tpos] == "x"
    # source = the template itself at the placeholder: the patch writes back the same state
    r = patchscope(m, template, position=tpos, template=template, placeholder="x", layers=[0, 2],
                   max_new_tokens=5)
    assert [c.text for c in r.cells] == [r.unpatched, r.unpatched]
    assert r.source_token == "x" and r.target_position == tpos


def test_patch_changes_exactly_that_position():
    m = random_model("llama")
    template = "ab -> ab; x ->"
    tpos = placeholder_position(m, template, "x")
    src = m.run("zzzz", read=["resid_post.1"]).acts["resid_post.1"][0, -1]
    clean = m.run(template, read=["resid_post.1", "resid_post.2"]).acts
    patched = m.run(template, edits=[patch_edit(1, src, tpos)], read=["resid_post.1", "resid_post.2"]).acts
    assert torch.equal(patched["resid_post.1"][0, tpos], src)
    keep = [p for p in range(clean["resid_post.1"].shape[1]) if p != tpos]
    assert torch.equal(patched["resid_post.1"][0, keep], clean["resid_post.1"][0, keep])
    # later layers: positions before the patch are untouched, positions after it see the new state
    assert torch.equal(patched["resid_post.2"][0, :tpos], clean["resid_post.2"][0, :tpos])
    assert not torch.allclose(patched["resid_post.2"][0, tpos + 1:], clean["resid_post.2"][0, tpos + 1:])


def test_grid_and_decoded_flag():
    m = random_model("gpt2")
    r = patchscope(m, "hello", layers=[0, 1], target_layers=[1, 2], max_new_tokens=2)
    assert [(c.source_layer, c.target_layer) for c in r.cells] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert r.source_token == "o"
    for c in r.cells:
        assert c.decoded == c.text.strip().lower().startswith("o")
    j = json.loads(json.dumps(r.to_json()))
    assert j["decoded_source_layers"] == r.decoded_layers() and len(j["cells"]) == 4
    assert "source token decoded" in r.summary()
    grid = r.figure().data[0]                                   # a source x target grid
    assert list(grid.x) == ["src 0", "src 1"] and list(grid.y) == ["tgt 1", "tgt 2"]


def test_one_target_per_source_is_one_readable_column():
    m = random_model("gpt2")
    r = patchscope(m, "hello", layers=[0, 1, 2], max_new_tokens=2)             # the same layer: the diagonal
    column = r.figure().data[0]
    assert list(column.x) == ["generation"] and list(column.y) == ["L0 -> L0", "L1 -> L1", "L2 -> L2"]
    assert [row[0] for row in column.text] == [repr(c.text) for c in r.cells]
    assert [row[0] for row in column.z] == [1.0 if c.decoded else 0.0 for c in r.cells]


def test_bad_input(tmp_path):
    m = random_model("llama")
    with pytest.raises(InputError, match="no placeholder"):
        patchscope(m, "hello", template="no mark here", placeholder="?")
    with pytest.raises(InputError, match="position"):
        patchscope(m, "hi", position=7)
    with pytest.raises(InputError, match="out of range"):
        patchscope(m, "hi", layers=[3])
    r = patchscope(m, "hi", layers=[1], max_new_tokens=1)
    assert "PatchScope" in r.save(tmp_path / "p.html").read_text()
