"""`run_checks(model)`: the parity checks of lmscope's own test suite, run on the user's model (the certificate of
`lmscope check`, whose result class lives with the command in lmscope/cli/check.py), and `tolerance(dtype)`.

A model lmscope never tested is trustworthy when its sites mean what they say. On a batch of prompts:

    reading sites          reading every site leaves the logits bit-identical to the plain forward
    reading patterns       reading attention patterns (eager attention, for the trace only) leaves the logits
                           bit-identical to the plain eager forward
    resid_mid              resid_mid.L == resid_pre.L + attn_out.L                       (sequential blocks; exact)
    resid_post             resid_post.L == resid_mid.L + mlp_out.L (sequential; exact), or
                           resid_post.L == resid_pre.L + attn_out.L + mlp_out.L (parallel blocks; the block adds
                           in its own order, so within the dtype-scaled tolerance)
    layer chain            resid_pre.L+1 == resid_post.L                                 (exact)
    unembed                model.unembed(resid_post.last) == logits                      (dtype-scaled)
    zero edit              adding zeros at every editable site leaves the logits bit-identical
    hooks removed          no hook is left on the model afterwards

Each check reports its largest absolute difference and the tolerance it used: 0 ("exact"), or
`tolerance(dtype, scale, terms)` where rounding may differ. `tolerance` is the one dtype-scaled tolerance of lmscope
(direct logit attribution uses it too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmscope.core.checks import tolerance  # the one dtype-scaled tolerance (a leaf module: the lenses use it too)
from lmscope.core.edits import add
from lmscope.core.trace import set_attention

DEFAULT_PROMPTS = ("The capital of Japan is Tokyo, and the capital of France is",
                   "Susan and Tom went to the library. Susan gave a book to")


@dataclass
class CheckItem:
    name: str
    max_abs_diff: float
    tolerance: float          # 0.0: exact (bit-identical) required
    passed: bool
    where: str = ""           # the site or layer of the largest difference

    @property
    def tolerance_text(self) -> str:
        return "exact" if self.tolerance == 0 else f"{self.tolerance:.2e} (dtype-scaled)"


def run_checks(model, prompts=DEFAULT_PROMPTS) -> "tuple[list[CheckItem], int]":
    """Every check on `model` over `prompts` (see the module docstring), and the number of real tokens; a failed
    check is a CheckItem with passed=False, never an exception."""
    ids, mask = model.encode(list(prompts))
    with torch.no_grad():
        plain = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
    sites = [s for s in model.sites() if s.kind != "pattern"]
    reading = "reading every site leaves the logits bit-identical"
    run = _guard(reading, _run, model, ids, mask, sites)[0]
    if isinstance(run, CheckItem):  # the sites cannot even be read: nothing else can be checked
        return [run, _no_hooks(model)], int(mask.sum())
    checks = [_exact(reading, run.logits, plain, "logits"),
              *_guard("reading attention patterns leaves the logits bit-identical", _patterns, model, ids, mask),
              *_guard("residual stream adds up", _residual_checks, model, run.acts, mask),
              *_guard("unembed(resid_post.last) == logits", _unembed, model, run.acts, run.logits, mask),
              *_guard("adding zeros at every site leaves the logits bit-identical", _zero_edit, model, ids, mask,
                      plain)]
    return checks + [_no_hooks(model)], int(mask.sum())


def _no_hooks(model) -> CheckItem:
    return CheckItem("no hook is left on the model", float(model.has_hooks()), 0.0, not model.has_hooks())


def _guard(name: str, check, *args) -> list[CheckItem]:
    """A check whose computation fails (e.g. an adapter naming a module of the wrong shape) is a failed check."""
    try:
        items = check(*args)
    except (RuntimeError, KeyError, IndexError, ValueError, AttributeError) as exc:
        return [CheckItem(name, float("inf"), 0.0, False, f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}")]
    return items if isinstance(items, list) else [items]


def _run(model, ids, mask, read, edits=()):
    """model.run on (ids, mask) as encoded (right padding kept)."""
    with torch.no_grad(), model.trace(read, edits) as tr:
        out = model.hf(input_ids=ids, attention_mask=mask, use_cache=False)
    return _Run(out.logits, tr.acts())


@dataclass
class _Run:
    logits: torch.Tensor
    acts: dict


def _diff(a: torch.Tensor, b: torch.Tensor, mask: "torch.Tensor | None" = None) -> float:
    """Largest |a - b| over real tokens (padding excluded); infinity where one side is not finite and the other is."""
    d = (a.double() - b.double()).abs()
    d = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(d), d)
    if mask is not None:
        d = d[mask.bool()]
    return float(torch.nan_to_num(d, nan=float("inf")).max()) if d.numel() else 0.0


def _scale(*tensors) -> float:
    return max(float(t.detach().abs().max()) for t in tensors)


def _exact(name: str, a, b, where: str) -> CheckItem:
    same = torch.equal(a, b)
    return CheckItem(name, 0.0 if same else _diff(a, b), 0.0, same, where)


def _worst(name: str, pairs, tol_of) -> CheckItem:
    """pairs: (where, a, b, mask); the largest difference over all, each against its own tolerance."""
    worst, passed = CheckItem(name, 0.0, 0.0, True), True
    for where, a, b, mask in pairs:
        tol = tol_of(a, b)
        diff = 0.0 if torch.equal(a, b) else _diff(a, b, mask)
        passed &= diff <= tol
        if diff > worst.max_abs_diff or (diff == worst.max_abs_diff and tol > worst.tolerance):
            worst = CheckItem(name, diff, tol, True, where)
    worst.passed = passed
    return worst


def _patterns(model, ids, mask) -> CheckItem:
    before = model.hf.config._attn_implementation
    with torch.no_grad():
        run = _run(model, ids, mask, [f"pattern.{layer}" for layer in range(model.n_layers)])
        set_attention(model.hf, "eager")
        try:
            eager = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            set_attention(model.hf, before)
    return _exact("reading attention patterns leaves the logits bit-identical", run.logits, eager, "logits")


def _residual_checks(model, acts, mask) -> list[CheckItem]:
    n, dtype = model.n_layers, model.dtype
    exact = lambda a, b: 0.0  # noqa: E731
    rounded = lambda a, b: tolerance(dtype, _scale(a, b), terms=2)  # noqa: E731
    pre = lambda L: acts[f"resid_pre.{L}"]  # noqa: E731
    attn, mlp = (lambda L: acts[f"attn_out.{L}"]), (lambda L: acts[f"mlp_out.{L}"])
    post = lambda L: acts[f"resid_post.{L}"]  # noqa: E731
    checks = []
    if model.parallel:
        checks.append(_worst("resid_post == resid_pre + attn_out + mlp_out (parallel)",
                             [(f"layer {L}", post(L), pre(L) + attn(L) + mlp(L), mask) for L in range(n)], rounded))
    else:
        mid = lambda L: acts[f"resid_mid.{L}"]  # noqa: E731
        checks.append(_worst("resid_mid == resid_pre + attn_out",
                             [(f"layer {L}", mid(L), pre(L) + attn(L), mask) for L in range(n)], exact))
        checks.append(_worst("resid_post == resid_mid + mlp_out",
                             [(f"layer {L}", post(L), mid(L) + mlp(L), mask) for L in range(n)], exact))
    checks.append(_worst("resid_pre.L+1 == resid_post.L",
                         [(f"layer {L}", pre(L + 1), post(L), mask) for L in range(n - 1)], exact))
    return checks


def _unembed(model, acts, logits, mask) -> CheckItem:
    last = acts[f"resid_post.{model.n_layers - 1}"]
    with torch.no_grad():
        mine = model.unembed(last)
    return _worst("unembed(resid_post.last) == logits", [("logits", mine, logits, mask)],
                  lambda a, b: tolerance(model.dtype, _scale(b), terms=1))


def _zero_edit(model, ids, mask, plain) -> CheckItem:
    """Add zeros at every editable layer site at once (resid_mid only where it is a tensor of the block)."""
    edits = []
    for site in model.sites():
        if site.kind == "pattern" or (site.kind == "resid_mid" and model.parallel):
            continue
        shape = model.site_shape(site)
        edits.append(add(str(site), torch.zeros(shape, dtype=model.dtype, device=model.device)))
    run = _run(model, ids, mask, [], edits)
    return _exact(f"adding zeros at {len(edits)} sites leaves the logits bit-identical", run.logits, plain, "logits")
