"""Loading never runs a model folder's own code, and says clearly what is wrong with a spec or a device."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lmscope
from lmscope import ModelSpecError
from lmscope.cli import main
from lmscope.core.models.loading import _hf_load_message, check_device
from lmscope.core.models.random_models import random_model


def foreign_folder(tmp_path, where="config.json"):
    """A real saved model whose config (or tokenizer config) points at a Python file that writes a marker."""
    folder, marker = tmp_path / "model", tmp_path / "MARKER"
    hf, tok = random_model("llama")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "evil.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilForCausalLM
    """))
    path = folder / where
    data = json.loads(path.read_text())
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM",
                        "AutoTokenizer": ["evil.EvilConfig", None]}
    path.write_text(json.dumps(data))
    return folder, marker


def test_a_folder_with_auto_map_is_refused_without_prompt_and_runs_nothing(tmp_path):
    folder, marker = foreign_folder(tmp_path)
    code = f"import lmscope; lmscope.load({'hf:' + str(folder)!r})"
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lmscope.core.errors.ModelSpecError:") and "auto_map" in last
    assert "trust_remote_code=True" in last and "--trust-remote-code" in last
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()


def test_custom_tokenizer_code_is_refused_too(tmp_path):
    folder, marker = foreign_folder(tmp_path, "tokenizer_config.json")
    with pytest.raises(ModelSpecError, match="tokenizer_config.json has an auto_map"):
        lmscope.load(f"hf:{folder}")
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line(tmp_path, capsys):
    folder, marker = foreign_folder(tmp_path)
    capsys.readouterr()
    assert main(["sites", "--model", f"hf:{folder}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-remote-code" in err[0] and not marker.exists()


def test_transformers_is_never_asked_to_run_code(monkeypatch, tmp_path):
    """Every call into transformers passes trust_remote_code=False (the refusal comes from transformers too)."""
    import transformers
    seen = []

    def spy(cls_from_pretrained):
        def call(*args, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "missing"))
            return cls_from_pretrained(*args, **kwargs)
        return call
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy(transformers.AutoTokenizer.from_pretrained))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        spy(transformers.AutoModelForCausalLM.from_pretrained))
    hf, tok = random_model("gpt2")
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lmscope.load(f"hf:{tmp_path}")
    assert seen == [False, False]


@pytest.mark.parametrize("spec, message", [
    ("hf:/nonexistent/path", "the path /nonexistent/path does not exist"),
    ("hf:./no/such/folder", "the path no/such/folder does not exist"),
])
def test_a_missing_path_says_it_does_not_exist(spec, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        lmscope.load(spec)
    assert "Repo id" not in str(info.value)


def test_a_file_or_a_folder_without_config_is_named(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"x")
    with pytest.raises(ModelSpecError, match="is a file; hf: takes a model folder .*gguf:"):
        lmscope.load(f"hf:{tmp_path / 'weights.gguf'}")
    with pytest.raises(ModelSpecError, match="has no config.json"):
        lmscope.load(f"hf:{tmp_path}")


def test_a_hub_name_offline_says_it_cannot_be_downloaded():
    code = "import lmscope; lmscope.load('hf:lmscope-test/no-such-model')"
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                            "PYTHONPATH": os.pathsep.join(sys.path)})
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot be downloaded offline" in last and "not in the Hugging Face cache" in last


def test_the_offline_message_is_chosen_from_the_cause():
    class LocalEntryNotFoundError(FileNotFoundError):
        pass
    try:
        try:
            raise LocalEntryNotFoundError("no file")
        except LocalEntryNotFoundError as inner:
            raise OSError("We couldn't connect to 'https://huggingface.co'") from inner
    except OSError as exc:
        assert "cannot be downloaded offline" in _hf_load_message("hf:a/b", exc)
    assert _hf_load_message("hf:a/b", OSError("disk full")) == "cannot load 'hf:a/b': disk full"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_clear_error(device, capsys):
    with pytest.raises(ModelSpecError, match=f"device '{device}': (this torch build has no CUDA support|no CUDA GPU)"):
        check_device(device)
    assert main(["sites", "--model", "random:llama", "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --device cpu" in err[0]


def test_an_unknown_device_is_one_clear_error():
    with pytest.raises(ModelSpecError, match="unknown device 'gpu0'"):
        lmscope.load("random:llama", device="gpu0")
