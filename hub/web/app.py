"""The console's ASGI app (Starlette): pages rendered from Jinja2 templates, and the JSON
endpoints they and scripts use. :func:`create_app` takes how to connect the client."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hub.client import Client
from hub.errors import ArgumentError, FederationError, error_code, service_status
from hub.subjects import parse_address, validate_module, validate_site
from hub.web import calls
from hub.web.calls import Calls
from hub.web.forms import form_fields

__all__ = ["COOKIE", "HEADER", "create_app"]

HERE = Path(__file__).parent
#: The cookie and the header that carry the console's token.
COOKIE, HEADER = "fedhub_token", "X-Fedhub-Token"
#: How long the modules page collects discovery answers (seconds).
DISCOVERY_WINDOW = 0.5

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(), auto_reload=False
)


def create_app(
    connect: Callable[[], Awaitable[Client]],
    token: str,
    on_ready: Callable[[], None] | None = None,
    *,
    home: Path | None = None,
) -> Starlette:
    """The console app; ``connect`` makes its client at start-up (closed at shutdown),
    ``on_ready`` is called once it is connected; ``home`` is the key store (its pinned site
    keys are what audits trust)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with await connect() as client:
            app.state.client = client
            app.state.home = home
            app.state.calls = Calls()
            if on_ready is not None:
                on_ready()
            yield

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            given = request.query_params.get("token")
            if given is not None and secrets.compare_digest(given, token):
                # the printed URL: keep the token in a cookie, drop it from the address
                target = request.url.remove_query_params("token")
                response = RedirectResponse(str(target), status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            offered = request.headers.get(HEADER) or request.cookies.get(COOKIE) or ""
            if not secrets.compare_digest(offered, token):
                return JSONResponse(
                    {"error": "Unauthorized", "message": "open the URL `fedhub web` printed"},
                    status_code=401,
                )
            return await endpoint(request)

        return run

    routes = [
        Route("/", guarded(_home)),
        Route("/modules", guarded(_modules_page)),
        Route("/modules/{site}/{module}", guarded(_module_page)),
        Route("/api/modules", guarded(_modules_json)),
        Route("/api/modules/{site}/{module}", guarded(_module_json)),
        Route("/api/call/{address}", guarded(_call_json), methods=["POST"]),
        Route("/api/submit/{address}", guarded(_submit_json), methods=["POST"]),
        Route("/api/requests", guarded(_requests_json)),
        Route("/api/requests/{request_id}", guarded(_request_json)),
        Route("/api/requests/{request_id}/events", guarded(_request_events)),
        Route("/api/requests/{request_id}/result.json", guarded(_request_result)),
        Route("/requests", guarded(_requests_page)),
        Route("/audit", guarded(_audit_page)),
        Route("/api/audit", guarded(_audit_json), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def _page(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context))


def _error(exc: FederationError) -> JSONResponse:
    status = 400 if isinstance(exc, ArgumentError) else service_status(error_code(exc))
    body = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    return JSONResponse(body, status_code=status if status >= 400 else 500)


async def _home(request: Request) -> Response:
    return RedirectResponse("/modules", status_code=303)


async def modules(client: Client) -> list[dict[str, Any]]:
    """Modules answering discovery: site, module, description, nodes, functions."""
    from hub.cli_lookup import discover, group_answers

    return group_answers(await discover(client.nc, DISCOVERY_WINDOW), None)


async def module(client: Client, site: str, module: str) -> dict[str, Any]:
    """A module's verified info, with each function's form fields."""
    name = module
    mi = await client.module_info(validate_site(site), validate_module(name))
    functions = []
    for fname, fn in sorted(mi.functions.items()):
        functions.append(
            {
                "name": fname,
                "address": f"{site}.{name}.{fname}",
                "signature": fn.signature,
                "summary": fn.summary,
                "description": fn.description,
                "arguments": fn.arguments,
                "returns": fn.returns,
                "fields": form_fields(fn.arguments),
            }
        )
    return {
        "site": site,
        "module": name,
        "node": mi.node,
        "doc": mi.info.doc,
        "functions": functions,
        "skipped": mi.info.skipped,
    }


async def _modules_page(request: Request) -> Response:
    return _page("modules.html", modules=await modules(_client(request)))


async def _modules_json(request: Request) -> Response:
    return JSONResponse(await modules(_client(request)))


async def _module_page(request: Request) -> Response:
    try:
        data = await module(_client(request), **request.path_params)
    except FederationError as exc:
        return _page("error.html", error=exc.diagnostics())
    return _page("module.html", **data)


async def _module_json(request: Request) -> Response:
    try:
        return JSONResponse(await module(_client(request), **request.path_params))
    except FederationError as exc:
        return _error(exc)


async def _call_json(request: Request) -> Response:
    """``POST /api/call/<address>`` with ``{"arguments": {...}}``: the result as JSON."""
    from hub.cli_calls import jsonable

    try:
        body = await request.json()
    except ValueError:
        return _error(ArgumentError("the body is not JSON", hint='send {"arguments": {...}}'))
    arguments = body.get("arguments") if isinstance(body, dict) else None
    if not isinstance(arguments, dict):
        return _error(ArgumentError("no arguments object", hint='send {"arguments": {...}}'))
    try:
        address = parse_address(request.path_params["address"]).address
        handle = await _client(request).submit(address, arguments)
        result = await handle.result()
    except FederationError as exc:
        return _error(exc)
    try:
        text = jsonable_result(result, jsonable)
    except TypeError as exc:
        return _error(ArgumentError(f"the result cannot be shown: {exc}"))
    return JSONResponse({"request_id": handle.request_id, "result": text})


def _calls(request: Request) -> Calls:
    calls: Calls = request.app.state.calls
    return calls


def _to_json(value: Any) -> Any:
    from hub.cli_calls import jsonable

    return jsonable_result(value, jsonable)


async def _submit_json(request: Request) -> Response:
    try:
        address = parse_address(request.path_params["address"]).address
    except FederationError as exc:
        return _error(exc)
    return await calls.submit(request, _calls(request), address, _to_json)


async def _requests_json(request: Request) -> Response:
    records = sorted(_calls(request).records.values(), key=lambda r: -r.submitted)
    return JSONResponse([r.to_json() for r in records])


async def _request_json(request: Request) -> Response:
    try:
        return JSONResponse(_calls(request).get(request.path_params["request_id"]).to_json())
    except FederationError as exc:
        return _error(exc)


async def _request_events(request: Request) -> Response:
    return calls.stream(_calls(request), request.path_params["request_id"])


async def _request_result(request: Request) -> Response:
    try:
        return calls.download(_calls(request).get(request.path_params["request_id"]))
    except FederationError as exc:
        return _error(exc)


async def _requests_page(request: Request) -> Response:
    records = sorted(_calls(request).records.values(), key=lambda r: -r.submitted)
    return _page("requests.html", requests=[r.to_json() for r in records])


async def _audit_page(request: Request) -> Response:
    return _page("audit.html")


async def _audit_json(request: Request) -> Response:
    """``POST /api/audit`` with the log's bytes: the audit report (``ok``, ``first`` ...)."""
    from hub.logfile import LogUnreadableError
    from hub.web.audit import audit_upload

    try:
        return JSONResponse(await audit_upload(request, request.app.state.home))
    except LogUnreadableError as exc:
        return _error(ArgumentError(exc.message, hint=exc.hint))
    except FederationError as exc:
        return _error(exc)


def jsonable_result(value: Any, default: Callable[[Any], Any]) -> Any:
    """``value`` made of JSON types only (numpy, xarray, dates ... converted)."""
    import json

    return json.loads(json.dumps(value, default=default))
