"""The auditor's pages: audit a log and see the verdict, the checkpoints, each request's
lifecycle and the events around the first bad one.

The log comes as an upload (a SQLite log or a JSON Lines export), as a path on this
machine, or as a site's copy at the hub (``fedhub web --hub URL``, as ``fedhub audit
--site``, with what the other sites' witnesses cosigned); trust comes from the site keys
pinned in the console's key store (or, marked unsafe as in the CLI, from the log itself).
The audit is the one ``fedhub audit`` runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hub.errors import ConfigError, NotFoundError
from hub.web.app import ConsoleSettings, render

__all__ = ["AuditShelf", "AuditView", "routes", "run_audit"]

#: Events shown before and after the first bad one.
AROUND = 8
#: Requests whose lifecycles are listed (the newest).
LIFECYCLES = 200
#: Audits the console keeps in memory.
KEEP = 20


@dataclass
class AuditView:
    """One audit as the page shows it."""

    audit_id: str
    name: str
    report: dict[str, Any]
    verdict: str
    seconds: float
    window: list[dict[str, Any]] = field(default_factory=list)
    lifecycles: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The audit for ``/api/audits/<id>``."""
        return {
            "audit_id": self.audit_id,
            "name": self.name,
            "seconds": self.seconds,
            "verdict": self.verdict,
            "report": self.report,
            "events_around_first_bad": self.window,
            "lifecycles": self.lifecycles,
        }


class AuditShelf:
    """The last audits made in this console, by id."""

    def __init__(self) -> None:
        self._views: OrderedDict[str, AuditView] = OrderedDict()

    def put(self, view: AuditView) -> None:
        """Keep ``view`` (dropping the oldest beyond :data:`KEEP`)."""
        self._views[view.audit_id] = view
        while len(self._views) > KEEP:
            self._views.popitem(last=False)

    def get(self, audit_id: str) -> AuditView:
        """The audit ``audit_id`` or NotFoundError."""
        view = self._views.get(audit_id)
        if view is None:
            raise NotFoundError(f"no audit {audit_id} in this console (it keeps the last {KEEP})")
        return view

    def all(self) -> list[AuditView]:
        """Newest first."""
        return list(reversed(self._views.values()))


def run_audit(path: Path, name: str, trusted: dict[str, bytes] | None) -> AuditView:
    """Audit the log at ``path`` (blocking): the report plus what the page shows of it."""
    from hub.audit import audit_events
    from hub.logfile import iter_log

    started = time.perf_counter()
    report = audit_events(iter_log(path, max_seconds=30.0), trusted_sites=trusted)
    return _view(report, path, name, round(time.perf_counter() - started, 3))


def run_hub_audit(
    settings: ConsoleSettings, site: str, trusted: dict[str, bytes] | None, folder: Path
) -> list[AuditView]:
    """Audit ``site``'s logs from the hub's copy (blocking), as ``fedhub audit --site``:
    one view per log, with what the witnesses said."""
    from hub.fedaudit import audit_hub

    if not settings.hub_url:
        raise ConfigError("this console has no hub", hint="start it with --hub URL")
    started = time.perf_counter()
    [result] = audit_hub(
        settings.hub_url, [site], trusted, creds=settings.hub_creds, ca=settings.ca, folder=folder
    )
    seconds = round(time.perf_counter() - started, 3)
    if not result.logs:
        raise NotFoundError(result.problems()[0], hint="is the hub copying this site's events?")
    views = []
    for log, report in result.logs:
        extra = result.report_lines(log)
        name = f"{site} from the hub ({log.log_id or log.subject})"
        views.append(_view(report, log.path, name, seconds, [*extra, result.summary()]))
    return views


def _view(
    report: Any, path: Path, name: str, seconds: float, extra: list[str] | None = None
) -> AuditView:
    from hub.audit import verdict

    first = report.first
    window, lifecycles = _read_events(path, first.position if first else None)
    text = verdict(report, Path(name), seconds)
    return AuditView(
        audit_id=secrets.token_urlsafe(8),
        name=name,
        report=report.to_json(),
        verdict="\n".join([text, *(extra or [])]),
        seconds=seconds,
        window=window,
        lifecycles=lifecycles,
    )


def _read_events(path: Path, bad: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events around position ``bad`` and the newest requests' lifecycles, in one pass."""
    from hub.logfile import LogUnreadableError, iter_log

    window: list[dict[str, Any]] = []
    requests: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    try:
        for raw in iter_log(path, max_seconds=30.0):
            row = _row(raw.position, raw.body)
            if bad is not None and abs(raw.position - bad) <= AROUND:
                row["bad"] = raw.position == bad
                window.append(row)
            rid = row.get("request_id")
            if rid:
                steps = requests.pop(rid, [])
                steps.append({k: row[k] for k in ("seq", "type", "time", "position")})
                requests[rid] = steps  # newest request last
                if len(requests) > LIFECYCLES:
                    requests.popitem(last=False)
    except LogUnreadableError:
        pass  # the report already says why
    lifecycles = [{"request_id": rid, "steps": steps} for rid, steps in requests.items()]
    lifecycles.reverse()
    return window, lifecycles


def _row(position: int, body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"position": position, "seq": None, "type": "(unreadable)", "time": None}
    if not isinstance(parsed, dict):
        return {"position": position, "seq": None, "type": "(not an object)", "time": None}
    data = parsed.get("data") if isinstance(parsed.get("data"), dict) else {}
    return {
        "position": position,
        "seq": parsed.get("seq"),
        "type": parsed.get("type"),
        "time": parsed.get("time"),
        "request_id": data.get("request_id") if isinstance(data, dict) else None,
    }


def _trusted(
    settings: ConsoleSettings, chosen: list[str], trust_log: bool
) -> dict[str, bytes] | None:
    from hub.keys import KeyStore

    if trust_log:
        return None
    pinned = {
        k.identity.removeprefix("site:"): k.sign_key
        for k in KeyStore(settings.home).list()
        if k.identity.startswith("site:")
    }
    trusted = {site: key for site, key in pinned.items() if not chosen or site in chosen}
    if not trusted:
        raise ConfigError(
            "no site key is pinned in the console's key store, so nothing can be trusted",
            hint="import the site's key (fedhub keys import), or tick 'trust the log's own keys'",
        )
    return trusted


def _pinned(settings: ConsoleSettings) -> list[str]:
    from hub.keys import KeyStore

    return sorted(
        k.identity.removeprefix("site:")
        for k in KeyStore(settings.home).list()
        if k.identity.startswith("site:")
    )


def _local_log(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"no log at {path}")
    return path


async def audit_page(request: Request) -> Response:
    settings: ConsoleSettings = request.app.state.settings
    shelf: AuditShelf = request.app.state.audits
    return render(
        request, "audit.html", sites=_pinned(settings), audits=shelf.all(), hub=settings.hub_url
    )


async def api_audit(request: Request) -> Response:
    """POST ``log`` (a file) or ``path`` (on this machine), ``site`` (repeatable) and
    ``trust_log``; answers with the audit (JSON) or, from the form, its page."""
    settings: ConsoleSettings = request.app.state.settings
    uploaded = False
    async with request.form() as form:
        upload = form.get("log")
        trusted = _trusted(
            settings,
            [str(s) for s in form.getlist("site")],
            str(form.get("trust_log") or "") in ("on", "true", "1"),
        )
        desk = request.app.state.desk
        if isinstance(upload, UploadFile) and upload.filename:
            path = desk.workdir / f"audit-{secrets.token_hex(8)}"
            with path.open("wb") as out:
                while chunk := await upload.read(1 << 20):
                    out.write(chunk)
            name, uploaded = upload.filename, True
        elif form.get("path"):
            path = await asyncio.to_thread(_local_log, str(form.get("path")))
            name = str(path)
        elif form.get("hub_site"):
            folder = desk.workdir / f"hub-{secrets.token_hex(8)}"
            views = await asyncio.to_thread(
                run_hub_audit, settings, str(form.get("hub_site")), trusted, folder
            )
            for view in views:
                request.app.state.audits.put(view)
            return _answer(request, views[0])
        else:
            raise ConfigError(
                "give a log: upload a file, name a path on this machine, or a site at the hub"
            )
    try:
        view = await asyncio.to_thread(run_audit, path, name, trusted)
    finally:
        if uploaded:
            path.unlink(missing_ok=True)
    request.app.state.audits.put(view)
    return _answer(request, view)


def _answer(request: Request, view: AuditView) -> Response:
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(view.to_json(), 201)
    return RedirectResponse(f"/audits/{view.audit_id}", 303)


async def report_page(request: Request) -> Response:
    view = request.app.state.audits.get(request.path_params["audit_id"])
    return render(request, "audit_report.html", view=view, report=view.report)


async def api_report(request: Request) -> Response:
    return JSONResponse(request.app.state.audits.get(request.path_params["audit_id"]).to_json())


def routes() -> list[Route]:
    """The auditor's routes."""
    return [
        Route("/audit", audit_page),
        Route("/api/audits", api_audit, methods=["POST"]),
        Route("/audits/{audit_id}", report_page),
        Route("/api/audits/{audit_id}", api_report),
    ]
