"""Issue 14 item 12: atomic writes fsync the file and its folder; the umask is read without being changed; an SAE is
saved as one unit (a crash in the middle leaves the old pair, never a mix)."""
import os
import stat

import pytest
import torch

import lmscope.results.files as files
import lmscope.sae.interop as interop
from lmscope.results.files import atomic_folder, current_umask, write_atomic
from lmscope.sae.architectures import build_sae
from lmscope.sae.config import SAEConfig
from lmscope.sae.interop import load_sae, save_sae


@pytest.fixture
def synced(monkeypatch):
    """The paths whose descriptors were fsynced."""
    opened, done = {}, []
    real_open, real_fsync = os.open, os.fsync

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = os.path.realpath(path)
        return fd

    def spy_fsync(fd):
        done.append(opened.get(fd, fd))
        return real_fsync(fd)
    monkeypatch.setattr(files.os, "open", spy_open)
    monkeypatch.setattr(files.os, "fsync", spy_fsync)
    return done


def test_an_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, synced):
    path = write_atomic(tmp_path / "a.json", "{}")
    assert path.read_text() == "{}"
    folder = os.path.realpath(tmp_path)
    temps = [p for p in synced if isinstance(p, str) and p.startswith(folder + os.sep + ".a.json.")]
    assert temps, synced                                   # the data, before the rename
    assert synced.index(folder) > synced.index(temps[0])   # the folder, after it


def test_the_umask_is_read_without_setting_it(monkeypatch):
    expected = os.umask(0o022)
    os.umask(expected)
    calls = []
    real = os.umask
    monkeypatch.setattr(files.os, "umask", lambda m: calls.append(m) or real(m))
    assert current_umask() == expected
    if os.path.exists("/proc/self/status"):
        assert calls == []                                 # not even briefly
    assert 0 not in calls


def test_the_umask_fallback_never_sets_zero(monkeypatch):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/self/status":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)
    calls = []
    real = os.umask
    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(files.os, "umask", lambda m: calls.append(m) or real(m))
    mask = current_umask()
    assert calls and 0 not in calls and calls[-1] == mask


def _sae(seed):
    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2, seed=seed, site_in="resid_post.0")
    return build_sae(cfg)


def test_an_sae_is_saved_as_one_unit(tmp_path, monkeypatch):
    folder = tmp_path / "sae"
    old = _sae(0)
    save_sae(old, folder)
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    new = _sae(1)
    real = interop.write_sae_files

    def crash(sae, where):                               # the weights are written, then the process dies
        real(sae, where)
        (where / "cfg.json").write_text("{half")
        raise KeyboardInterrupt
    monkeypatch.setattr(interop, "write_sae_files", crash)
    with pytest.raises(KeyboardInterrupt):
        save_sae(new, folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]            # no temporary folder left
    monkeypatch.setattr(interop, "write_sae_files", real)
    save_sae(new, folder, overwrite=True)
    back = load_sae(folder)
    assert torch.equal(back.W_enc, new.W_enc) and not torch.equal(back.W_enc, old.W_enc)
    assert (folder / "notes.txt").read_text() == "mine"                      # other files stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_atomic_folder_mode_is_a_plain_mkdir(tmp_path):
    with atomic_folder(tmp_path / "f") as tmp:
        (tmp / "x").write_text("1")
    mode = stat.S_IMODE((tmp_path / "f").stat().st_mode)
    assert mode == 0o777 & ~current_umask()
