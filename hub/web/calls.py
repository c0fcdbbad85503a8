"""The caller's pages: sites and modules, a form per function, calls with live progress.

:class:`CallDesk` holds the console's one :class:`~hub.client.Client` (connected on first
use, so the auditor pages work without NATS) and the calls made from the browser. A call's
arguments come from its form: files for array and bytes parameters (read like the CLI's
``key=@file``), JSON text for numbers, lists and objects, plain text for strings.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from hub.errors import ConfigError, FederationError, NotFoundError
from hub.lifecycle import RequestState
from hub.web.app import ConsoleSettings, render

__all__ = ["CallDesk", "routes"]

#: x-fedhub-type values that the form takes as a file.
FILE_TYPES = frozenset({"numpy.ndarray", "xarray.DataArray", "xarray.Dataset", "bytes"})
#: Result formats offered for download, by suffix.
RESULT_FORMATS = {"json": ".json", "nc": ".nc", "npy": ".npy", "bin": ".bin"}


@dataclass
class CallJob:
    """One call made from the console, as the browser sees it."""

    request_id: str
    address: str
    site: str
    started: float
    progress: float | None = None
    message: str = ""
    transfers: dict[str, dict[str, float]] = field(default_factory=dict)
    #: running while the call waits, then how it ended, as the caller saw it
    state: RequestState = RequestState.RUNNING
    error: dict[str, str] | None = None
    result: Any = None
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The job for ``/api/calls/<id>``."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "address": self.address,
            "site": self.site,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "transfers": self.transfers,
            "seconds": round((self.finished or time.time()) - self.started, 3),
            "error": self.error,
        }
        if self.state == RequestState.COMPLETED:
            out["result_type"] = type(self.result).__name__
            out["result_preview"] = preview(self.result)
        return out


def preview(value: Any, limit: int = 2000) -> str:
    """A short text of a result for the page."""
    from hub.cli_calls import jsonable

    if isinstance(value, str | int | float | bool) or value is None:
        text = json.dumps(value)
    else:
        try:
            text = json.dumps(value, default=jsonable, indent=1)
        except (TypeError, ValueError):
            text = repr(value)
        if len(text) > limit and hasattr(value, "dims"):
            text = repr(value)
    return text if len(text) <= limit else text[:limit] + " …"


class CallDesk:
    """The console's client and its calls."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.jobs: dict[str, CallJob] = {}
        self._client: Any = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.workdir = Path(settings.workdir or tempfile.mkdtemp(prefix="fedhub-console-"))
        self._own_workdir = settings.workdir is None
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def __aenter__(self) -> CallDesk:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def client(self) -> Any:
        """The connected client (connecting on first use)."""
        async with self._connecting:
            if self._client is None:
                from hub.client import Client
                from hub.defaults import default_identity, default_url
                from hub.keys import KeyStore

                s = self.settings
                store = KeyStore(s.home)
                self._client = await Client.connect(
                    default_url(s.url, store),
                    default_identity(s.identity, store),
                    home=store.home,
                    passphrase=s.passphrase,
                    creds=s.creds,
                    tls=s.ca,
                )
            return self._client

    def identity(self) -> dict[str, Any]:
        """Who the console acts as, and the sites pinned in the key store."""
        from hub.defaults import default_identity
        from hub.keys import KeyStore

        store = KeyStore(self.settings.home)
        try:
            who: str | None = default_identity(self.settings.identity, store)
        except ConfigError:
            who = None
        sites = sorted(
            k.identity.removeprefix("site:") for k in store.list() if k.identity.startswith("site:")
        )
        return {"identity": who, "key_store": str(store.dir), "pinned_sites": sites}

    async def modules(self) -> list[dict[str, Any]]:
        """Every module the federation answers for (as ``fedhub ls``)."""
        from hub.cli_lookup import discover, group_answers

        client = await self.client()
        return group_answers(await discover(client.nc, 0.5), None)

    async def module(self, site: str, module: str) -> dict[str, Any]:
        """One module's verified description (functions, docs, schemas)."""
        client = await self.client()
        info = await client.module_info(site, module, refresh=True)
        out: dict[str, Any] = info.info.model_dump(mode="json", exclude={"node_key"})
        out["node_kid"] = info.node_kid
        for fn in out["functions"].values():
            fn["fields"] = form_fields(fn["arguments"])
        return out

    async def submit(self, address: str, arguments: dict[str, Any], timeout: float) -> CallJob:
        """Send a call; its job follows progress and keeps the outcome."""
        client = await self.client()
        job_ref: list[CallJob] = []

        def on_progress(fraction: float | None, message: str) -> None:
            if job_ref:
                job_ref[0].progress, job_ref[0].message = fraction, message

        def on_transfer(direction: str, p: Any) -> None:
            if job_ref:
                job_ref[0].transfers[direction] = {
                    "done": p.done,
                    "total": p.total,
                    "rate": round(p.rate, 1),
                }

        handle = await client.submit(
            address, arguments, timeout=timeout, on_progress=on_progress, on_transfer=on_transfer
        )
        job = CallJob(handle.request_id, handle.address, handle.address.split(".")[0], time.time())
        job_ref.append(job)
        self.jobs[job.request_id] = job
        task = asyncio.create_task(self._follow(job, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _follow(self, job: CallJob, handle: Any) -> None:
        try:
            job.result = await handle.result()
            job.state, job.progress = RequestState.COMPLETED, 1.0
        except FederationError as exc:
            job.state = RequestState.FAILED
            job.error = {"code": type(exc).__name__, "message": exc.message}
        finally:
            job.finished = time.time()

    def result_file(self, job: CallJob, fmt: str) -> Path:
        """The job's result written as ``fmt`` (json, nc, npy, bin)."""
        from hub.argfiles import write_result

        if job.state != RequestState.COMPLETED:
            raise NotFoundError(f"call {job.request_id} has no result ({job.state})")
        suffix = RESULT_FORMATS.get(fmt)
        if suffix is None:
            raise ConfigError(f"unknown format {fmt!r}", hint=f"one of {', '.join(RESULT_FORMATS)}")
        path = self.workdir / f"{job.request_id}{suffix}"
        if not path.exists():
            write_result(job.result, path)
        return path


def form_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The form's inputs for an arguments JSON Schema: name, kind, required, help."""
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = _kind(prop)
        fields.append(
            {
                "name": name,
                "kind": kind,
                "required": name in required,
                "title": prop.get("title") or name,
                "help": prop.get("description") or _describe(prop),
                "default": json.dumps(prop["default"]) if "default" in prop else "",
            }
        )
    return fields


def _kind(prop: dict[str, Any]) -> str:
    if prop.get("x-fedhub-type") in FILE_TYPES or prop.get("format") == "binary":
        return "file"
    kind = prop.get("type")
    if kind in ("integer", "number", "boolean", "string"):
        return str(kind)
    return "json"


def _describe(prop: dict[str, Any]) -> str:
    if "x-fedhub-type" in prop:
        return f"{prop['x-fedhub-type']} (a .nc, .npy, .json or raw file)"
    if "type" in prop:
        return str(prop["type"])
    if "anyOf" in prop:
        return " or ".join(str(p.get("type", "?")) for p in prop["anyOf"])
    return "JSON"


async def form_arguments(request: Request, schema: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The call's keyword arguments from a submitted form (see the module docstring)."""
    from hub.argfiles import read_argument_file

    form = await request.form()
    arguments: dict[str, Any] = {}
    for spec in form_fields(schema):
        name, kind = spec["name"], spec["kind"]
        value = form.get(name)
        if isinstance(value, UploadFile):
            if not value.filename:
                value = None
            else:
                path = workdir / f"upload-{secrets.token_hex(8)}{Path(value.filename).suffix}"
                with path.open("wb") as out:
                    while chunk := await value.read(1 << 20):
                        out.write(chunk)
                arguments[name] = await asyncio.to_thread(read_argument_file, path, key=name)
                continue
        text = "" if value is None else str(value)
        if text == "":
            if spec["required"]:
                raise ConfigError(f"argument {name!r} is required")
            continue
        if kind == "string":
            arguments[name] = text
        elif kind == "boolean":
            arguments[name] = text.lower() in ("true", "on", "1", "yes")
        else:
            try:
                arguments[name] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"argument {name!r} is not valid JSON: {exc.msg}") from exc
    return arguments


def _desk(request: Request) -> CallDesk:
    desk: CallDesk = request.app.state.desk
    return desk


def _job(request: Request) -> CallJob:
    rid = request.path_params["request_id"]
    job = _desk(request).jobs.get(rid)
    if job is None:
        raise NotFoundError(f"no call {rid} was made from this console")
    return job


async def home(request: Request) -> Response:
    desk = _desk(request)
    try:
        modules, error = await desk.modules(), None
    except FederationError as exc:
        modules, error = [], exc.message
    jobs = sorted(desk.jobs.values(), key=lambda j: -j.started)
    return render(
        request, "home.html", who=desk.identity(), modules=modules, error=error, jobs=jobs
    )


async def api_home(request: Request) -> Response:
    desk = _desk(request)
    return JSONResponse({**desk.identity(), "modules": await desk.modules()})


async def module_page(request: Request) -> Response:
    site, module = request.path_params["site"], request.path_params["module"]
    info = await _desk(request).module(site, module)
    return render(request, "module.html", info=info)


async def api_module(request: Request) -> Response:
    site, module = request.path_params["site"], request.path_params["module"]
    return JSONResponse(await _desk(request).module(site, module))


async def api_submit(request: Request) -> Response:
    """POST a function's form: ``address``, ``timeout`` and one field per argument."""
    desk = _desk(request)
    async with request.form() as form:
        address = str(form.get("address") or "")
        site, module, function = [*address.split("."), "", "", ""][:3]
        info = await desk.module(site, module)
        fn = info["functions"].get(function)
        if fn is None:
            raise NotFoundError(f"{site}.{module} has no function {function!r}")
        arguments = await form_arguments(request, fn["arguments"], desk.workdir)
        timeout = float(str(form.get("timeout") or 300))
    job = await desk.submit(address, arguments, timeout)
    return JSONResponse(job.to_json(), 202)


async def call_page(request: Request) -> Response:
    return render(request, "call.html", job=_job(request))


async def api_call(request: Request) -> Response:
    return JSONResponse(_job(request).to_json())


async def api_calls(request: Request) -> Response:
    jobs = sorted(_desk(request).jobs.values(), key=lambda j: -j.started)
    return JSONResponse([j.to_json() for j in jobs])


async def download(request: Request) -> Response:
    job = _job(request)
    fmt = request.query_params.get("format", "json")
    path = await asyncio.to_thread(_desk(request).result_file, job, fmt)
    return FileResponse(path, filename=path.name)


def routes() -> list[Route]:
    """The caller's routes."""
    return [
        Route("/", home),
        Route("/api/modules", api_home),
        Route("/modules/{site}/{module}", module_page),
        Route("/api/modules/{site}/{module}", api_module),
        Route("/api/calls", api_submit, methods=["POST"]),
        Route("/api/calls", api_calls, methods=["GET"]),
        Route("/calls/{request_id}", call_page),
        Route("/api/calls/{request_id}", api_call),
        Route("/api/calls/{request_id}/result", download),
    ]
