"""The console's application: settings, the token check, templates, and serving it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from hub.errors import FederationError

__all__ = ["ConsoleSettings", "OperatorView", "create_app", "render", "serve"]

log = structlog.get_logger(__name__)

#: Name of the cookie that carries the token after the first visit.
TOKEN_COOKIE = "fedhub_console"  # noqa: S105 (a cookie name, not a secret)
#: Hosts the console answers to (a page on another name is refused: DNS rebinding).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


class OperatorView(Protocol):
    """What the operator pages read of one node (``fedhub-node web`` provides it)."""

    async def status(self) -> dict[str, Any]:
        """Identity, log head, requests by state, queue depth, calls in flight."""
        ...

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events, newest first: seq, type, time, request id."""
        ...

    async def series(self) -> dict[str, Any]:
        """Per-minute calls by outcome and latency, and queue depth samples."""
        ...


@dataclass
class ConsoleSettings:
    """How the console connects and who it acts as (defaults as for the CLI)."""

    url: str | None = None
    identity: str | None = None
    home: Path | None = None
    passphrase: str | None = None
    creds: str | None = None
    ca: str | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    operator: OperatorView | None = None
    #: The hub whose copies of the sites' logs the auditor pages read (None: none), and
    #: the NKey to read them with (the CA is :attr:`ca`).
    hub_url: str | None = None
    hub_creds: str | None = None
    #: Where downloaded results and uploaded files are kept while the console runs.
    workdir: Path | None = None


_templates = Environment(
    loader=PackageLoader("hub.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` with the console's common context."""
    settings: ConsoleSettings = request.app.state.settings
    page = _templates.get_template(name).render(
        request=request, operator=settings.operator is not None, **context
    )
    return HTMLResponse(page, status_code=status_code)


class _TokenCheck(BaseHTTPMiddleware):
    """Only local hosts, and only with the token (query ``?token=``, cookie, or
    ``Authorization: Bearer``). A first visit with the token sets the cookie and redirects
    to the same page without it, so the token does not stay in the address bar."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOCAL_HOSTS:
            return JSONResponse({"error": f"this console answers on 127.0.0.1, not {host}"}, 403)
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        expected: str = request.app.state.settings.token
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given, expected):
            target = request.url.remove_query_params("token")
            response: Response = RedirectResponse(
                str(target.path) + (f"?{target.query}" if target.query else ""), 303
            )
            response.set_cookie(
                TOKEN_COOKIE, expected, httponly=True, samesite="strict", secure=False
            )
            return response
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(cookie, expected) or hmac.compare_digest(bearer, expected):
            return await call_next(request)
        return JSONResponse(
            {"error": "open the console with the link `fedhub web` printed (it has the token)"},
            401,
        )


async def _federation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FederationError)
    body = {"error": exc.message, "code": type(exc).__name__}
    if exc.hint:
        body["hint"] = exc.hint
    if request.url.path.startswith("/api/"):
        return JSONResponse(body, 400)
    return render(request, "error.html", error=body, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: one line for the person, the traceback in the console's log."""
    log.exception("console.failed", path=request.url.path)
    body = {"error": f"the console failed: {type(exc).__name__}: {exc}", "code": "internal"}
    if request.url.path.startswith("/api/"):
        return JSONResponse(body, 500)
    return render(request, "error.html", error=body, status_code=500)


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console app; its routes come from the caller, auditor and operator modules."""
    from hub.web import audits, calls, kept, operate

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        async with calls.CallDesk(settings) as desk, operate.Sampler(settings.operator) as s:
            app.state.desk = desk
            app.state.sampler = s
            app.state.audits = audits.AuditShelf()
            yield

    routes = [
        *calls.routes(),
        *kept.routes(),
        *audits.routes(),
        *operate.routes(),
        Mount("/static", StaticFiles(packages=[("hub.web", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_TokenCheck)],
        exception_handlers={FederationError: _federation_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def serve(
    settings: ConsoleSettings,
    port: int = 0,
    ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Serve the console on 127.0.0.1:``port`` (0: a free one) until cancelled; ``ready``
    gets the URL with the token once it listens."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            return
        await asyncio.sleep(0.05)
    if ready is not None:
        outcome = ready(f"http://127.0.0.1:{port}/?token={settings.token}")
        if outcome is not None:
            await outcome
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True  # a clean shutdown: lifespan exit, connections closed
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10.0)
        raise
