"""Issue 14 item 4: SAE training interrupted after N steps and resumed from its last checkpoint ends with exactly
the weights (and history) of an uninterrupted run; the folder rules of `sae train --out` (checked before any work)."""
import json

import pytest
import torch

from lmscope.core.errors import InputError
from lmscope.sae import TensorSource, TrainConfig, load_sae, train_sae
from lmscope.sae.checkpoints import check_train_folder, latest_sae_checkpoint


def _data(n=2048, d=12):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * 3


class Interrupted(TensorSource):
    """The same stream, but the process 'dies' (KeyboardInterrupt) when batch `after` is asked for."""

    def __init__(self, x, after):
        super().__init__(x)
        self.after = after

    def batches(self, batch_size, **kwargs):
        for i, item in enumerate(super().batches(batch_size, **kwargs)):
            if i == self.after:
                raise KeyboardInterrupt
            yield item


def _cfg(out, architecture="topk", **kw):
    return TrainConfig(out=str(out), architecture=architecture, d_sae=32, k=3, n_tokens=64 * 14, batch_size=64,
                       lr=3e-3, warmup_steps=2, dead_tokens=128, norm_batches=2, outlier_factor=4.0,
                       checkpoint_every=4, **kw)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "relu"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, architecture):
    x = _data()
    whole = train_sae(_cfg(tmp_path / "whole", architecture), TensorSource(x), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_sae(_cfg(tmp_path / "cut", architecture), Interrupted(x, after=10), progress=False)
    assert latest_sae_checkpoint(tmp_path / "cut").name == "step_000008"
    assert not (tmp_path / "cut" / "train.json").exists()
    resumed = train_sae(_cfg(tmp_path / "cut", architecture), TensorSource(x), progress=False)
    a, b = load_sae(tmp_path / "whole"), load_sae(tmp_path / "cut")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    assert resumed.n_steps == whole.n_steps == 14 and resumed.n_tokens == whole.n_tokens
    assert resumed.resumed_from == 8 and whole.resumed_from == 0 and "resumed from" in resumed.summary()
    assert [h["fvu"] for h in resumed.history] == [h["fvu"] for h in whole.history]


def test_a_resumed_run_differs_from_a_fresh_start_on_the_checkpoint_alone(tmp_path):
    """The resume really restores Adam and the schedule: training 6 more steps from the step-8 weights with a
    fresh optimiser does not give the uninterrupted weights."""
    x = _data()
    train_sae(_cfg(tmp_path / "whole"), TensorSource(x), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_sae(_cfg(tmp_path / "cut"), Interrupted(x, after=10), progress=False)
    state = tmp_path / "cut" / "checkpoints" / "step_000008" / "train_state.safetensors"
    state.unlink()                                   # a damaged checkpoint is one clear error, not a silent restart
    with pytest.raises(InputError, match="cannot be read"):
        train_sae(_cfg(tmp_path / "cut"), TensorSource(x), progress=False)


def test_the_folder_rules(tmp_path):
    x = _data()
    out = tmp_path / "run"
    train_sae(_cfg(out), TensorSource(x), progress=False)
    with pytest.raises(InputError, match="not empty .it holds a finished run"):
        check_train_folder(_cfg(out))
    assert check_train_folder(_cfg(out), overwrite=True) is None
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_sae(_cfg(cut), Interrupted(x, after=6), progress=False)
    with pytest.raises(InputError, match="holds another run"):
        check_train_folder(_cfg(cut, seed=1))                 # another config: not resumed into
    assert check_train_folder(_cfg(cut, threads=1)).name == "step_000004"   # threads do not change the run
    assert json.loads((cut / "train_config.json").read_text())["seed"] == 0


def test_bad_arguments_fail_before_the_folder_is_made(tmp_path):
    for bad in (dict(batch_size=0), dict(lr=float("nan")), dict(decay_frac=2.0), dict(n_tokens=10)):
        cfg = _cfg(tmp_path / "run")
        for k, v in bad.items():
            setattr(cfg, k, v)
        with pytest.raises(InputError):
            train_sae(cfg, TensorSource(_data()), progress=False)
        assert not (tmp_path / "run").exists()


def test_a_failed_start_leaves_no_folder(tmp_path):
    """The data source fails before the first step: nothing written, so the retry is not blocked."""
    with pytest.raises(KeyboardInterrupt):
        train_sae(_cfg(tmp_path / "run"), Interrupted(_data(), after=0), progress=False)
    assert not (tmp_path / "run").exists()
