"""A site's event logs as the hub keeps them: a log source for the audit.

The hub's ``FH_EVENTS_<SITE>`` sources the site's ``FH_EVENTS``: each message is a run of
consecutive events of one node log as export lines (docs/log-format.md), on the log's
subject ``fh.events.<site>.<node>[.<instance>]``. :func:`read_site_copy` reads the whole
stream once and writes each log's lines, in order, to a JSON Lines file, so the audit
reads it exactly as it reads an export (:func:`hub.logfile.iter_jsonl`): the same
events, the same positions, the same report.

A node that crashed re-sends its recent events, so an event may arrive twice: the copy
keeps the first of each ``seq``. An event that arrives again with another hash is two
histories under one log: a :class:`Conflict`, which the audit reports as a fork.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import api

from hub.errors import TransportError
from hub.logfile import LogUnreadableError, RawEvent, iter_jsonl, parse_export_line
from hub.nats.config import HUB_DOMAIN
from hub.subjects import EVENTS_STREAM, events_filter, hub_events_stream, validate_site

__all__ = ["Conflict", "CopiedLog", "hub_sites", "read_site_copy"]

#: Seconds to wait for the next message of a stream being read (the hub answers in ms).
READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Conflict:
    """Event ``seq`` of one log arrived twice with different hashes: two histories."""

    seq: int
    first: str
    second: str


@dataclass
class CopiedLog:
    """One node log of a site, as the hub copied it, in a JSON Lines file."""

    subject: str
    path: Path
    events: int = 0
    log_id: str | None = None
    conflicts: list[Conflict] = field(default_factory=list)
    _hashes: dict[int, bytes] = field(default_factory=dict, repr=False)

    def raw_events(self) -> Iterator[RawEvent]:
        """The log's events, exactly as from its export file."""
        return iter_jsonl(self.path)

    def add_line(self, line: bytes, fh: BinaryIO) -> None:
        """Take one export line (a duplicate is dropped, a conflicting one recorded)."""
        raw = parse_export_line(line, self.events + 1)
        try:
            header = json.loads(raw.body)
            seq = int(header["seq"])
        except (ValueError, KeyError, TypeError):
            seq = self.events + 1  # the audit names what is wrong with it
            header = {}
        held = self._hashes.get(seq)
        if held is not None:
            if held != raw.hash:
                self.conflicts.append(Conflict(seq, held.hex(), raw.hash.hex()))
            return
        if self.log_id is None and isinstance(header.get("log"), str):
            self.log_id = header["log"]
        self._hashes[seq] = raw.hash
        self.events += 1
        fh.write(line if line.endswith(b"\n") else line + b"\n")


async def hub_sites(nc: NatsClient, *, domain: str = HUB_DOMAIN) -> list[str]:
    """The sites whose event logs the hub copies (from its ``FH_EVENTS_<SITE>`` streams)."""
    js = nc.jetstream(domain=domain)
    try:
        streams = await js.streams_info()
    except nats.errors.Error as exc:
        raise TransportError(f"cannot list the hub's streams: {exc}") from exc
    sites = []
    for info in streams:
        for source in info.config.sources or []:
            deliver = source.external.deliver if source.external else None
            if source.name == EVENTS_STREAM and deliver and deliver.startswith("fh.hubcopy."):
                sites.append(deliver.removeprefix("fh.hubcopy."))
    return sorted(sites)


async def read_site_copy(
    nc: NatsClient, site: str, folder: Path, *, domain: str = HUB_DOMAIN
) -> list[CopiedLog]:
    """Read the hub's copy of ``site``'s event logs into ``folder``, one file per log."""
    site = validate_site(site)
    js = nc.jetstream(domain=domain)
    stream = hub_events_stream(site)
    try:
        last = (await js.stream_info(stream)).state.last_seq
    except nats.js.errors.NotFoundError:
        raise TransportError(f"the hub keeps no copy of site {site}'s events ({stream})") from None
    except nats.errors.Error as exc:
        raise TransportError(f"cannot read stream {stream}: {exc}") from exc
    logs: dict[str, CopiedLog] = {}
    files: dict[str, BinaryIO] = {}
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    if last == 0:
        return []
    sub = await js.subscribe(
        events_filter(site),
        stream=stream,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
            except nats.errors.TimeoutError:
                raise TransportError(f"{stream} stopped delivering before its end") from None
            log = logs.get(msg.subject)
            if log is None:
                name = msg.subject.replace("/", "_") + ".jsonl"
                log = logs[msg.subject] = CopiedLog(msg.subject, folder / name)
                files[msg.subject] = await asyncio.to_thread(log.path.open, "wb")
            for line in msg.data.splitlines(keepends=True):
                try:
                    log.add_line(line, files[msg.subject])
                except LogUnreadableError as exc:
                    raise LogUnreadableError(f"{stream} {msg.subject}: {exc}") from exc
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
        for fh in files.values():
            fh.close()
    return sorted(logs.values(), key=lambda log: log.subject)
