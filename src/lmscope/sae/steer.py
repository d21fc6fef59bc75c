"""Steer with one SAE latent while keeping the SAE's error term (Templeton et al. 2024).

At every position the site becomes  x + (decode(z') - decode(z))  where z = encode(x) and z' is z with the latent
increased by `value` (mode "add") or set to `value` (mode "clamp"). What the SAE fails to reconstruct stays in the
stream, so only the latent's own change reaches the model. Generation is greedy, one full forward per token
(no KV cache): the clamp depends on each new position's own activation.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmscope.core.edits import add

from lmscope.core.errors import InputError
from lmscope.sae.interop import check_against_model
from lmscope.results.base import Result
from lmscope.results.html import table


@dataclass
class SaeSteerResult(Result, kind="sae_steer"):
    model: str
    prompt: str
    latent: int
    mode: str
    value: float
    clean: str
    steered: str

    def summary(self) -> str:
        return (f"latent {self.latent} {self.mode} {self.value:g} | prompt {self.prompt!r}\n  clean:   "
                f"{self.clean!r}\n  steered: {self.steered!r}")

    def figure(self):
        return go.Figure(go.Table(header={"values": ["run", "continuation"]},
                                  cells={"values": [["clean", f"{self.mode} {self.value:g}"],
                                                    [self.clean, self.steered]]}))

    def figures(self) -> list:
        return []

    def title(self) -> str:
        return f"Steering with latent {self.latent}"

    def page_intro(self) -> str:
        return self.summary().split("\n")[0]

    def page_body(self) -> str:
        return table(["run", "continuation"], [["clean", self.clean], [f"{self.mode} {self.value:g}", self.steered]])


def steering_delta(sae, x: torch.Tensor, latent: int, value: float, mode: str) -> torch.Tensor:
    """decode(z') - decode(z) for activations x [..., d_in]; rows above the SAE's max_norm get 0."""
    flat = x.reshape(-1, x.shape[-1])
    z = sae.encode(flat)
    z2 = z.clone()
    if mode == "add":
        z2[:, latent] += value
    else:
        z2[:, latent] = value
    delta = sae.decode(z2) - sae.decode(z)
    if sae.cfg.max_norm:
        delta[flat.norm(dim=-1) > sae.cfg.max_norm] = 0
    return delta.view(*x.shape[:-1], delta.shape[-1]).to(x.dtype)


@torch.no_grad()
def sae_steer(model, sae, prompt: str, latent: int, value: float, *, mode: str = "add",
          max_new_tokens: int = 20) -> SaeSteerResult:
    if mode not in ("add", "clamp"):
        raise InputError(f"mode must be 'add' or 'clamp', got {mode!r}")
    if not 0 <= latent < sae.cfg.d_sae:
        raise InputError(f"latent {latent} out of range 0..{sae.cfg.d_sae - 1}")
    if sae.cfg.site_in != sae.cfg.site_out:
        raise InputError("steering with a latent needs an SAE (a transcoder's error term is not defined at one site)")
    check_against_model(sae.cfg, model)
    sae = sae.to(model.device)
    clean = model.generate(prompt, max_new_tokens=max_new_tokens).text
    ids, _ = model.encode(prompt)
    stop = model._end_ids()
    new = []
    site = sae.cfg.site_in
    for _ in range(max_new_tokens):
        x = model.run(ids, read=[site], stop_early=True)[site]
        delta = steering_delta(sae, x, latent, value, mode)
        logits = model.run(ids, edits=[add(site, delta)], forward_kwargs={"logits_to_keep": 1}).logits
        nxt = int(logits[0, -1].argmax())
        if nxt in stop:
            break
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    steered = model.tokenizer.decode(new, skip_special_tokens=True)
    return SaeSteerResult(model.spec, prompt, latent, mode, float(value), clean, steered)
