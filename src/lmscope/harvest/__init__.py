"""Harvesting activations at scale (part 2, automated): run a model over a corpus and write chosen sites'
activations to disk, sharded and resumable, then stream them back shuffled (e.g. to train an SAE).

    harvest(model, "wiki", ["resid_post.12"], 2_000_000, "runs/harvest_l12")   -> HarvestResult
    open_store("runs/harvest_l12").iter_batches("resid_post.12", 4096)         -> [4096, d] float32 batches
    verify_store(store)                                                         -> HarvestCheck (every sha256)

A harvest folder holds manifest.json (format "lmscope-harvest/1": model, config hash (lmscope.core.fingerprint),
sites and their feature shapes, dtype, corpus, token count, per-shard sha256) and shard_r<rank>_<index>.safetensors
files with tensors acts.<site> [n, *shape], token_ids, doc_ids, positions (index in the model's input row) and
window_ids [n] int64. Writing into an existing harvest folder continues it (the one exception to the output rule).
"""
from lmscope.harvest.distributed import barrier, ensure_group, launched_world, on_rank0
from lmscope.harvest.store import HarvestCheck, HarvestStore, open_store, verify_store
from lmscope.harvest.windows import resolve_prefix, unused_documents
from lmscope.harvest.writer import HarvestResult, check_harvest_folder, harvest

__all__ = ["harvest", "open_store", "verify_store", "check_harvest_folder", "HarvestStore", "HarvestResult",
           "HarvestCheck", "resolve_prefix", "unused_documents", "barrier", "ensure_group", "launched_world",
           "on_rank0"]
