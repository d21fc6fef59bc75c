"""Helpers of the lab tests (tests/lab): the model they use, a runs folder holding a tiny SAE (trained with the
library in about a second) and a task pair file, and waiting for a job."""
import json
import time


MODEL = "random:llama"
TASK = [{"clean": f"{a}{b} is {a}", "corrupt": f"{a}{b} is {b}", "answer": a, "wrong": b}
        for a, b in zip("abcdefghijkl", "mnopqrstuvwx")]


def make_runs(folder, model) -> None:
    """A runs folder with an SAE at resid_post.1 (trained in about a second) and a task file."""
    from lmscope.sae import ModelSource, TrainConfig, train_sae
    train_sae(TrainConfig(out=str(folder / "sae_l1"), site="resid_post.1", n_tokens=2048, batch_size=256,
                          expansion=2, k=4, seq_len=64, shuffle_buffer=1024, dead_tokens=1000),
              ModelSource(model, "resid_post.1", "wiki", seq_len=64), progress=False)
    (folder / "tasks").mkdir()
    (folder / "tasks" / "toy.jsonl").write_text("\n".join(json.dumps(x) for x in TASK))


def wait(client, job: dict, timeout: float = 60) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        s = client.get(f"/api/job/{job['id']}").json()
        if s["status"] not in ("queued", "running"):
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not finish in {timeout} s")
