"""Background jobs on the one model: a queue, one worker, progress, cancellation, and a disk cache.

    queue = JobQueue(state)                 # state: model, model_lock, cache
    job = queue.submit("neuron", params, run=fn, title="neuron 3.17", expected_tokens=20_000)
    queue.cancel(job.id)

One job runs on the model at a time (it holds `state.model_lock`, which the short requests also take); the others
wait, shown as queued. While a job runs, a forward pre-hook on the model counts the tokens of every forward pass
(tokens/s; ETA when the job says how many tokens it expects) and raises `Cancelled` at the next forward pass once
the job is cancelled: the library's own `finally` blocks then remove their hooks. A finished job's payload is
written to the cache (JSON under <runs>/lab/cache), so submitting the same work again answers at once.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.core.errors import LmscopeError
from lmscope.results import write_atomic

log = logging.getLogger("lmscope.lab")


class Cancelled(Exception):
    """Raised inside the model's forward pass when the running job is cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    title: str
    params: dict
    key: str
    expected_tokens: "int | None" = None
    status: str = "queued"           # queued | running | done | failed | cancelled
    created: float = field(default_factory=time.time)
    started: "float | None" = None
    finished: "float | None" = None
    tokens: int = 0
    error: "str | None" = None
    cached: bool = False
    payload: "dict | None" = None
    cancel_requested: bool = False
    run: object = None
    use_cache: bool = True

    def progress(self) -> dict:
        elapsed = ((self.finished or time.time()) - self.started) if self.started else 0.0
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        fraction = eta = None
        if self.status == "done":
            fraction = 1.0
        elif self.expected_tokens and self.status == "running":
            fraction = min(0.99, self.tokens / self.expected_tokens)
            eta = max(0.0, (self.expected_tokens - self.tokens) / rate) if rate > 0 else None
        return {"tokens": self.tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(rate, 1),
                "fraction": fraction, "eta_s": None if eta is None else round(eta, 1)}

    def to_json(self, with_payload: bool = False) -> dict:
        out = {"id": self.id, "kind": self.kind, "title": self.title, "params": self.params, "status": self.status,
               "error": self.error, "cached": self.cached, "created": self.created, "progress": self.progress()}
        if with_payload:
            out["payload"] = self.payload
        return out


def cache_key(kind: str, model_id: str, params: dict) -> str:
    text = json.dumps({"kind": kind, "model": model_id, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Cache:
    """Payloads by key, as JSON files in one folder (the key is a hash: no name from a request is a path)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError("bad cache key")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> "dict | None":
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(key), json.dumps(record))

    def records(self) -> list[dict]:
        out = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out


class Meter:
    """A forward pre-hook on the model that counts tokens and stops a cancelled job."""

    def __init__(self, model, job: Job):
        self.model, self.job, self.handle = model, job, None

    def __enter__(self):
        self.handle = self.model.hf.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False

    def _hook(self, module, args, kwargs):
        if self.job.cancel_requested:
            raise Cancelled()
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
            n = 0 if ids is None else ids.shape[0] * ids.shape[1]
        else:
            n = ids.numel()
        self.job.tokens += int(n)


class JobQueue:
    """Jobs by id, run one at a time by a worker thread that holds the model lock while it works."""

    def __init__(self, model, model_lock: threading.Lock, cache: Cache, model_id: str):
        self.model, self.lock, self.cache, self.model_id = model, model_lock, cache, model_id
        self.jobs: dict[str, Job] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._loop, name="lmscope-lab-jobs", daemon=True)
        self._worker.start()

    def submit(self, kind: str, params: dict, run, *, title: str, expected_tokens: "int | None" = None,
               use_cache: bool = True) -> Job:
        """Queue `run(model) -> payload` (payload: JSON-able dict); a cached payload answers at once."""
        key = cache_key(kind, self.model_id, params)
        job = Job(f"j{next(self._ids)}", kind, title, params, key, expected_tokens, run=run, use_cache=use_cache)
        self.jobs[job.id] = job
        record = self.cache.get(key) if use_cache else None
        if record is not None and record.get("status") == "done":
            job.status, job.cached, job.payload = "done", True, record["payload"]
            job.started = job.finished = time.time()
            return job
        self._queue.put(job)
        return job

    def cancel(self, job_id: str) -> "Job | None":
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status in ("queued", "running"):
            job.cancel_requested = True
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()
        return job

    def position(self, job: Job) -> int:
        """How many jobs run or wait before this one."""
        waiting = [j for j in self.jobs.values() if j.status in ("queued", "running")]
        return sum(1 for j in waiting if int(j.id[1:]) < int(job.id[1:]))

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel_requested:
                continue
            with self.lock:
                self._run(job)

    def _run(self, job: Job) -> None:
        job.status, job.started = "running", time.time()
        try:
            with Meter(self.model, job):
                payload = job.run(self.model)
            job.finished = time.time()
            if job.use_cache:        # on disk before the job reads as done, so that the runs listing holds it
                self._store(job, payload)
            job.payload, job.status = payload, "done"
        except Cancelled:
            job.status = "cancelled"
        except LmscopeError as e:
            job.status, job.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001  (a job never takes the lab down; the log keeps the traceback)
            log.exception("job %s failed", job.id)
            job.status, job.error = "failed", f"internal error ({type(e).__name__}); see the lab's log"
        finally:
            job.finished = job.finished or time.time()
            job.run = None

    def _store(self, job: Job, payload: dict) -> None:
        record = {"status": "done", "kind": job.kind, "title": job.title, "params": job.params,
                  "model": self.model_id, "seconds": round(job.finished - job.started, 2),
                  "tokens": job.tokens, "payload": payload, "key": job.key}
        try:
            self.cache.put(job.key, record)
        except (OSError, TypeError, ValueError):
            log.exception("could not cache job %s", job.id)
