"""What the lab holds while it runs: the one model, the lock that keeps one piece of work on it at a time, the
job queue, the runs folder and what was computed in memory (contrast directions, SAE statistics)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.core.fingerprint import config_sha256, weights_sha256
from lmscope.lab.jobs import Cache, JobQueue


@dataclass
class LabState:
    model: object
    spec: str
    runs: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: "JobQueue | None" = None
    directions: dict = field(default_factory=dict)     # (contrast set, layer) -> Direction
    sae: dict = field(default_factory=dict)            # SAE run id -> FeatureStats
    busy_timeout: float = 600.0                         # seconds a short request waits for the running job

    def __post_init__(self):
        self.runs = Path(self.runs).resolve()
        self.runs.mkdir(parents=True, exist_ok=True)
        if self.queue is None:
            self.queue = JobQueue(self.model, self.lock, Cache(self.runs / "lab" / "cache"), self.model_id())

    def model_id(self) -> str:
        """The spec plus hashes of the config and the weights: a cache entry belongs to one model."""
        return f"{self.spec}:{config_sha256(self.model)[:16]}:{weights_sha256(self.model)[:16]}"

    def info(self) -> dict:
        m = self.model
        return {"model": self.spec, "n_layers": m.n_layers, "n_heads": m.n_heads, "d_model": m.d_model,
                "d_mlp": m.d_mlp, "vocab_size": m.vocab_size, "runs": str(self.runs)}
