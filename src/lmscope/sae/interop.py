"""Save and load SAEs: lmscope's own format, and those written by SAELens and by EleutherAI sparsify.

lmscope format (a folder):
    cfg.json          SAEConfig.to_json(): {"format": "lmscope-sae/1", "architecture", "d_in", "d_sae", "d_out",
                      "k", "input_scale", "output_scale", "model", "model_config_hash", "site_in", "site_out", ...}
    sae.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out], float32;
                      jumprelu adds log_threshold [d_sae]; batchtopk adds threshold [] (its inference threshold).
    Encoding: z = act((x * input_scale - b_dec) @ W_enc + b_enc); prediction: (z @ W_dec + b_dec) / output_scale.

SAELens (cfg.json + sae_weights.safetensors): W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, threshold
(jumprelu); cfg d_in, d_sae, architecture ("standard" | "topk" | "jumprelu"; or activation_fn), k or
activation_fn_kwargs.k, hook_name (TransformerLens name), apply_b_dec_to_input, model_name.
sparsify (cfg.json + sae.safetensors): encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec;
cfg d_in, num_latents or expansion_factor, k. The hookpoint is the folder's name (e.g. layers.12 = resid_post.12).
Activation normalisation other than none is refused for foreign SAEs (it needs statistics they do not ship).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmscope.core.errors import InputError
from lmscope.core.fingerprint import same_config
from lmscope.core.models.sites import parse_site
from lmscope.results.files import atomic_folder
from lmscope.results.output import check_output
from lmscope.sae.architectures import build_sae
from lmscope.sae.config import FORMAT, SAEConfig


def save_sae(sae, folder, *, overwrite: bool = False) -> Path:
    """Write cfg.json and sae.safetensors into `folder` (created if missing; its parent must exist) as one unit
    (results.files.atomic_folder: a crash never leaves the weights of one save beside the cfg.json of another;
    other files in the folder stay). A folder that holds anything is refused unless overwrite=True (the output
    rule)."""
    folder = check_output(folder, overwrite=overwrite, folder=True, what="SAE folder")
    with atomic_folder(folder) as tmp:
        write_sae_files(sae, tmp)
    return folder


def write_sae_files(sae, folder: Path) -> None:
    """sae.safetensors and cfg.json into an existing folder (no checks: save_sae's and checkpoints' inner step)."""
    tensors = {name: p.detach().float().contiguous().cpu() for name, p in sae.named_parameters()}
    if sae.architecture == "batchtopk":
        tensors["threshold"] = sae.threshold.detach().float().cpu().reshape(())
    cfg = sae.cfg
    cfg.input_scale, cfg.output_scale = float(sae.input_scale), float(sae.output_scale)
    save_file(tensors, str(folder / "sae.safetensors"), metadata={"format": FORMAT})
    (folder / "cfg.json").write_text(json.dumps(cfg.to_json(), indent=1), encoding="utf-8")


def _folder(path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == "cfg.json":
        path = path.parent
    if not (path / "cfg.json").is_file():
        raise InputError(f"{path} is not an SAE folder (no cfg.json)")
    return path


def read_cfg(folder: Path) -> dict:
    """cfg.json as a dict; one InputError if it is not UTF-8 text, not JSON, or not a JSON object."""
    path = folder / "cfg.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path} must hold a JSON object, not a {type(cfg).__name__}")
    return cfg


def detect_format(path) -> str:
    folder = _folder(path)
    cfg = read_cfg(folder)
    if cfg.get("format") == FORMAT:
        return "lmscope"
    if (folder / "sae_weights.safetensors").is_file():
        return "saelens"
    if (folder / "sae.safetensors").is_file():
        return "sparsify"
    raise InputError(f"{folder}: cfg.json without weights I know (sae.safetensors, sae_weights.safetensors)")


def load_sae(path, *, model=None, device=None):
    """Any of the three formats -> an SAE in eval mode. With `model`, checks that the SAE's sites exist there with
    the SAE's widths and, where both are known, that it was trained on the same model."""
    folder = _folder(path)
    kind = detect_format(folder)
    raw = read_cfg(folder)
    weights = folder / ("sae_weights.safetensors" if kind == "saelens" else "sae.safetensors")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{weights} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    try:
        if kind == "lmscope":
            cfg = SAEConfig.from_json(raw)
        elif kind == "saelens":
            cfg, tensors = _from_saelens(raw, tensors)
        else:
            cfg, tensors = _from_sparsify(raw, tensors, folder.name)
    except (KeyError, TypeError, ValueError) as exc:     # a cfg.json without the fields its format needs
        raise InputError(f"{folder / 'cfg.json'} is not a valid {kind} SAE config ({type(exc).__name__}: "
                         f"{exc})") from None
    _check_shapes(cfg, tensors, folder)
    sae = build_sae(cfg)
    state = {k: v for k, v in tensors.items() if k != "threshold"}
    state["input_scale"] = torch.tensor(float(cfg.input_scale))
    state["output_scale"] = torch.tensor(float(cfg.output_scale))
    if cfg.architecture == "batchtopk":
        state["threshold"] = tensors.get("threshold", torch.tensor(0.0)).reshape(())
    missing, unexpected = sae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{folder}: weights do not match a {cfg.architecture} SAE (missing {missing}, "
                         f"unexpected {unexpected})")
    if model is not None:
        check_against_model(cfg, model)
    return sae.to(device or "cpu").eval()


def check_against_model(cfg: SAEConfig, model) -> None:
    """InputError unless the SAE's sites exist in `model` with its widths and, where the SAE records the model's
    config hash (lmscope.core.fingerprint; hashes written by older lmscope versions still match), it is this model's."""
    for role, site, width in (("reads", cfg.site_in, cfg.d_in), ("writes", cfg.site_out, cfg.d_out)):
        if not site:
            raise InputError("the SAE does not record its site; it cannot be placed in a model")
        shape = model.site_shape(site)
        if shape is None or shape[-1] != width or len(shape) != 1:
            raise InputError(f"d_in mismatch: the SAE {role} {site} with width {width}, but {model.spec}'s {site} "
                             f"has shape {shape}")
    if cfg.model_config_hash and not same_config(cfg.model_config_hash, model):
        raise InputError(f"the SAE was trained on another model ({cfg.model or 'unknown'}), not {model.spec}")


def _check_shapes(cfg: SAEConfig, tensors: dict, folder) -> None:
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_out),
            "b_dec": (cfg.d_out,)}
    for name, shape in want.items():
        if name not in tensors:
            raise InputError(f"{folder}: weights lack {name}")
        if tuple(tensors[name].shape) != shape:
            raise InputError(f"{folder}: d_in mismatch: {name} has shape {tuple(tensors[name].shape)}, cfg.json says "
                             f"{shape} (d_in {cfg.d_in}, d_sae {cfg.d_sae})")


def _site_name(hook: str) -> str:
    try:
        return str(parse_site(hook, 10 ** 6))
    except Exception:  # an unfamiliar hook name stays as written; placing it in a model will say so
        return hook


def _from_saelens(raw: dict, tensors: dict):
    arch = str(raw.get("architecture") or raw.get("activation_fn") or "standard").lower()
    arch = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if arch is None:
        raise InputError(f"SAELens architecture {raw.get('architecture')!r} is not supported (standard, topk, "
                         f"jumprelu)")
    norm = raw.get("normalize_activations") or "none"
    if norm != "none":
        raise InputError(f"SAELens normalize_activations={norm!r} is not supported (needs dataset statistics)")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k") or 1
    d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
    out = {k_: v.float() for k_, v in tensors.items() if k_ in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if arch == "jumprelu":
        if "threshold" not in tensors:
            raise InputError("SAELens jumprelu weights lack 'threshold'")
        out["log_threshold"] = tensors["threshold"].float().clamp_min(1e-30).log()
    hook = raw.get("hook_name") or raw.get("hook_point") or ""
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=int(k),
                    model=str(raw.get("model_name", "")), site_in=_site_name(hook) if hook else "",
                    subtract_b_dec=bool(raw.get("apply_b_dec_to_input", True)))
    return cfg, out


def _from_sparsify(raw: dict, tensors: dict, folder_name: str):
    if "encoder.weight" not in tensors:
        raise InputError("sparsify weights lack encoder.weight")
    d_in = int(raw["d_in"]) if "d_in" in raw else tensors["encoder.weight"].shape[1]
    d_sae = int(raw.get("num_latents") or 0) or d_in * int(raw.get("expansion_factor", 0))
    if raw.get("transcode") or raw.get("skip_connection"):
        raise InputError("sparsify transcoders / skip connections are not supported")
    out = {"W_enc": tensors["encoder.weight"].float().T.contiguous(), "b_enc": tensors["encoder.bias"].float(),
           "W_dec": tensors["W_dec"].float(), "b_dec": tensors["b_dec"].float()}
    hook = folder_name if folder_name.startswith("layers.") else ""
    site = f"resid_post.{hook.split('.')[1]}" if hook and hook.split(".")[1].isdigit() and \
        hook.count(".") == 1 else _site_name(hook) if hook else ""
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=int(raw.get("k", 32)), site_in=site)
    return cfg, out
