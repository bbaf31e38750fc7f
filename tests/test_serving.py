"""The serving core (framework/serving.py): the loopback-or-token rule, the bearer check, offline
docs, and the server's lifecycle."""

from __future__ import annotations

import gc
import re

import httpx
import pytest
from fastapi import Depends

from framework import UserError, serving


def test_loopback_needs_no_token_anything_else_does():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serving.is_loopback(host)
        assert serving.check_token(host, None, "set X_TOKEN") is None
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        assert not serving.is_loopback(host)
        with pytest.raises(UserError, match=f"serve.host={re.escape(host)} is not a loopback address: set X_TOKEN"):
            serving.check_token(host, None, "set X_TOKEN")
    assert serving.check_token("0.0.0.0", "s" * 16, "set X_TOKEN") == "s" * 16
    with pytest.raises(UserError, match="too short"):
        serving.check_token("127.0.0.1", "short", "set X_TOKEN")


def test_an_app_with_offline_docs_and_a_guarded_endpoint_served_until_closed():
    app = serving.new_app("Test", token="t" * 20)

    @app.post("/write", dependencies=[Depends(serving.require_bearer("set X_TOKEN"))])
    def write() -> dict:
        return {"ok": True}

    with serving.Server(app, serving.bind("127.0.0.1", 0)) as server, httpx.Client(base_url=server.url) as c:
        docs = c.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in docs and "/docs-assets/swagger-ui.css" in docs
        assert not re.search(r"https?://", docs)  # no CDN, no external favicon
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert c.get(f"/docs-assets/{asset}").status_code == 200
        assert c.get("/redoc").status_code == 404  # ReDoc would load from a CDN
        refused = c.post("/write")
        assert refused.status_code == 401 and "X_TOKEN" in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert c.post("/write", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/write", headers={"Authorization": f"Bearer {'t' * 20}"}).json() == {"ok": True}
        url = server.url
        assert gc.get_freeze_count() > 0  # what was loaded before serving is out of the collector's way
    assert gc.get_freeze_count() == 0  # ... and back in it once the server is closed
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/docs", timeout=2)  # closed: nothing listens any more
    assert server.stopped_by == "duration elapsed"


def test_a_port_in_use_is_one_line():
    sock = serving.bind("127.0.0.1", 0)
    try:
        with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*serve\.port"):
            serving.bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
