"""Harvesting activations to disk at scale, and reading them back.

A harvest folder holds manifest.json (format "lmscope-harvest/1": model, config hash, sites and their feature
shapes, dtype, corpus, token count, per-shard sha256) and shard_r<rank>_<index>.safetensors files with tensors
acts.<site> [n, *shape], token_ids, doc_ids, positions (index in the model's input row) and window_ids [n] int64.
"""
from lmscope.harvest.store import HarvestStore, config_hash, open_store
from lmscope.harvest.writer import HarvestResult, harvest

__all__ = ["harvest", "open_store", "HarvestStore", "HarvestResult", "config_hash"]
