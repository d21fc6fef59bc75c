"""The lab's web application (Starlette): pages and assets from the package, a JSON API over the views, jobs.

    app = create_app(model, "random:llama", runs="runs", hosts={"127.0.0.1:8765"})

Short work (logit lens, attention, DLA, steering, an SAE feature) answers in the request, holding the model lock;
long work is a job (POST /api/jobs/<kind>, then GET /api/jobs/<id> to follow it; POST /api/jobs/<id>/cancel).
Every answer is JSON; an error is {"error": one line, "field": the form field or null}, never a traceback.
"""
from __future__ import annotations

import importlib.resources
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from lmscope.lab import runs_index
from lmscope.lab.http import FieldError, error_response, request_json
from lmscope.lab.security import HostOriginGuard
from lmscope.lab.state import LabState
from lmscope.lab.views import circuits, neurons, papers, sae, steering, workbench

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-eval'; "
                                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                               "connect-src 'self'; frame-ancestors 'none'"}

SHORT = {"lens": workbench.lens_view, "attention": workbench.attention_view, "dla": workbench.dla_view,
         "steer": steering.steering_view, "sae_feature": sae.sae_feature_view, "sae_steer": sae.sae_steer_view}
JOBS = {"neuron": neurons.neuron_job, "circuit_find": circuits.find_circuit_job, "circuit_open": circuits.open_circuit_job,
        "patching": circuits.patching_job, "sae_open": sae.open_sae_job, "introspect": papers.introspect_job,
        "icl_update": papers.icl_job}
NO_DISK_CACHE = {"sae_open"}     # its statistics live in memory; the job reruns when they are not there


def plotly_js() -> Path:
    path = Path(importlib.resources.files("plotly")) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError("plotly.min.js is missing from the installed plotly package")
    return path


def _json(data, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(model, spec: str, runs, hosts: set[str]) -> Starlette:
    state = LabState(model, spec, Path(runs))
    static = importlib.resources.files("lmscope.lab") / "static"

    async def page(request: Request) -> Response:
        return Response((static / "index.html").read_bytes(), media_type=STATIC["index.html"],
                        headers=SECURITY_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript; charset=utf-8",
                                headers={"Cache-Control": "max-age=86400", **SECURITY_HEADERS})
        if name not in STATIC:           # a fixed list: the name is never used as a path
            return _json({"error": "not found", "field": None}, 404)
        return Response((static / name).read_bytes(), media_type=STATIC[name], headers=SECURITY_HEADERS)

    async def info(request: Request) -> Response:
        data = state.info()
        data.update({"contrast_sets": steering.contrast_sets(), "corpora": neurons.corpora(),
                     "tasks": circuits.task_choices(state), "saes": sae.sae_list(state),
                     "vectors": [e.to_json() for e in runs_index.scan(state.runs) if e.kind == "vector"],
                     "circuits": [e.to_json() for e in runs_index.scan(state.runs) if e.kind == "circuit"]})
        return _json(data)

    async def short(request: Request) -> Response:
        view = SHORT.get(request.path_params["view"])
        if view is None:
            return _json({"error": "unknown view", "field": None}, 404)
        try:
            data = await request_json(request)
            return _json(await run_in_threadpool(_locked, state, view, data))
        except Exception as e:  # noqa: BLE001  (one bad request never takes the lab down)
            return error_response(e, 503 if isinstance(e, Busy) else 400)

    async def submit(request: Request) -> Response:
        make = JOBS.get(request.path_params["kind"])
        if make is None:
            return _json({"error": "unknown job kind", "field": None}, 404)
        try:
            data = await request_json(request)
            params, run, title, *expected = await run_in_threadpool(make, state, data)
            kind = request.path_params["kind"]
            if kind in NO_DISK_CACHE:
                job = _memory_or_submit(state, kind, params, run, title, expected)
            else:
                job = state.queue.submit(kind, params, run, title=title, expected_tokens=expected[0] if expected
                                         else None)
            return _json(_job_json(state, job, with_payload=job.status == "done"))
        except Exception as e:  # noqa: BLE001
            return error_response(e)

    async def job_status(request: Request) -> Response:
        job = state.queue.jobs.get(request.path_params["job_id"])
        if job is None:
            return _json({"error": "unknown job", "field": None}, 404)
        return _json(_job_json(state, job, with_payload=True))

    async def job_cancel(request: Request) -> Response:
        job = state.queue.cancel(request.path_params["job_id"])
        if job is None:
            return _json({"error": "unknown job", "field": None}, 404)
        return _json(_job_json(state, job))

    async def job_list(request: Request) -> Response:
        return _json({"jobs": [_job_json(state, j) for j in reversed(list(state.queue.jobs.values()))]})

    async def run_list(request: Request) -> Response:
        def listing():
            cached = [{"key": r.get("key"), "kind": r.get("kind"), "title": r.get("title"),
                       "params": r.get("params"), "model": r.get("model"), "seconds": r.get("seconds")}
                      for r in state.queue.cache.records()]
            return {"cached": cached, "files": [e.to_json() for e in runs_index.scan(state.runs)]}
        return _json(await run_in_threadpool(listing))

    async def cached(request: Request) -> Response:
        key = request.path_params["key"]
        record = state.queue.cache.get(key) if key.isalnum() else None
        if record is None:
            return _json({"error": "no cached result with this key", "field": None}, 404)
        return _json(record)

    async def run_file(request: Request) -> Response:
        try:
            entry = runs_index.lookup(state.runs, request.path_params["run_id"])
            content = runs_index.entry_json(entry) if entry.kind in ("result", "circuit") else None
            return _json({**entry.to_json(), "content": content})
        except FieldError as e:
            return error_response(e, 404)

    routes = [Route("/", page), Route("/static/{name}", asset), Route("/api/info", info),
              Route("/api/run/{view}", short, methods=["POST"]), Route("/api/jobs", job_list),
              Route("/api/jobs/{kind}", submit, methods=["POST"]), Route("/api/job/{job_id}", job_status),
              Route("/api/job/{job_id}/cancel", job_cancel, methods=["POST"]),
              Route("/api/cached/{key}", cached), Route("/api/runs", run_list), Route("/api/runs/{run_id}", run_file)]

    async def not_found(request, exc):
        return _json({"error": "not found", "field": None}, getattr(exc, "status_code", 404))

    async def crashed(request, exc):
        return error_response(exc, 500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: crashed})
    app.state.lab = state
    return HostOriginGuard(app, hosts)


class Busy(FieldError):
    """The model stayed busy with a job for longer than a short request waits."""


def _locked(state: LabState, view, data: dict) -> dict:
    if not state.lock.acquire(timeout=state.busy_timeout):
        running = [j.title for j in state.queue.jobs.values() if j.status == "running"]
        raise Busy(None, f"the model is busy with a job ({', '.join(running) or 'one'}); cancel it or wait")
    try:
        return view(state, data)
    finally:
        state.lock.release()


def _memory_or_submit(state, kind, params, run, title, expected):
    """A job whose result lives in memory: answered at once when that result is there and was made the same way."""
    for job in reversed(list(state.queue.jobs.values())):
        if (job.kind == kind and job.params == params and job.status == "done"
                and params.get("id") in state.sae):
            return job
    return state.queue.submit(kind, params, run, title=title, expected_tokens=expected[0] if expected else None,
                              use_cache=False)


def _job_json(state: LabState, job, with_payload: bool = False) -> dict:
    out = job.to_json(with_payload=with_payload)
    out["ahead"] = state.queue.position(job) if job.status == "queued" else 0
    out["now"] = time.time()
    return out
