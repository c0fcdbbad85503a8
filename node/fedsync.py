"""The node's side of the federation-wide directory: publish this site's records, apply
everyone's, live.

Every record a node applies through its admin subject (a key record, a revocation, a
grant, a group) is logged in its own log and published to its site's ``FH_DIR``
(:meth:`DirectorySync.publish`); the hub's ``FH_DIRECTORY`` sources every site's, and the
site's own ``FH_DIRECTORY`` sources the hub's. The node watches its site's copy from the
start (:meth:`DirectorySync.start`) and hands each record to
:meth:`hub.directory.Directory.apply_published`, which checks it up to a pinned site key:
what counts is applied at once (the pipeline reads the same directory object, so a
revocation stops the next call) and logged as an event; what does not count is ignored
and logged as ``directory.record_ignored``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from pydantic import BaseModel, ValidationError

from hub.crypto import key_id
from hub.directory import RECORD_KINDS, Directory, record_token
from hub.errors import FederationError, TransportError
from hub.errors import ValidationError as RecordError
from hub.nats.dirstreams import ensure_site_directory
from hub.records import SignedRecord
from hub.subjects import DIRECTORY_STREAM, SUBJECT_ROOT, directory_subject
from hub.witness import WITNESS_KINDS
from node.admin import directory_events
from node.eventlog import EventLog
from node.logwriter import LogWriter
from node.witness import NodeWitness

__all__ = ["DirectorySync", "FederationLink", "Ignored"]

log = structlog.get_logger(__name__)

Append = Callable[..., Awaitable[object]]


_FIELDS = {
    "key.registered": ("key", "record"),
    "key.revoked": ("revocation", "revocation"),
    "grant.recorded": ("grant", "record"),
    "group.updated": ("group", "record"),
}


def _published_form(data: dict[str, Any]) -> tuple[str, SignedRecord | None]:
    kind, name = _FIELDS.get(str(data.get("type")), ("", ""))
    if not kind:
        return "", None
    return kind, SignedRecord.model_validate(data[name])


@dataclass(frozen=True, slots=True)
class Ignored:
    """A directory record that did not count here, and why."""

    subject: str
    reason: str


class DirectorySync:
    """Publishes this site's directory records and applies the federation's as they come."""

    def __init__(self, nc: NatsClient, site: str, directory: Directory, append: Append) -> None:
        self.nc = nc
        self.site = site
        self.directory = directory
        self.append = append
        #: Records that did not count here (newest last), for operators and tests.
        self.ignored: list[Ignored] = []
        #: Records applied from the directory stream (not counting those already held).
        self.applied = 0
        self._sub: Subscription | None = None
        #: Takes the witness records (checkpoints of other logs); None: not a witness.
        self.witness: Any = None

    async def start(self) -> None:
        """Ensure the site's directory streams and watch the federation's records."""
        js = self.nc.jetstream()
        await ensure_site_directory(js, self.site)
        try:
            self._sub = await js.subscribe(
                f"{SUBJECT_ROOT}.dir.>",
                stream=DIRECTORY_STREAM,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.ALL,
                cb=self._on_record,
            )
        except nats.errors.Error as exc:
            raise TransportError(f"cannot watch the federation directory: {exc}") from exc

    async def close(self) -> None:
        """Stop watching."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                log.debug("directory.unsubscribe_failed")

    async def publish(self, kind: str, signed: SignedRecord) -> None:
        """Publish a record of this site to its ``FH_DIR`` (stored once, whoever sends it)."""
        await self.publish_bytes(kind, signed.model_dump_json().encode(), record_token(signed))

    async def publish_bytes(self, kind: str, data: bytes, token: str) -> None:
        """Publish ``data`` as ``fh.dir.<site>.<kind>.<token>`` (the token names the content)."""
        try:
            await self.nc.jetstream().publish(
                directory_subject(self.site, kind, token),
                data,
                headers={"Nats-Msg-Id": token},
                timeout=10,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise TransportError(
                f"the site's directory stream did not take the record: {exc}"
            ) from exc
        log.info("directory.record_published", kind=kind, token=token)

    async def publish_own(self, events: list[dict[str, Any]]) -> int:
        """Publish the records of this site among logged directory events' ``data``:
        key records, revocations and grants signed by this site's key, and groups of its
        people (so a record applied while the node was down reaches the federation too).
        Publishing is idempotent: a record's subject names it, and the streams keep one
        message per subject."""
        own_kid = key_id(self.directory.trusted_sites[self.site])
        count = 0
        for data in events:
            kind, signed = _published_form(data)
            if signed is None:
                continue
            signer = self.directory.keys.get(signed.signer)
            ours = signed.signer == own_kid or (
                kind == "group" and signer is not None and signer.site == self.site
            )
            if ours:
                await self.publish(kind, signed)
                count += 1
        return count

    async def _on_record(self, msg: Msg) -> None:
        kind = msg.subject.split(".")[3] if msg.subject.count(".") >= 4 else ""
        received = time.monotonic()
        if kind in WITNESS_KINDS:
            if self.witness is not None:
                await self.witness.on_notice(kind, msg.data)
            return
        try:
            if kind not in RECORD_KINDS:
                raise RecordError(f"unknown directory record kind {kind!r}")
            try:
                signed = SignedRecord.model_validate_json(msg.data)
            except ValidationError as exc:
                raise RecordError(f"not a signed record ({exc.error_count()} errors)") from exc
            if not msg.subject.endswith(f".{record_token(signed)}"):
                raise RecordError("the subject does not name the record it carries")
            event = self.directory.apply_published(kind, signed)
        except FederationError as exc:
            self.ignored.append(Ignored(msg.subject, exc.message))
            log.warning("directory.record_ignored", subject=msg.subject, reason=exc.message)
            return
        if event is None:
            return
        self.applied += 1
        await self._log(event)
        log.info(
            "directory.record_applied",
            kind=kind,
            subject=msg.subject,
            ms=round((time.monotonic() - received) * 1000, 3),
        )

    async def _log(self, event: BaseModel) -> None:
        try:
            await self.append(event)
        except FederationError as exc:  # applied in memory; logged again at the next start
            log.warning("directory.log_failed", reason=exc.message)


class FederationLink:
    """A node's part in the federation: the directory watch and the witness, started
    together after the node's own services, stopped before its last events."""

    def __init__(
        self,
        nc: NatsClient,
        site: str,
        directory: Directory,
        eventlog: EventLog,
        writer: LogWriter,
        node_key: SignedRecord,
    ) -> None:
        self.sync = DirectorySync(nc, site, directory, writer.append)
        self.witness = NodeWitness(
            eventlog,
            site,
            directory.trusted_sites,
            node_key,
            call=writer.call,
            append=writer.append,
            publish=self.sync.publish_bytes,
        )
        self.sync.witness = self.witness
        self.eventlog = eventlog
        self.writer = writer
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Watch the directory, publish this site's records logged so far, and start
        publishing this log's checkpoints."""
        eventlog = self.eventlog
        logged = await self.writer.call(lambda: directory_events(eventlog))
        await self.writer.call(self.witness.load)
        await self.sync.start()
        assert isinstance(logged, list)
        await self.sync.publish_own(logged)
        self._task = asyncio.create_task(self.witness.publish_checkpoints(), name="witness")

    async def close(self) -> None:
        """Stop publishing and watching (harmless twice)."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.sync.close()
