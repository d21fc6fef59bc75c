"""`lmscope harvest` under torchrun with 2 CPU ranks (gloo) writes exactly the tokens of a 1-process harvest."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_model
from lmscope.core.errors import InputError
from lmscope.harvest import harvest, open_store

TORCHRUN = Path(sys.executable).with_name("torchrun")
OPTIONS = dict(seq_len=32, batch_size=4, shard_tokens=300, progress=False)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this interpreter")
def test_two_gloo_ranks_write_the_same_tokens_as_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "lmscope.cli", "harvest",
           "--model", "random:llama", "--corpus", "python", "--sites", "resid_post.1,mlp_out.2", "--tokens", "2000",
           "--out", str(two), "--seq-len", "32", "--batch-size", "4", "--shard-tokens", "300", "--json"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2 and printed[0]["complete"]  # rank 0 speaks

    reference = harvest(random_model("llama"), "python", ["resid_post.1", "mlp_out.2"], 2000, one, **OPTIONS)
    m1, m2 = open_store(one).manifest, open_store(two).manifest
    assert m2["world_size"] == 2 and m2["complete"] and m2["n_tokens"] == m1["n_tokens"] == 2000
    assert m2["documents"] == m1["documents"]
    assert [e["rank"] for e in m2["shards"]] == [i % 2 for i in range(reference.n_shards)]
    assert {e["file"].split("_")[1] for e in m2["shards"]} == {"r0", "r1"}
    for e1, e2 in zip(m1["shards"], m2["shards"], strict=True):
        assert (e1["index"], e1["first_window"], e1["n_tokens"]) == (e2["index"], e2["first_window"], e2["n_tokens"])
        a, b = load_file(str(one / e1["file"])), load_file(str(two / e2["file"]))
        assert a.keys() == b.keys()
        for key in ("token_ids", "doc_ids", "positions", "window_ids"):
            assert torch.equal(a[key], b[key]), key
        for key in ("acts.resid_post.1", "acts.mlp_out.2"):
            torch.testing.assert_close(a[key].float(), b[key].float(), rtol=2e-3, atol=1e-5)

    # the union over the reader's two ranks is every stored row
    store = open_store(two)
    parts = [torch.cat(list(store.iter_batches("mlp_out.2", 128, rank=r, world_size=2))) for r in (0, 1)]
    assert sum(len(p) for p in parts) == 2000

    # continuing that folder with another number of processes is refused
    with pytest.raises(InputError, match="world_size"):
        harvest(random_model("llama"), "python", ["resid_post.1", "mlp_out.2"], 2000, two, **OPTIONS)
