"""Host and Origin checks for the lab (an ASGI middleware).

A page on another site must not be able to drive the lab: a DNS-rebinding page arrives with a foreign Host header,
a cross-site request with a foreign Origin (or Sec-Fetch-Site: cross-site). Every request is refused (403, a JSON
error) unless its Host is one the lab serves, and every request that carries an Origin must come from one of those
hosts. A POST must carry JSON (a plain HTML form cannot send application/json across sites without a preflight,
which the lab never answers).
"""
from __future__ import annotations

import json


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host header values the lab answers: the bound host, and the loopback names when bound to loopback."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())


class HostOriginGuard:
    """Refuse requests whose Host, Origin or Sec-Fetch-Site is not the lab's own."""

    def __init__(self, app, hosts: set[str]):
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.origins = {f"http://{h}" for h in self.hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self.problem(scope["method"], headers)
        if problem:
            body = json.dumps({"error": problem}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def problem(self, method: str, headers: dict[str, str]) -> "str | None":
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return "refused: unknown Host header (the lab answers only its own address)"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return "refused: cross-origin request"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "refused: cross-site request"
        if method not in ("GET", "HEAD"):
            if origin is None and headers.get("sec-fetch-site") is None and "referer" in headers:
                referer = headers["referer"].lower()
                if not any(referer.startswith(o + "/") for o in self.origins):
                    return "refused: cross-origin request"
            if not headers.get("content-type", "").lower().startswith("application/json"):
                return "refused: requests that change state must be JSON"
        return None
