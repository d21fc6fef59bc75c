"""The lab refuses foreign hosts and origins, never takes a path from the browser, and binds loopback by default."""
import pytest

from lmscope.lab.security import allowed_hosts


@pytest.mark.parametrize("headers", [{"host": "evil.example"}, {"host": "127.0.0.1.evil.example:8765"},
                                     {"host": "127.0.0.1:9999"}])
def test_foreign_host_is_refused(client, headers):
    r = client.get("/api/info", headers=headers)
    assert r.status_code == 403 and "Host" in r.json()["error"]
    assert client.post("/api/run/lens", json={"prompt": "hi"}, headers=headers).status_code == 403


def test_cross_origin_and_cross_site_requests_are_refused(client):
    assert client.post("/api/run/lens", json={"prompt": "hi"}, headers={"origin": "http://evil.example"}
                       ).status_code == 403
    assert client.post("/api/run/lens", json={"prompt": "hi"}, headers={"origin": "null"}).status_code == 403
    assert client.get("/api/info", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert client.post("/api/run/lens", json={"prompt": "hi"}, headers={"sec-fetch-site": "same-site"}
                       ).status_code == 403
    # a form post (no JSON) from anywhere is refused, and so is a referer from another site
    assert client.post("/api/jobs/neuron", content=b"layer=0", headers={"content-type": "text/plain"}
                       ).status_code == 403
    assert client.post("/api/run/lens", json={"prompt": "hi"}, headers={"referer": "http://evil.example/x"}
                       ).status_code == 403
    # the lab's own page
    ok = client.post("/api/run/lens", json={"prompt": "hi"}, headers={"origin": "http://testserver",
                                                                       "sec-fetch-site": "same-origin"})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/static/../pyproject.toml", "/static/..%2f..%2fpyproject.toml",
                                  "/static/%2e%2e/app.py", "/static/index.html/..", "/static/app.py",
                                  "/api/runs/..%2f..%2fetc%2fpasswd", "/api/runs/r..", "/api/runs/%2fetc%2fpasswd",
                                  "/api/cached/..%2f..%2fetc%2fpasswd", "/api/cached/.."])
def test_path_traversal_is_refused(client, path):
    r = client.get(path)
    assert r.status_code in (403, 404)
    assert "root:" not in r.text and "[build-system]" not in r.text


@pytest.mark.parametrize("kind, body", [("sae_open", {"id": "../../etc"}), ("sae_open", {"id": "/etc/passwd"}),
                                        ("circuit_open", {"id": "../runs/x.json"}),
                                        ("patching", {"task": "/etc/passwd"}), ("patching", {"task": "../toy.jsonl"}),
                                        ("circuit_find", {"task": "tasks/toy.jsonl"})])
def test_jobs_take_ids_never_paths(client, kind, body):
    r = client.post(f"/api/jobs/{kind}", json=body)
    assert r.status_code == 400 and r.json()["field"] in ("id", "task")


def test_runs_are_addressed_by_id_only(client, runs, tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": 1}')
    (runs / "link.json").symlink_to(outside)            # a link out of the runs folder is not listed
    try:
        files = client.get("/api/runs").json()["files"]
        assert "link.json" not in [f["name"] for f in files]
        circuit_like = [f for f in files if f["kind"] in ("result", "circuit", "task")]
        for f in circuit_like:
            assert client.get(f"/api/runs/{f['id']}").status_code == 200
    finally:
        (runs / "link.json").unlink()


def test_allowed_hosts():
    assert allowed_hosts("127.0.0.1", 8765) == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert allowed_hosts("10.0.0.5", 9000) == {"10.0.0.5:9000"}
