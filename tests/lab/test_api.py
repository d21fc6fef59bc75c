"""The lab's JSON API on a random model: every endpoint, its errors, and that it shows what the library computes."""
import contextlib
import io
import json
import shlex

import pytest
import torch

import lmscope
from lmscope.cli import main
from lab_support import MODEL, wait


def _cli_json(cli: str) -> dict:
    """Run a "copy as CLI" line (with --json) in this process and return what it prints."""
    words = shlex.split(cli)
    assert words[0] == "lmscope"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(words[1:] + ["--json"]) == 0
    return json.loads(out.getvalue())


def _parses(payload: dict) -> None:
    """The view's "copy as CLI" line is a valid lmscope command line (its flags exist, its values parse)."""
    from lmscope.cli.main import build_parser
    words = shlex.split(payload["cli"])
    assert words[0] == "lmscope"
    build_parser().parse_args(words[1:])


def _python(code: str) -> dict:
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<recipe>", "exec"), scope)  # noqa: S102  (our own recipe, checked to reproduce the view)
    return scope


def test_info_and_page(client, lab_model):
    info = client.get("/api/info").json()
    assert info["model"] == MODEL and info["n_layers"] == lab_model.n_layers
    assert [s["name"] for s in info["saes"]] == ["sae_l1"]
    assert [t["name"] for t in info["tasks"]["files"]] == ["tasks/toy.jsonl"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_plotly_is_served_from_the_plotly_package(client):
    import importlib.resources
    want = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    got = client.get("/static/plotly.min.js")
    assert got.status_code == 200 and got.content == want


def test_lens_is_the_library_result_and_its_recipes_reproduce_it(client, lab_model):
    r = client.post("/api/run/lens", json={"prompt": "hello there", "target": "e", "top_k": 3})
    assert r.status_code == 200
    data = r.json()
    want = lmscope.logit_lens(lab_model, "hello there", target="e", top_k=3)
    assert data["result"] == json.loads(json.dumps(want.to_json()))
    assert data["figures"][0]["data"][0]["type"] == "heatmap" and len(data["figures"]) == 2
    assert _cli_json(data["cli"]) == data["result"]
    assert _python(data["python"])["r"].to_json() == want.to_json()


@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"), ({}, "prompt"), ({"prompt": 3}, "prompt"),
    ({"prompt": "hi", "target": "xyz"}, "target"), ({"prompt": "hi", "top_k": 0}, "top_k"),
    ({"prompt": "hi", "top_k": "many"}, "top_k"), ({"prompt": "x" * 5000}, "prompt")])
def test_lens_errors_name_their_field(client, body, field):
    r = client.post("/api/run/lens", json=body)
    assert r.status_code == 400 and r.json()["field"] == field
    assert "Traceback" not in r.text


def test_bad_bodies_and_unknown_views(client):
    assert client.post("/api/run/lens", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 400
    assert client.post("/api/run/lens", json=["a list"]).json()["error"] == "the request body must be a JSON object"
    assert client.post("/api/run/nope", json={}).status_code == 404
    assert client.post("/api/jobs/nope", json={}).status_code == 404
    assert client.get("/api/job/j999").status_code == 404
    assert client.post("/api/job/j999/cancel", json={}).status_code == 404
    assert client.get("/no/such/page").json() == {"error": "not found", "field": None}


def test_attention_is_the_models_pattern(client, lab_model):
    r = client.post("/api/run/attention", json={"prompt": "abc", "layer": 2}).json()["result"]
    want = lab_model.run("abc", read=["pattern.2"])["pattern.2"][0]
    assert torch.allclose(torch.tensor(r["patterns"]), want, atol=1e-4)
    assert r["n_heads"] == lab_model.n_heads
    bad = client.post("/api/run/attention", json={"prompt": "abc", "layer": lab_model.n_layers})
    assert bad.status_code == 400 and bad.json()["field"] == "layer"


def test_dla(client, lab_model):
    from lmscope.lenses.dla import direct_logit_attribution
    r = client.post("/api/run/dla", json={"prompt": "hello", "target": "o", "position": -1}).json()
    assert r["result"] == json.loads(json.dumps(direct_logit_attribution(lab_model, "hello", "o").to_json()))
    assert _cli_json(r["cli"])["logit"] == pytest.approx(r["result"]["logit"])
    bad = client.post("/api/run/dla", json={"prompt": "hello", "target": "o", "position": 9})
    assert bad.status_code == 400 and bad.json()["field"] == "position"
    assert client.post("/api/run/dla", json={"prompt": "hello", "target": "oo"}).json()["field"] == "target"


def test_steering_side_by_side_and_kl(client, lab_model):
    base = {"prompt": "hello", "set": "sentiment", "layer": 1, "max_new_tokens": 8}
    zero = client.post("/api/run/steer", json={**base, "coef": 0}).json()["result"]
    assert zero["steered"] == zero["baseline"] == lab_model.generate("hello", max_new_tokens=8).text
    assert zero["kl_prompt"] == 0
    far = client.post("/api/run/steer", json={**base, "coef": 4}).json()
    assert far["result"]["baseline"] == zero["baseline"]
    assert far["result"]["steered"] != far["result"]["baseline"] and far["result"]["kl_prompt"] > 0
    scope = _python(far["python"])
    assert scope["r"].texts[-1][0] == far["result"]["steered"]
    assert _cli_json(far["cli"])["texts"] == far["result"]["texts"]
    ablate = client.post("/api/run/steer", json={**base, "mode": "ablate"}).json()["result"]
    assert ablate["mode"] == "ablate" and ablate["kl_prompt"] > 0


@pytest.mark.parametrize("body, field", [({"set": "nope", "layer": 1}, "set"), ({"set": "sentiment", "layer": 7}, "layer"),
                                         ({"vector": "r0000"}, "vector"), ({"vector": "../x.safetensors"}, "vector"),
                                         ({"set": "sentiment", "layer": 1, "coef": "big"}, "coef")])
def test_steering_errors(client, body, field):
    r = client.post("/api/run/steer", json={"prompt": "hello", **body})
    assert r.status_code == 400 and r.json()["field"] == field


def test_neuron_job_and_cache_hit(client, lab_model, runs):
    from lmscope.neurons import profile_neuron
    body = {"layer": 1, "index": 5, "n_tokens": 1024, "top_k": 4}
    first = wait(client, client.post("/api/jobs/neuron", json=body).json())
    assert first["status"] == "done" and not first["cached"] and first["progress"]["tokens"] >= 1024
    want = profile_neuron(lab_model, 1, 5, "wiki", n_tokens=1024, k=4, progress=False)
    assert first["payload"]["result"]["stats"] == json.loads(json.dumps(want.stats))
    c = first["payload"]["result"]["top_contexts"][0]
    assert (c["left"], c["token"], c["right"]) == (want.top_contexts[0].left, want.top_contexts[0].token,
                                                   want.top_contexts[0].right)
    _parses(first["payload"])
    assert _python(first["payload"]["python"])["p"].stats == want.stats
    again = client.post("/api/jobs/neuron", json=body).json()
    assert again["status"] == "done" and again["cached"] and again["payload"] == first["payload"]
    from starlette.testclient import TestClient

    from lmscope.lab.app import create_app
    with TestClient(create_app(lab_model, MODEL, runs, {"testserver"})) as fresh:   # a restarted lab: from disk
        assert fresh.post("/api/jobs/neuron", json=body).json()["cached"]
    assert client.post("/api/jobs/neuron", json={**body, "layer": 3}).json()["field"] == "layer"
    assert client.post("/api/jobs/neuron", json={**body, "index": 10 ** 6}).json()["field"] == "index"


def test_cancel_a_running_job_and_a_queued_one(client, lab_model):
    long = {"layer": 0, "index": 1, "n_tokens": 2_000_000, "top_k": 4}
    running = client.post("/api/jobs/neuron", json=long).json()
    queued = client.post("/api/jobs/neuron", json={**long, "index": 2}).json()
    for _ in range(400):
        s = client.get(f"/api/job/{running['id']}").json()
        if s["status"] == "running" and s["progress"]["tokens"] > 0:
            break
        import time
        time.sleep(0.02)
    assert s["status"] == "running" and s["progress"]["eta_s"] is not None and s["progress"]["tokens_per_s"] > 0
    q = client.get(f"/api/job/{queued['id']}").json()
    assert q["status"] == "queued" and q["ahead"] == 1
    assert client.post(f"/api/job/{queued['id']}/cancel", json={}).json()["status"] == "cancelled"
    client.post(f"/api/job/{running['id']}/cancel", json={})
    assert wait(client, running)["status"] == "cancelled"
    assert not lab_model.has_hooks()
    assert client.post("/api/run/lens", json={"prompt": "hi"}).status_code == 200     # the model is free again
    assert not [r for r in client.state.queue.cache.records() if r["params"].get("n_tokens") == 2_000_000]


def test_sae_view(client, lab_model, runs):
    from lmscope.sae import feature_stats, load_sae
    sae_id = client.get("/api/info").json()["saes"][0]["id"]
    early = client.post("/api/run/sae_feature", json={"id": sae_id, "index": 0})
    assert early.status_code == 400 and early.json()["field"] == "id"
    job = wait(client, client.post("/api/jobs/sae_open", json={"id": sae_id, "n_tokens": 1024}).json())
    assert job["status"] == "done"
    features = job["payload"]["result"]["features"]
    stats = feature_stats(lab_model, load_sae(runs / "sae_l1", model=lab_model), "wiki", n_tokens=1024, progress=False)
    assert [f["index"] for f in features] == stats.live()
    i = features[0]["index"]
    dash = client.post("/api/run/sae_feature", json={"id": sae_id, "index": i}).json()
    from lmscope.results import to_plain
    assert dash["result"] == json.loads(json.dumps(to_plain(stats.feature(i))))
    steered = client.post("/api/run/sae_steer", json={"id": sae_id, "index": i, "prompt": "hi", "value": 50}).json()
    for payload in (job["payload"], dash, steered):
        _parses(payload)
    assert steered["result"]["clean"] != steered["result"]["steered"]
    assert client.post("/api/run/sae_feature", json={"id": sae_id, "index": 10 ** 6}).json()["field"] == "index"
    again = client.post("/api/jobs/sae_open", json={"id": sae_id, "n_tokens": 1024}).json()
    assert again["status"] == "done" and again["id"] == job["id"]           # in memory: at once


def test_circuits_find_open_and_patch(client, lab_model, runs):
    task_id = client.get("/api/info").json()["tasks"]["files"][0]["id"]
    found = wait(client, client.post("/api/jobs/circuit_find", json={"task": task_id, "n": 12, "method": "eap",
                                                                     "max_heads": 3}).json())
    assert found["status"] == "done", found["error"]
    res = found["payload"]["result"]
    assert len(res["circuit"]["heads"]) == 3 and (runs / "circuits" / res["saved"]).is_file()
    assert {n["name"] for n in res["graph"]["nodes"]} >= {f"head.{h[0]}.{h[1]}" for h in res["circuit"]["heads"]}
    circuits = client.get("/api/info").json()["circuits"]
    assert [c["name"] for c in circuits] == ["circuits/" + res["saved"]]
    opened = wait(client, client.post("/api/jobs/circuit_open", json={"id": circuits[0]["id"], "task": task_id,
                                                                      "n": 12}).json())
    assert opened["status"] == "done" and opened["payload"]["result"]["graph"]["edges"] == res["graph"]["edges"]
    patch = wait(client, client.post("/api/jobs/patching", json={"task": task_id, "n": 4}).json())
    assert patch["status"] == "done" and set(patch["payload"]["result"]["effects"]) == {"resid_pre", "attn_out",
                                                                                       "mlp_out", "z"}
    for payload in (found["payload"], opened["payload"], patch["payload"]):
        _parses(payload)
    assert _python(patch["payload"]["python"])["r"].effects == patch["payload"]["result"]["effects"]
    assert client.post("/api/jobs/patching", json={"task": "nope"}).json()["field"] == "task"


def test_papers(client, lab_model):
    intro = wait(client, client.post("/api/jobs/introspect", json={"concepts": "2", "layers": "1", "strengths": "0.5",
                                                                   "max_new_tokens": 4}).json())
    assert intro["status"] == "done"
    r = intro["payload"]["result"]
    assert len(r["trials"]) == len(r["controls"]) == 2 and r["layers"] == [1]
    icl = wait(client, client.post("/api/jobs/icl_update", json={"prompt": "ab -> ba\ncd -> dc\nef ->"}).json())
    assert icl["status"] == "done" and icl["payload"]["result"]["rank"] == 1
    _parses(intro["payload"])
    _parses(icl["payload"])
    assert _python(icl["payload"]["python"])["r"].rank == 1
    assert client.post("/api/jobs/introspect", json={"layers": "1,99"}).json()["field"] == "layers"
    assert client.post("/api/jobs/icl_update", json={"prompt": ""}).json()["field"] == "prompt"


def test_runs_listing_and_reopen(client):
    """A job reads as done only once its result is in the cache, so the runs listing holds it at once (it used to
    be written after the status changed: this test failed when run on its own)."""
    wait(client, client.post("/api/jobs/neuron", json={"layer": 2, "index": 1, "n_tokens": 512, "top_k": 2}).json())
    assert any(j["kind"] == "neuron" for j in client.get("/api/jobs").json()["jobs"])
    listing = client.get("/api/runs").json()
    record = next(c for c in listing["cached"] if c["params"].get("layer") == 2 and c["kind"] == "neuron")
    reopened = client.get(f"/api/cached/{record['key']}").json()
    assert reopened["payload"]["result"]["layer"] == 2
    assert client.get("/api/cached/nope").status_code == 404


def test_internal_errors_are_one_line_and_the_lab_lives_on(client, monkeypatch):
    from lmscope.lab import app as lab_app

    def broken(state, data):
        raise RuntimeError("secret detail /etc/passwd")
    monkeypatch.setitem(lab_app.SHORT, "lens", broken)
    r = client.post("/api/run/lens", json={"prompt": "hi"})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the lab's log",
                                                 "field": None}
    monkeypatch.undo()
    assert client.post("/api/run/lens", json={"prompt": "hi"}).status_code == 200
