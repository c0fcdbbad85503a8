#!/usr/bin/env python3
"""The raw baselines of the call benchmark, over the same federation path as a call.

The requester connects to geomar's leaf; the responder to hereon's leaf. Both baselines
use subjects hereon's account exports as a service (``fh.info.hereon.>``, like module
info requests), so each request crosses geomar's leaf, the hub's account boundary and
hereon's leaf like a call, and the answers come back the same way. 100-byte payloads.

* raw core request/reply: nats-py ``request()`` to a subscriber that echoes;
* raw durable round trip: a JetStream publish (with ``Nats-Msg-Id``, the publish ack
  awaited) into a file-backed work-queue stream on hereon's leaf, configured like the
  site's call stream; a durable pull consumer there, read by the node's own
  :class:`node.consumer.CallConsumer` with the node's default window, echoes each message
  to the caller's inbox (``fh.inbox.geomar.<user>.<token>``, as a call's reply) and acks
  it. No crypto, no log.

``bench_calls.py`` starts the responders as ``python bench_baselines.py serve-core URL
SUBJECT`` or ``serve-durable URL STREAM SUBJECT`` (or in its own process and loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from benchlib import (
    CALL_TIMEOUT,
    CALLER_SITE,
    PAYLOAD,
    SITE,
    STOP,
    CpuMeter,
    Processes,
    Run,
    measure,
    warm_up,
)
from nats.aio.msg import Msg
from nats.js import api

from hub.nats import LocalFederation, wait_acks
from hub.subjects import inbox_subject
from node.config import CallsSection
from node.consumer import CallConsumer

RAW_CORE = "raw core request/reply"
RAW_DURABLE = "raw durable round trip"
_CORE_SUBJECT = f"fh.info.{SITE}.rawbench"
_DURABLE_SUBJECT = f"fh.info.{SITE}.rawdurable"
_CONSUMER = "rawbench"
_REPLY = "Fh-Reply"
_ID = "Fh-Id"


# --- responders -------------------------------------------------------------------------


class CoreResponder:
    """Echoes every request on ``subject``."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.nc: Any = None

    async def start(self) -> None:
        self.nc = await nats.connect(self.url)

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await self.nc.subscribe(self.subject, cb=echo)
        await self.nc.flush()

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.drain()


class DurableResponder:
    """A work-queue stream on ``subject`` and a pull consumer that echoes to the caller."""

    def __init__(self, url: str, stream: str, subject: str) -> None:
        self.url, self.stream, self.subject = url, stream, subject
        self.nc: Any = None
        self.consumer: CallConsumer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.nc = await nats.connect(self.url)
        js = self.nc.jetstream()
        calls = CallsSection()
        await js.add_stream(
            api.StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=120.0,
                discard=api.DiscardPolicy.NEW,
            )
        )
        await js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name=_CONSUMER,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=calls.ack_wait,
                max_deliver=calls.max_deliver,
                max_ack_pending=1000,
            ),
        )
        self.consumer = CallConsumer(
            self.nc,
            self.stream,
            _CONSUMER,
            self._on_msg,
            window=calls.max_in_flight,
            refill=calls.fetch_batch,
        )
        await self.consumer.start()

    def _on_msg(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        assert self.consumer is not None
        try:
            headers = msg.headers or {}
            await self.nc.publish(headers[_REPLY], msg.data, headers={_ID: headers[_ID]})
            await msg.ack()
        finally:
            self.consumer.release()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.jetstream().delete_stream(self.stream)
            await self.nc.drain()


async def _serve(responder: CoreResponder | DurableResponder) -> None:
    """Run a responder until stdin closes (the benchmark's child process)."""
    await responder.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await responder.stop()


async def _spawn(procs: Processes, args: list[str]) -> subprocess.Popen[bytes]:
    proc = procs.start(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(
        asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline), 30
    )
    if line.strip() != b"ready":
        raise RuntimeError(f"{args[0]} responder did not start")
    return proc


async def _end(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        await asyncio.to_thread(Processes.stop, proc)


# --- requesters -------------------------------------------------------------------------


async def _runs(
    call: Callable[[], Awaitable[object]], cpu: CpuMeter, opts: argparse.Namespace, per: int
) -> dict[str, Run]:
    """Warm up, then 1 in flight and ``opts.concurrency`` in flight."""
    await warm_up(call, opts.warmup)
    seq = await measure(
        call, count=opts.calls, concurrency=1, max_seconds=opts.max_seconds, cpu=cpu
    )
    conc = await measure(
        call,
        count=max(opts.calls, opts.concurrency * per),
        concurrency=opts.concurrency,
        max_seconds=opts.max_seconds,
        cpu=cpu,
    )
    return {"seq": seq, "conc": conc}


def _meter(fed: LocalFederation, responder: subprocess.Popen[bytes] | None) -> CpuMeter:
    cpu = CpuMeter("requester" if responder is not None else "requester+responder")
    if responder is not None:
        cpu.add("responder", responder.pid)
    for server in [fed.hub, *fed.leaves.values()]:
        cpu.add("nats", server.pid)
    return cpu


async def bench_core(
    fed: LocalFederation, procs: Processes, opts: argparse.Namespace, *, in_process: bool
) -> dict[str, Run]:
    """Raw nats-py request/reply from geomar's leaf to a responder on hereon's leaf."""
    subject = f"{_CORE_SUBJECT}.{secrets.token_hex(4)}"
    local = CoreResponder(fed.site_url(SITE), subject) if in_process else None
    proc = None
    if local is not None:
        await local.start()
    else:
        proc = await _spawn(procs, ["serve-core", fed.site_url(SITE), subject])
    nc = await nats.connect(fed.site_url(CALLER_SITE))
    payload = os.urandom(PAYLOAD)
    try:
        async with asyncio.timeout(20):  # interest has to cross leaf -> hub -> leaf
            while True:
                STOP.check()
                try:
                    await nc.request(subject, payload, timeout=0.5)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)

        async def call() -> object:
            return await nc.request(subject, payload, timeout=CALL_TIMEOUT)

        return await _runs(call, _meter(fed, proc), opts, 200)
    finally:
        await nc.close()
        if local is not None:
            await local.stop()
        await _end(proc)


async def bench_durable(
    fed: LocalFederation, procs: Processes, opts: argparse.Namespace, *, in_process: bool
) -> dict[str, Run]:
    """JetStream publish from geomar's leaf into a stream on hereon's leaf, whose pull
    consumer echoes to the caller's inbox; a round trip ends with the publish ack and the
    echo both received."""
    token = secrets.token_hex(4)
    stream, subject = f"RAWBENCH_{token}", f"{_DURABLE_SUBJECT}.{token}"
    local = DurableResponder(fed.site_url(SITE), stream, subject) if in_process else None
    proc = None
    if local is not None:
        await local.start()
    else:
        proc = await _spawn(procs, ["serve-durable", fed.site_url(SITE), stream, subject])
    nc = await nats.connect(fed.site_url(CALLER_SITE))
    requester = await DurableRequester.start(nc, subject, "rawbench")
    payload = os.urandom(PAYLOAD)

    async def call() -> object:
        return await requester.round_trip(payload)

    try:
        await until_reachable(call)
        return await _runs(call, _meter(fed, proc), opts, 200)
    finally:
        await nc.close()
        if local is not None:
            await local.stop()
        await _end(proc)


class DurableRequester:
    """The caller's side of a durable round trip: a JetStream publish into the stream
    (``Nats-Msg-Id``, the reply inbox and an id in headers), then the publish ack and the
    echo to the inbox awaited."""

    def __init__(self, nc: Any, subject: str, inbox: str) -> None:
        self.nc, self.js, self.subject, self.inbox = nc, nc.jetstream(), subject, inbox
        self.pending: dict[str, asyncio.Future[bytes]] = {}

    @classmethod
    async def start(cls, nc: Any, subject: str, user: str) -> DurableRequester:
        """A requester of ``user`` at geomar, its inbox subscribed."""
        requester = cls(nc, subject, inbox_subject(CALLER_SITE, user, secrets.token_urlsafe(12)))
        await nc.subscribe(requester.inbox, cb=requester._on_reply)
        return requester

    async def _on_reply(self, msg: Msg) -> None:
        fut = self.pending.get((msg.headers or {}).get(_ID, ""))
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    async def round_trip(self, data: bytes) -> bytes:
        """Publish ``data``; the echo once both it and the publish ack have come."""
        rid = secrets.token_urlsafe(12)
        fut = self.pending[rid] = asyncio.get_running_loop().create_future()
        try:
            ack = await self.js.publish_async(
                self.subject, data, headers={"Nats-Msg-Id": rid, _REPLY: self.inbox, _ID: rid}
            )
            await wait_acks([ack], CALL_TIMEOUT)
            async with asyncio.timeout(CALL_TIMEOUT):
                return await fut
        finally:
            self.pending.pop(rid, None)


async def until_reachable(call: Callable[[], Awaitable[object]]) -> None:
    """Call until the stream's subject is reachable across the hub (up to 20 s)."""
    async with asyncio.timeout(20):
        while True:
            STOP.check()
            try:
                await call()
                return
            except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                await asyncio.sleep(0.05)


def main() -> int:
    """Serve one responder (started by bench_calls.py)."""
    parser = argparse.ArgumentParser(description="a raw baseline responder")
    sub = parser.add_subparsers(dest="what", required=True)
    core = sub.add_parser("serve-core")
    core.add_argument("url")
    core.add_argument("subject")
    durable = sub.add_parser("serve-durable")
    durable.add_argument("url")
    durable.add_argument("stream")
    durable.add_argument("subject")
    opts = parser.parse_args()
    if opts.what == "serve-core":
        asyncio.run(_serve(CoreResponder(opts.url, opts.subject)))
    else:
        asyncio.run(_serve(DurableResponder(opts.url, opts.stream, opts.subject)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
