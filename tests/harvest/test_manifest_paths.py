"""Issue 14 items 9 and 11: a harvest manifest whose shard entries name files outside the folder ('..', absolute
paths, a link leading out) or lack their sha256 is refused before anything is read or hashed."""
import importlib
import json
import os

import pytest

import lmscope.harvest.store as store_module
from lmscope.cli import main
from lmscope.core.errors import InputError
from lmscope.harvest import open_store


@pytest.fixture(scope="module")
def harvest(tmp_path_factory):
    out = tmp_path_factory.mktemp("h") / "h"
    assert main(["harvest", "--model", "random:llama", "--corpus", "python", "--sites", "resid_post.1", "--tokens",
                 "40", "--seq-len", "16", "--shard-tokens", "40", "--out", str(out)]) == 0
    return out


def _with(harvest, tmp_path, change):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in harvest.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE",
                                  "..\\outside.safetensors"])
def test_paths_outside_the_folder_are_refused_unread(harvest, tmp_path, monkeypatch, name):
    outside = tmp_path / "outside.safetensors"
    first = json.loads((harvest / "manifest.json").read_text())["shards"][0]["file"]
    outside.write_bytes((harvest / first).read_bytes())
    hashed = []
    monkeypatch.setattr(store_module, "file_sha256", lambda p: hashed.append(p) or "0" * 64)
    folder = _with(harvest, tmp_path, lambda m, f: m["shards"][0].update(
        file=str(outside) if name == "ABSOLUTE" else name))
    with pytest.raises(InputError, match="outside the harvest folder"):
        open_store(folder)
    assert hashed == []


def test_a_link_leading_out_is_refused(harvest, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")

    def link(manifest, folder):
        os.symlink(outside, folder / "link.safetensors")
        manifest["shards"][0]["file"] = "link.safetensors"
    with pytest.raises(InputError, match="leads outside"):
        open_store(_with(harvest, tmp_path, link))


@pytest.mark.parametrize("change,says", [
    (lambda m, f: m["shards"][0].pop("sha256"), "sha256"),
    (lambda m, f: m["shards"][0].update(sha256="abc"), "sha256"),
    (lambda m, f: m["shards"][0].pop("n_tokens"), "n_tokens"),
    (lambda m, f: m.update(shards={"a": 1}), "must be a list"),
    (lambda m, f: m.update(shards=[7]), "not an object"),
])
def test_malformed_entries_are_one_error(harvest, tmp_path, change, says):
    with pytest.raises(InputError, match=says):
        open_store(_with(harvest, tmp_path, change))


def test_the_untouched_folder_opens(harvest):
    assert open_store(harvest).n_tokens == 40


def test_a_progress_file_is_checked_like_a_manifest(tmp_path):
    """A multi-process run's progress file (read when resuming) cannot name files outside the folder either."""
    writer = importlib.import_module("lmscope.harvest.writer")
    (tmp_path / "progress_r0.json").write_text(json.dumps([{"file": "../x.safetensors", "rank": 0, "index": 0,
                                                             "n_tokens": 4, "sha256": "0" * 64}]))
    with pytest.raises(InputError, match="progress_r0.json: shard entry 0 names '../x.safetensors', outside"):
        writer._read_progress(tmp_path, 0)
    (tmp_path / "progress_r1.json").write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        writer._read_progress(tmp_path, 1)
    assert writer._read_progress(tmp_path, 2) == []
