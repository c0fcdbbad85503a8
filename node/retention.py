"""Retention: kept results go when their time runs out or their module keeps too much.

Each module keeps its results for ``keep_for`` seconds after the call completed and up to
``keep_max_size`` bytes (plaintext sizes, all of the module's kept results together; the
oldest go first); ``[results]`` in the node config gives the site's defaults
(docs/results.md, "Retention"). A sweep, at start and every ``sweep_every`` seconds,
removes what is due: the object first, then ``result.expired`` (with the rule as its
reason) in the log. A sweep that dies between the two leaves a request ``completed``
without its object, and the next sweep removes it again (a missing object is no error)
and logs it. The owner may ask for a shorter keep-for time when calling (the signed
header's ``keep_for``; longer is capped at the module's) or afterwards
(``result.keep_shortened``, never longer than the module's; it replaces the one asked when
calling), or remove a result at once with
:meth:`Retention.delete` (``result.deleted``). After either, the request's state is
``expired`` or ``deleted``, which ``fedhub status`` shows, and a fetch is answered
NotFoundError.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from hub.clock import format_time, parse_time
from hub.errors import FederationError, NotFoundError, TransportError
from hub.events import ResultDeleted, ResultExpired
from hub.lifecycle import RequestState
from hub.subjects import RESULTS_BUCKET
from node.config import ModuleConfig, NodeConfig, ResultsSection
from node.logwriter import LogWriter

if TYPE_CHECKING:
    from node.pipeline import Pipeline

__all__ = ["DeleteResult", "Policy", "Retention", "asked_keep", "delete_kept"]

log = structlog.get_logger(__name__)

#: Remove the object kept under a name (no error when it is gone already).
DeleteResult = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Policy:
    """How long and how much of one module's results are kept."""

    keep_for: float
    max_size: int

    @classmethod
    def of(cls, section: ResultsSection, module: ModuleConfig | None) -> Policy:
        """A module's policy: its own settings, else the site's defaults."""
        keep_for = module.keep_for if module and module.keep_for else section.keep_for
        max_size = module.keep_max_size if module and module.keep_max_size else section.max_size
        return cls(keep_for, max_size)


@dataclass(frozen=True, slots=True)
class _Kept:
    request_id: str
    module: str
    completed: float
    size: int
    name: str
    asked: float | None = None


class Retention:
    """Sweeps one node's kept results by the policies of its modules."""

    def __init__(
        self,
        writer: LogWriter,
        read: Callable[[], sqlite3.Connection],
        delete: DeleteResult,
        section: ResultsSection,
        modules: Iterable[ModuleConfig] = (),
    ) -> None:
        self.writer = writer
        self._read = read
        self._delete = delete
        self.section = section
        self.policies = {m.name: Policy.of(section, m) for m in modules}
        #: Taken while removing a result (the pipeline's result lock, see for_node).
        self.lock = asyncio.Lock()
        #: The log file, read on a thread of its own by a sweep (None: on ``read()``).
        self.path: Path | None = None
        self.default = Policy.of(section, None)

    @classmethod
    def for_node(
        cls, pipeline: Pipeline, cfg: NodeConfig, js: Callable[[], JetStreamContext]
    ) -> Retention:
        """The retention of a node's pipeline (the pipeline's result store uses it for an
        owner's delete); the node runs :meth:`run` once it has logged ``node.started``."""
        retention = cls(
            pipeline.writer,
            pipeline._read,
            lambda name: delete_kept(js(), name),
            cfg.results,
            cfg.modules,
        )
        pipeline.results.retention = retention
        retention.lock = pipeline.results.lock
        retention.path = pipeline.writer.eventlog.path
        return retention

    def policy(self, module: str) -> Policy:
        """The policy of ``module`` (the site's default for a module not configured)."""
        return self.policies.get(module, self.default)

    def keep_for(self, module: str, asked: float | None) -> float:
        """How long a result of ``module`` is kept: its policy, or less if the owner asked."""
        policy = self.policy(module).keep_for
        return policy if asked is None else min(policy, asked)

    def expires(self, address: str | None, completed: str, asked: float | None) -> str:
        """When a result completed at ``completed`` will be removed, at the latest."""
        module = _module(address)
        at = parse_time(completed).timestamp() + self.keep_for(module, asked)
        return format_time(datetime.fromtimestamp(at, UTC))

    def expiry(self, row: dict[str, Any]) -> str | None:
        """When the kept result of a projected request ``row`` goes (None: none kept)."""
        if not row.get("result_object") or not row.get("updated_time"):
            return None
        rid = str(row["request_id"])
        asked = asked_keep(self._read(), [rid]).get(rid)
        return self.expires(row.get("address"), str(row["updated_time"]), asked)

    def _due_from_file(self, path: Path, at: float | None) -> list[tuple[_Kept, str]]:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return self.due(at, conn)
        finally:
            conn.close()

    def _completed(self, rid: str) -> bool:
        row = self._read().execute("SELECT state FROM requests WHERE request_id = ?", [rid])
        found = row.fetchone()
        return found is not None and found[0] == RequestState.COMPLETED.value

    def _kept(self, conn: sqlite3.Connection | None = None) -> list[_Kept]:
        """Every kept result, newest first (read on ``conn``, else the pipeline's)."""
        cur = (conn or self._read()).execute(
            "SELECT r.request_id, r.address, r.updated_time, r.result_size, r.result_object,"  # noqa: S608
            f" {_ASKED} FROM requests r LEFT JOIN result_keep k USING (request_id)"
            " WHERE r.state = ? AND r.result_object IS NOT NULL ORDER BY r.updated_time DESC",
            [RequestState.COMPLETED.value],
        )
        out = []
        for rid, address, updated, size, name, asked in cur:
            completed = parse_time(updated).timestamp()
            out.append(_Kept(rid, _module(address), completed, int(size or 0), name, asked))
        return out

    def due(
        self, at: float | None = None, conn: sqlite3.Connection | None = None
    ) -> list[tuple[_Kept, str]]:
        """The kept results the policies remove now, each with the reason."""
        at = time.time() if at is None else at
        used: dict[str, int] = {}
        found = []
        for item in self._kept(conn):
            policy = self.policy(item.module)
            used[item.module] = used.get(item.module, 0) + item.size
            keep_for = self.keep_for(item.module, item.asked)
            if at - item.completed > keep_for:
                found.append((item, f"kept for {_span(keep_for)}, its keep-for time"))
            elif used[item.module] > policy.max_size:
                found.append((item, f"module {item.module} keeps at most {policy.max_size} bytes"))
        return found

    async def sweep(self, at: float | None = None) -> list[str]:
        """Remove every result due now; logs ``result.expired`` for each. Returns their ids."""
        removed = []
        if self.path is not None:  # a large log is read off the event loop
            due = await asyncio.to_thread(self._due_from_file, self.path, at)
        else:
            due = self.due(at)
        for item, reason in due:
            try:
                async with self.lock:
                    if not self._completed(item.request_id):  # removed meanwhile
                        continue
                    await self._delete(item.name)
                    await self.writer.append(
                        ResultExpired(request_id=item.request_id, reason=reason)
                    )
            except FederationError as exc:  # the bucket or the log unreachable: next sweep
                log.warning("result.expire_failed", request_id=item.request_id, error=str(exc))
                continue
            log.info("result.expired", request_id=item.request_id, reason=reason)
            removed.append(item.request_id)
        return removed

    async def delete(self, request_id: str, name: str, by: str) -> int:
        """The owner removes a kept result now; returns the seq of ``result.deleted``."""
        async with self.lock:
            if not self._completed(request_id):
                raise NotFoundError(f"the result of {request_id} is gone already")
            await self._delete(name)
            stored = await self.writer.append(ResultDeleted(request_id=request_id, by=by))
        log.info("result.deleted", request_id=request_id, by=by)
        return stored[-1].seq

    async def run(self) -> None:
        """Sweep now and every ``sweep_every`` seconds until cancelled (the node runs it
        between ``node.started`` and ``node.stopped``)."""
        while True:
            try:
                await self.sweep()
            except (sqlite3.Error, ValueError) as exc:  # a bad row must not stop sweeps
                log.error("result.sweep_failed", error=str(exc))
            await asyncio.sleep(self.section.sweep_every)


#: The keep-for time the owner asked for: afterwards (``result.keep_shortened``), else when
#: calling (the signed header's ``keep_for``); NULL when neither.
_ASKED = "COALESCE(k.keep_for, r.keep_for)"


def asked_keep(conn: sqlite3.Connection, rids: list[str]) -> dict[str, float]:
    """The keep-for times owners asked for, of those of ``rids`` that have one."""
    out: dict[str, float] = {}
    for at in range(0, len(rids), 500):
        part = rids[at : at + 500]
        marks = ",".join("?" * len(part))  # placeholders only: the ids are bound
        sql = (
            f"SELECT r.request_id, {_ASKED} FROM requests r"  # noqa: S608
            " LEFT JOIN result_keep k USING (request_id)"
            f" WHERE r.request_id IN ({marks}) AND {_ASKED} IS NOT NULL"
        )
        out.update(conn.execute(sql, part).fetchall())
    return out


async def delete_kept(js: JetStreamContext, name: str) -> None:
    """Remove the result kept under ``name`` from the site's result bucket (its meta marked
    deleted, its chunks purged); one that is gone already counts as removed."""
    store = await js.object_store(RESULTS_BUCKET)
    try:
        await store.delete(name)
    except nats.js.errors.ObjectNotFoundError:
        return
    except nats.errors.Error as exc:
        raise TransportError(f"removing the kept result {name!r} failed: {exc}") from exc


def _module(address: str | None) -> str:
    parts = str(address or "").split(".")
    return parts[1] if len(parts) >= 3 else ""


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
