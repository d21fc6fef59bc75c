"""compare on tiny random models: the matched dense checkpoint is the one of closest held-out loss, every task has
both rows and the edge ratio, the controls run, the result saves; a folder without a model is one clear error."""
import pytest
import torch

import lmscope
from lmscope.circuits.tasks import TaskSet
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import random_model
from lmscope.papers.weight_sparse import circuit as C
from lmscope.papers.weight_sparse import compare as K


def windows(n, length=8, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def signal_task(model, n=12):
    g = torch.Generator().manual_seed(11)
    clean = [torch.randint(0, 256, (6,), generator=g).tolist() for _ in range(n)]
    corrupt = [[(t + 7) % 256 for t in row] for row in clean]
    logits = model.run(clean).logits[:, -1]
    return TaskSet("toy", clean, corrupt, logits.argmax(-1).tolist(), logits.argmin(-1).tolist(), "logit_diff", 0,
                   {}, [0] * n)


def save(model, path):
    model.hf.save_pretrained(path)
    model.tokenizer.save_pretrained(path)


def test_compare_on_tiny_models(tmp_path):
    sparse = lmscope.load("random:llama")
    save(lmscope.load("random:gpt2"), tmp_path / "dense")
    for seed in (1, 2):
        hf, tok = random_model("gpt2", seed=seed)
        hf.save_pretrained(tmp_path / "dense" / "checkpoints" / f"step{seed}")
        tok.save_pretrained(tmp_path / "dense" / "checkpoints" / f"step{seed}")
    held = windows(4, seed=3)
    config = C.NodePruneConfig(steps=3, batch_size=6, kinds=("neurons", "mlp_out"), target_loss=0.5)
    result = K.compare_sparse_dense(sparse, tmp_path / "dense", lambda p: lmscope.load(f"hf:{p}"), {"toy": lambda m: (signal_task(m), None)},
                       windows(4), held, config)
    cands = result.dense["candidates"]
    assert len(cands) == 3
    best = min(cands, key=lambda c: abs(c["heldout_loss"] - result.sparse["heldout_loss"]))
    assert result.dense["heldout_loss"] == best["heldout_loss"]
    row = result.tasks["toy"]
    if row["sparse"]["edges"]:
        assert row["edge_ratio_dense_to_sparse"] == pytest.approx(row["dense"]["edges"] / row["sparse"]["edges"])
    else:
        assert row["edge_ratio_dense_to_sparse"] == float("inf")
    assert set(result.controls) == {"random_labels_sparse", "random_init_sparse"}
    assert "edges dense / sparse" in result.summary()
    assert result.save(tmp_path / "c.json").exists() and result.save(tmp_path / "c.html").exists()


def test_heldout_loss_is_mean_next_token_cross_entropy():
    model = lmscope.load("random:gpt2")
    rows = windows(3)
    logits = model.run(rows).logits
    ids = torch.tensor(rows)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert K.heldout_loss(model, rows, batch_size=2) == pytest.approx(float(expected), rel=1e-5)


def test_a_folder_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a model folder"):
        K.candidate_folders(tmp_path)
