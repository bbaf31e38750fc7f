"""Serving a plugin's FastAPI app: the parts every HTTP mode shares.

- :func:`check_token`: loopback binds may go without a token; any other address needs a bearer
  token of at least 16 characters, or the mode refuses to start (one line, exit 2);
- :func:`require_bearer`: the FastAPI dependency that guards an app's write/generate endpoints;
- :func:`new_app`: a FastAPI app whose /docs page is Swagger UI served from this machine (the
  files of the ``swagger-ui-py`` package), with no CDN and no external favicon; no ReDoc;
- :func:`bind` and :class:`Server`: listen (a busy port is a one-line error), run uvicorn in a
  thread, wait for Ctrl-C, SIGTERM or a duration, then let uvicorn finish its requests and stop.

A plugin brings its own routers, pages and what must start before and stop after the server.
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import logging
import signal
import socket
import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from framework.errors import UserError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
DOCS_ASSETS = "/docs-assets"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def check_token(host: str, token: str | None, how: str) -> str | None:
    """The bearer token to require (None: none needed on loopback). ``how`` tells the user how
    to set one (``"set MUSIC_STUDIO_TOKEN (or serve.token)"``)."""
    token = str(token) if token else None
    if not is_loopback(host) and not token:
        raise UserError(f"serve.host={host} is not a loopback address: {how} so that its endpoints need a "
                        "bearer token; refusing to start without one")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"the API token is too short ({len(token)} characters); use at least {MIN_TOKEN_CHARS}")
    return token


def bearer_ok(authorization: str, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``Bearer <token>`` (any value when no token is set)."""
    if not token:
        return True
    scheme, _, supplied = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


def require_bearer(how: str):
    """A FastAPI dependency: with ``app.state.token`` set, the request needs ``Authorization: Bearer <token>``."""
    async def dependency(request: Request) -> None:  # async: no thread-pool hop for a header check
        if not bearer_ok(request.headers.get("authorization", ""), getattr(request.app.state, "token", None)):
            raise HTTPException(401, f"this endpoint needs `Authorization: Bearer <token>` ({how})",
                                headers={"WWW-Authenticate": "Bearer"})

    return dependency


def swagger_ui_dir() -> Path:
    import swagger_ui  # the swagger-ui-py package ships Swagger UI's built files

    return Path(swagger_ui.__file__).with_name("static")


def new_app(title: str, description: str = "", version: str = "1.0", token: str | None = None, **fastapi) -> FastAPI:
    """A FastAPI app (``fastapi``: more of its arguments) with offline docs at /docs (OpenAPI at
    /openapi.json) and the bearer token for :func:`require_bearer` in ``state.token``."""
    app = FastAPI(title=title, description=description, version=version, docs_url=None, redoc_url=None, **fastapi)
    app.state.token = token
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use or an address not on this machine is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another with serve.port=...)")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    """uvicorn in a thread of this process, stopped by Ctrl-C, SIGTERM or :meth:`wait`'s duration.

    ::

        with Server(app, bind(host, port)) as server:
            print(f"open {server.url}/")
            server.wait(duration)          # returns on a signal or after duration seconds
        print(server.stopped_by)           # "SIGTERM", "SIGINT" or "duration elapsed"

    Leaving the block lets uvicorn finish the requests in flight (``graceful_s``), then joins it.
    A second Ctrl-C or SIGTERM while waiting ends the process the hard way.
    """

    def __init__(self, app, sock: socket.socket, graceful_s: float = 5.0):
        import uvicorn

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.port = port
        self.url = url(host, port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, log_level="warning",
                                                    timeout_graceful_shutdown=graceful_s, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        self.stop = threading.Event()
        self.received: list[str] = []
        self._previous: dict = {}

    def _on_signal(self, signum, frame):
        self.received.append(signal.Signals(signum).name)
        self.stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C / SIGTERM ends it the hard way

    @property
    def stopped_by(self) -> str:
        return self.received[0] if self.received else "duration elapsed"

    def start(self) -> "Server":
        """Serve in the background until :meth:`close` (``with Server(...)`` calls both)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        # Everything loaded so far (torch, scikit-learn, the model: ~550,000 objects for the gas
        # service) lives as long as the process. Left to the collector, every full collection walks
        # it all and holds the GIL meanwhile (0.35 s measured at start-up), and one comes each time
        # the survivors grow by a quarter. Frozen, collections see only what serving creates.
        gc.collect()
        gc.freeze()
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.02)
        if not self.thread.is_alive():
            self.close()
            raise UserError(f"the HTTP server on {self.url} failed to start (see the log)")
        return self

    def wait(self, duration: float | None = None) -> None:
        self.stop.wait(None if duration is None else float(duration))

    def close(self) -> None:
        """Let uvicorn finish its requests and stop; restore the signal handlers. Safe to call twice."""
        self.server.should_exit = True
        if self.thread.ident is not None:
            self.thread.join(10)
        self.sock.close()
        gc.unfreeze()
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        log.info("stopping the HTTP server (%s)", self.stopped_by)
        self.close()
