"""`Model`: a Hugging Face causal LM, its tokenizer and its adapter, with uniform sites."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import torch

from lmscope.core.errors import InputError, SiteError
from lmscope.core.models.adapters import (FIXED_POSITIONS, Adapter, adapter_for, final_logit_softcap, in_features,
                                          residual_scale, scale_logits)
from lmscope.core.models.sites import LAYER_KINDS, Site, expand_sites, parse_site
from lmscope.core.trace import Trace, resident, weight_matrix


@dataclass
class RunResult:
    input_ids: torch.Tensor            # [batch, seq]
    attention_mask: torch.Tensor       # [batch, seq]; 0 where a shorter prompt was padded (on the right)
    logits: "torch.Tensor | None"      # None when the pass stopped early
    acts: dict[str, torch.Tensor]      # canonical site name ('resid_post.5') -> activation
    n_layers: int

    def at_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """Each row's value at its last real token ([batch, seq, ...] -> [batch, ...]); prompts are right-padded."""
        last = self.attention_mask.sum(1) - 1
        return tensor[torch.arange(len(last), device=last.device), last]

    def __getitem__(self, site) -> torch.Tensor:
        """Any spelling of a site that was read: 'resid_post.-1', 'blocks.5.hook_resid_post', a Site."""
        name = str(parse_site(site, self.n_layers))
        if name not in self.acts:
            raise SiteError(f"site '{name}' was not read in this run (read: {', '.join(self.acts) or 'none'})")
        return self.acts[name]


@dataclass
class GenerationResult:
    prompt: str
    text: str                          # the generated continuation only
    token_ids: list[int]               # prompt + continuation
    acts: dict[str, torch.Tensor]      # reads over the whole sequence


class Model:
    def __init__(self, hf, tokenizer, spec: str):
        self.hf, self.tokenizer, self.spec = hf, tokenizer, spec
        self.adapter: Adapter = adapter_for(hf)
        self._modules = dict(hf.named_modules())

    # -- shape of the model -----------------------------------------------------------------------------------------
    @cached_property
    def n_layers(self) -> int:
        return len(self.module(self.adapter.layers))

    @cached_property
    def d_model(self) -> int:
        return self.module(self.adapter.embed).weight.shape[1]

    @cached_property
    def n_heads(self) -> int:
        cfg = self.hf.config
        return getattr(cfg, "num_attention_heads", None) or cfg.n_head

    @cached_property
    def n_kv_heads(self) -> int:
        """Key/value heads (fewer than n_heads with grouped-query attention); the head count of the k and v sites."""
        return getattr(self.hf.config, "num_key_value_heads", None) or self.n_heads

    @cached_property
    def d_head(self) -> int:
        return in_features(self.block_module(0, self.adapter.o_proj)) // self.n_heads

    @cached_property
    def d_mlp(self) -> int:
        """MLP width; for a mixture of experts, one expert's width (there is no neurons site)."""
        if not self.adapter.has_neurons:
            return self.hf.config.intermediate_size
        return in_features(self.block_module(0, self.adapter.down_proj))

    @cached_property
    def vocab_size(self) -> int:
        return self.module(self.adapter.lm_head).weight.shape[0]

    @property
    def parallel(self) -> bool:
        return self.adapter.is_parallel(self.hf.config)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device, or for a model dispatched by accelerate with offloaded weights
        (which sit on the meta device) the device its hooks execute on."""
        embed = self.module(self.adapter.embed)
        for module in (embed, self.hf):
            execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if execution is not None:
                return torch.device("cuda", execution) if isinstance(execution, int) else torch.device(execution)
        return embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.module(self.adapter.embed).weight.dtype

    def __repr__(self) -> str:
        return (f"Model({self.spec!r}: {type(self.hf).__name__}, {self.n_layers} layers, d_model {self.d_model}, "
                f"{self.n_heads} heads x {self.d_head}, d_mlp {self.d_mlp}, vocab {self.vocab_size}, {self.dtype})")

    # -- modules and sites ------------------------------------------------------------------------------------------
    def module(self, path: str) -> torch.nn.Module:
        return self._modules[path]

    def has_block_module(self, rel: str) -> bool:
        """Whether layer 0 has the module at `rel` (e.g. a parallel block may have no MLP input norm)."""
        return f"{self.adapter.layers}.0.{rel}" in self._modules

    def block_module(self, layer: int, rel: str = "") -> torch.nn.Module:
        return self._modules[f"{self.adapter.layers}.{layer}" + (f".{rel}" if rel else "")]

    def site(self, name) -> Site:
        return parse_site(name, self.n_layers)

    def sites(self, names=None) -> list[Site]:
        """Parse names ('resid_post.*' expands); with no names, every site of the model."""
        if names is None:
            a = self.adapter
            missing = (() if a.has_neurons else ("neurons",)) + (() if a.qkv else ("q", "k", "v")) + \
                (() if a.attn_in_norm else ("attn_in",)) + (() if self.has_block_module(a.mlp_in_norm) else ("mlp_in",))
            kinds = [k for k in LAYER_KINDS if k not in missing]
            names = ["embed"] + [f"{k}.*" for k in kinds] + ["final_norm", "logits"]
        return sorted(expand_sites(names, self.n_layers), key=lambda s: s.order_key(self.n_layers))

    def site_shape(self, site) -> "tuple[int, ...] | None":
        """Trailing (feature) shape of a site's activation; None for pattern, whose key length varies."""
        kind = self.site(site).kind
        kv = (self.n_kv_heads, self.d_head)
        return {"neurons": (self.d_mlp,), "z": (self.n_heads, self.d_head), "q": (self.n_heads, self.d_head),
                "k": kv, "v": kv, "logits": (self.vocab_size,), "pattern": None}.get(kind, (self.d_model,))

    # -- tokens -------------------------------------------------------------------------------------------------------
    def encode(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Text, a list of texts (padded on the right), or token ids -> (input_ids, attention_mask) on the device."""
        if isinstance(inputs, torch.Tensor):
            ids = inputs if inputs.dim() == 2 else inputs[None]
            if ids.numel() == 0:
                raise InputError("empty input: no tokens")
            if ids.dtype not in (torch.int64, torch.int32) or ids.min() < 0 or ids.max() >= self.vocab_size:
                raise InputError(f"token ids must be integers in 0..{self.vocab_size - 1}")
            self.check_length(ids.shape[1])
            return ids.to(self.device), torch.ones_like(ids, device=self.device)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(r, (list, tuple)) for r in inputs):
            return self._pad([list(r) for r in inputs])
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("empty prompt: give some text")
        if self.tokenizer is None:
            raise InputError(f"{self.spec} has no tokenizer: pass token ids")
        return self._pad([self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts])

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of token ids, padded on the right (so positions and causal reads of real tokens are unchanged)."""
        if not rows or any(len(r) == 0 for r in rows):
            raise InputError("empty input: no tokens")
        if any(not isinstance(i, int) or not 0 <= i < self.vocab_size for r in rows for i in r):
            raise InputError(f"token ids must be integers in 0..{self.vocab_size - 1}")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None) or 0
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        self.check_length(length)
        return ids.to(self.device), mask.to(self.device)

    @cached_property
    def max_positions(self) -> "tuple[int | None, bool]":
        """(the longest sequence the model is made for, whether that is a hard limit). Learned absolute position
        embeddings (GPT-2) and GPT-J's rotary table have no row past the configured length: a hard limit. Other RoPE
        models run past their configured max_position_embeddings, but what they compute there is extrapolation."""
        cfg, hard = self.hf.config, self.adapter.family in FIXED_POSITIONS
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value, hard
        return None, False

    def check_length(self, n_tokens: int, what: str = "the input") -> None:
        """One InputError past a hard position limit; a RuntimeWarning past a RoPE model's configured length."""
        limit, hard = self.max_positions
        if limit is None or n_tokens <= limit:
            return
        if hard:
            raise InputError(f"{what} is {n_tokens} tokens; {self.adapter.family} has "
                             f"{FIXED_POSITIONS[self.adapter.family]} for {limit} positions: shorten it to {limit} "
                             f"tokens")
        warnings.warn(f"lmscope: {what} is {n_tokens} tokens, longer than the {limit} positions {self.spec} is "
                      f"configured for (max_position_embeddings); what it computes past that is extrapolation",
                      RuntimeWarning, stacklevel=3)

    def to_str_tokens(self, ids) -> list[str]:
        ids = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokenizer.decode([i]) for i in ids]

    def token_id(self, token: str) -> int:
        """The id of a string that is exactly one token (e.g. ' Tokyo'); a clear error otherwise."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            alt = token[1:] if token.startswith(" ") else " " + token
            alt_ids = self.tokenizer(alt, add_special_tokens=False)["input_ids"]
            hint = f"; {alt!r} is one token" if len(alt_ids) == 1 else ""
            raise InputError(f"{token!r} is {len(ids)} tokens {self.to_str_tokens(ids)}, not one{hint}")
        return ids[0]

    # -- running ------------------------------------------------------------------------------------------------------
    def trace(self, read=(), edits=(), **options):
        return Trace(self, read, edits, **options)

    def run(self, inputs, read=(), edits=(), *, stop_early: bool = False, grad: bool = False,
            forward_kwargs: dict | None = None, **options) -> RunResult:
        """One forward pass over `inputs`, reading and editing sites. With stop_early the pass ends after the last
        site read and `logits` is None (unless 'logits' is read). `forward_kwargs` go to the HF forward (e.g.
        logits_to_keep=1 when only the last position's logits are needed)."""
        ids, mask = self.encode(inputs)
        out = None
        with torch.set_grad_enabled(grad), self.trace(read, edits, stop_early=stop_early, grad=grad,
                                                      **options) as tr:
            out = self.hf(input_ids=ids, attention_mask=mask, use_cache=False, **(forward_kwargs or {}))
        return RunResult(ids, mask, None if out is None else out.logits, tr.acts(), self.n_layers)

    @torch.no_grad()
    def generate(self, prompt: str, edits=(), read=(), *, max_new_tokens: int = 20, **generate_kwargs
                 ) -> GenerationResult:
        """Greedy generation (pass do_sample=True etc. to change) with edits applied at every step."""
        ids, mask = self.encode(prompt)
        if ids.shape[0] != 1:
            raise InputError("generate takes one prompt")
        self.check_length(ids.shape[1] + max_new_tokens, f"the prompt plus {max_new_tokens} new tokens")
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                      if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id)
        kwargs.update(generate_kwargs)
        if not kwargs.get("do_sample"):
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.trace(read, edits) as tr:
            out = self.hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        full = out[0].tolist()
        text = self.tokenizer.decode(full[ids.shape[1]:], skip_special_tokens=True)
        return GenerationResult(prompt, text, full, tr.acts())

    @torch.no_grad()
    def generate_rows(self, rows: list[list[int]], edits=(), *, max_new_tokens: int = 20) -> list[str]:
        """Greedy continuations of equal-length token rows in one batch (no padding, so each row computes exactly
        what it would alone), with edits applied at every step; each text is cut at the first end-of-sequence."""
        if not rows or len({len(r) for r in rows}) != 1:
            raise InputError("generate_rows takes a non-empty list of token rows of equal length")
        ids = torch.tensor(rows, device=self.device)
        self.check_length(ids.shape[1] + max_new_tokens, f"each row plus {max_new_tokens} new tokens")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self.trace(edits=edits):
            out = self.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        stop = self._end_ids()
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts

    @torch.no_grad()
    def generate_batch(self, prompts, edits=(), *, max_new_tokens: int = 20, token_ids: bool = False
                       ) -> "list[str] | list[list[int]]":
        """Greedy continuations of prompts of any lengths in one batch, padded on the LEFT, with edits applied at
        every step. Positions of edits count each row's own tokens (position p is the row's token p, -1 its last
        token so far), per-position values are read at those positions, padding is never edited. `edits`: one list
        for every row, or one list per row (rows that share the same list object are edited together). Each
        continuation is cut at the first end-of-sequence; `token_ids=True` returns the ids instead of texts."""
        rows = self._token_rows(prompts)
        per_row = bool(edits) and all(isinstance(e, (list, tuple)) for e in edits)
        if per_row and len(edits) != len(rows):
            raise InputError(f"generate_batch: {len(edits)} edit lists for {len(rows)} prompts")
        flat, edit_rows = list(edits) if not per_row else [], [] if per_row else [None] * len(edits)
        if per_row:
            groups: dict[int, list[int]] = {}
            for r, row_edits in enumerate(edits):
                groups.setdefault(id(row_edits), []).append(r)
            for members in groups.values():
                mask = torch.zeros(len(rows), dtype=torch.bool)
                mask[members] = True
                flat += list(edits[members[0]])
                edit_rows += [mask] * len(edits[members[0]])
        length = max(len(r) for r in rows)
        starts = [length - len(r) for r in rows]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.tensor([[pad] * s + r for s, r in zip(starts, rows)], device=self.device)
        mask = torch.tensor([[0] * s + [1] * len(r) for s, r in zip(starts, rows)], device=self.device)
        with self.trace(edits=flat, row_starts=torch.tensor(starts), edit_rows=edit_rows):
            out = self.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        stop = self._end_ids()
        result = []
        for row in out[:, length:].tolist():
            row = row[:next((i for i, t in enumerate(row) if t in stop), len(row))]
            result.append(row if token_ids else self.tokenizer.decode(row, skip_special_tokens=True))
        return result

    def _token_rows(self, prompts) -> list[list[int]]:
        """Texts or token-id rows -> lists of ids (texts tokenized as encode does)."""
        if isinstance(prompts, str) or not prompts:
            raise InputError("generate_batch takes a non-empty list of prompts (texts or token-id rows)")
        rows = []
        for p in prompts:
            if isinstance(p, str):
                rows.append(self.encode(p)[0][0].tolist())
            else:
                rows.append(self.encode([list(p)])[0][0].tolist())
        return rows

    def _end_ids(self) -> set[int]:
        """Token ids that end a generated answer (generation config and tokenizer's eos, and pad)."""
        ids = set()
        for value in (self.hf.generation_config.eos_token_id, self.tokenizer.eos_token_id,
                      self.tokenizer.pad_token_id):
            if value is not None:
                ids.update(value if isinstance(value, (list, tuple)) else [value])
        return ids

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Residual stream -> logits through the model's own final norm and unembedding (and the family's logit
        multiplier or final soft-capping, where it has one)."""
        a = self.adapter
        logits = scale_logits(a, self.hf.config, self.module(a.lm_head)(self.module(a.final_norm)(resid)))
        cap = final_logit_softcap(self.hf.config)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def head_write_weights(self, layer: int, what: str = "per-head writes", *, approximate: bool = False
                           ) -> "tuple[torch.Tensor, torch.Tensor | None]":
        """(W [d_model, heads, d_head], bias [d_model] or None) of one layer's heads: head h adds z_h @ W[:, h].T
        to the residual stream, and the output projection's bias is added once. The family's residual scale is
        included (Granite), so the heads' writes plus the bias add up to attn_out. Refused (InputError, naming
        `what`) where a head's write is not defined (Adapter.nonadditive_heads: Gemma, OLMo 2, the weight-sparse
        model), unless approximate=True (the output projection's part only; the caller says so)."""
        a = self.adapter
        if a.nonadditive_heads and not approximate:
            raise InputError(f"{what} need each head's write into the residual stream, which is not defined here: "
                             f"{a.nonadditive_heads}")
        o = self.block_module(layer, a.o_proj)
        factor = residual_scale(a, self.hf.config) or 1.0
        w = weight_matrix(o).reshape(self.d_model, self.n_heads, self.d_head) * factor
        b = resident(o, "bias")
        return w, None if b is None else b * factor

    def has_hooks(self) -> bool:
        """True if any module of the model still holds a forward hook or pre-hook."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.hf.modules())
