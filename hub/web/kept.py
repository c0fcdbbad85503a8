"""The caller's kept results: my requests at every site (and those shared with me), each
result to download in the formats it fits, and sharing with a colleague or a group.

Everything goes through the console's client (:mod:`hub.results_api`): listing, fetching
and sharing are signed by the user's key, as from the CLI, and every share and fetch is
an event in the serving node's log.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hub.errors import ConfigError
from hub.web.app import render
from hub.web.calls import CallDesk

__all__ = ["routes"]

#: Formats offered for download, by the suffix of the file written.
DOWNLOADS = {"json": ".json", "csv": ".csv", "nc": ".nc"}


def _desk(request: Request) -> CallDesk:
    desk: CallDesk = request.app.state.desk
    return desk


async def _records(request: Request) -> dict[str, Any]:
    client = await _desk(request).client()
    found = await client.requests()
    return {
        "requests": [r.model_dump(mode="json", exclude={"sharer_key"}) for r in found],
        "unreachable": found.unreachable,
    }


async def requests_page(request: Request) -> Response:
    data = await _records(request)
    return render(request, "requests.html", **data)


async def api_requests(request: Request) -> Response:
    return JSONResponse(await _records(request))


async def download(request: Request) -> Response:
    """The kept result of a request, fetched again and written as ``?format=``."""
    from hub.result_formats import render as write

    site, rid = request.path_params["site"], request.path_params["request_id"]
    fmt = request.query_params.get("format", "json")
    suffix = DOWNLOADS.get(fmt)
    if suffix is None:
        raise ConfigError(f"unknown format {fmt!r}", hint=f"one of {', '.join(DOWNLOADS)}")
    desk = _desk(request)
    client = await desk.client()
    handle = await client.result(rid, site=site)
    value = await handle.result()
    path = desk.workdir / f"{rid}-{secrets.token_hex(4)}{suffix}"
    await asyncio.to_thread(write, value, fmt, path)
    return FileResponse(path, filename=f"{rid}{suffix}")


async def _share(request: Request, withdraw: bool) -> Response:
    site, rid = request.path_params["site"], request.path_params["request_id"]
    async with request.form() as form:
        principal = str(form.get("principal") or "").strip()
    if not principal:
        raise ConfigError("share with whom? give name@site or group:NAME")
    client = await _desk(request).client()
    if withdraw:
        answer = await client.unshare(site, rid, principal)
    else:
        answer = await client.share(site, rid, principal)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(answer.model_dump(mode="json"))
    return RedirectResponse("/requests", 303)


async def share(request: Request) -> Response:
    """POST ``principal``: wrap the result's key for them (nothing is uploaded again)."""
    return await _share(request, withdraw=False)


async def unshare(request: Request) -> Response:
    """POST ``principal``: withdraw a share; their later fetches are refused."""
    return await _share(request, withdraw=True)


def routes() -> list[Route]:
    """The kept-results routes."""
    base = "/api/requests/{site}/{request_id}"
    return [
        Route("/requests", requests_page),
        Route("/api/requests", api_requests),
        Route(base + "/result", download),
        Route(base + "/share", share, methods=["POST"]),
        Route(base + "/unshare", unshare, methods=["POST"]),
    ]
