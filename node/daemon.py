"""The site node daemon: NATS, the event log, the directory, the runner and the pipeline.

Start-up (each step undone in reverse on stop, by an ``AsyncExitStack``):

1. connect to the site's NATS (``[nats] url``), or start an embedded ``nats-server`` with
   JetStream in the node's data dir (its own JetStream domain = the site name);
2. open the event log (the genesis must exist: ``fedhub-node init``), start the group-commit
   writer and the publisher that copies every event to the site's ``FH_EVENTS`` stream
   (:mod:`node.eventcopies`);
3. rebuild the directory (keys, revocations, grants) from the log, then bring it in line
   with the config, logging each change as an event;
4. load the modules, announce each as a NATS micro service (``$SRV.PING/INFO/STATS``) with
   fedhub's info endpoint (schemas + the node key record signed by the site);
5. ensure the call stream and its durable consumer; log ``node.started``; take calls
   (a continuous pull, :mod:`node.consumer`).

Stopping (SIGINT/SIGTERM in the CLI): stop pulling, let in-flight calls finish for
``grace`` seconds, hand back what is left (the server redelivers it), log
``node.stopped``, flush the log, drain NATS, stop the embedded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel

from hub import __version__, localnodes
from hub.answers import ModuleDescription, error_headers
from hub.directory import Directory
from hub.errors import (
    ConfigError,
    FederationError,
    OversizeError,
    RemoteError,
    UnauthorizedError,
)
from hub.events import (
    NodeStarted,
    NodeStopped,
)
from hub.lifecycle import UNFINISHED
from hub.nats import (
    NatsServer,
    ensure_calls_consumer,
    ensure_site_streams,
    get_object,
    put_object,
)
from hub.nats.server import running_server_pid, terminate_server
from hub.records import SignedRecord
from hub.subjects import (
    CALLS_CONSUMER,
    CALLS_STREAM,
    RESULTS_BUCKET,
    admin_subject,
    events_subject,
    status_subject,
)
from node.admin import DirectoryState, apply_admin, load_directory
from node.bootstrap import open_instance_log
from node.bulk import BulkLink
from node.config import NodeConfig
from node.consumer import CallConsumer
from node.dispatch import Dispatcher
from node.eventcopies import EventCopies
from node.eventlog import EventLog
from node.fedsync import FederationLink
from node.logwriter import LogWriter
from node.modules import load_module
from node.natslink import NatsLink, safe_url
from node.observability import NodeMetrics
from node.pipeline import Pipeline
from node.retention import Retention
from node.runner import Runner
from node.services import start_services
from node.staging import Staging

__all__ = ["MAX_INSTANCES", "NodeDaemon"]

#: Node processes one config (one data dir) can run at once.
MAX_INSTANCES = 16

log = structlog.get_logger(__name__)


class NodeDaemon:
    """One running node process. ``async with NodeDaemon(cfg) as node: await node.serve()``."""

    def __init__(self, cfg: NodeConfig, *, grace: float = 30.0) -> None:
        self.cfg = cfg
        self.grace = grace
        self.site = cfg.node.site
        self.stack = contextlib.AsyncExitStack()
        self.nc: NatsClient | None = None
        self.server: NatsServer | None = None
        self.eventlog: EventLog | None = None
        self.writer: LogWriter | None = None
        self.runner: Runner | None = None
        self.pipeline: Pipeline | None = None
        self._code_hashes: dict[str, str] = {}
        self.directory: Directory | None = None
        self.consumer: CallConsumer | None = None
        #: The federation directory watch and the witness (None until started).
        self.federation: FederationLink | None = None
        self.dispatcher: Dispatcher | None = None
        self._js: JetStreamContext | None = None  # for results: one ack subscription
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._node_key_record: SignedRecord | None = None
        self._stopped = False
        self.url: str = ""
        self.instance = 1
        self.link: NatsLink | None = None
        #: Figures for /metrics; None unless ``[observability] listen`` is set.
        self.metrics: NodeMetrics | None = (
            NodeMetrics(m.name for m in cfg.modules) if cfg.observability.listen else None
        )
        #: Why the node stopped by itself (None: stopped on request).
        self.failure: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> NodeDaemon:
        try:
            await self.start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop("exit")

    async def start(self) -> None:
        cfg = self.cfg
        cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_instance()
        await self._connect()
        assert self.nc is not None
        js = self.nc.jetstream()
        await ensure_site_streams(js, self.site, max_msg_size=cfg.calls.max_payload + 64 * 1024)
        await ensure_calls_consumer(
            js, self.site, ack_wait=cfg.calls.ack_wait, max_deliver=cfg.calls.max_deliver
        )

        self.eventlog = await asyncio.to_thread(open_instance_log, cfg, self.instance)
        self.stack.callback(self.eventlog.close)
        self.writer = LogWriter(self.eventlog)
        subject = events_subject(self.site, cfg.node.name)
        if self.instance > 1:
            subject += f".{self.instance}"
        copies = EventCopies(self.eventlog, self.writer, self._jetstream, subject)
        await self.writer.start(copies.publish)
        self.stack.callback(copies.save_final)
        self.stack.push_async_callback(self.writer.aclose)
        await copies.republish_backlog()

        self.directory = await self._build_directory()
        self.runner = Runner()
        await self.stack.enter_async_context(self.runner)
        timeouts: dict[str, float | None] = {}
        codes: dict[str, str] = {}
        for mod in cfg.modules:
            backend = await asyncio.to_thread(
                load_module, str(cfg.resolve(mod.path)), name=mod.name
            )
            self.runner.add_module(backend, mod)
            code = await asyncio.to_thread(backend.code_hash)
            if code is not None:
                codes[mod.name] = code
            timeouts[mod.name] = mod.timeout
        self.pipeline = Pipeline(
            site=self.site,
            node_id=self.eventlog.log_id,
            key=self.eventlog.key,
            directory=self.directory,
            runner=self.runner,
            writer=self.writer,
            calls=cfg.calls,
            send=self._send,
            max_reply=self._max_reply,
            store_result=self._store_result,
            load_result=self._load_result,
            module_timeouts=timeouts,
            bulk=self._bulk_link(),
        )
        self.stack.callback(self.pipeline.close)
        assert self.nc is not None and self._node_key_record is not None
        self._code_hashes = codes
        self.pipeline.staging = Staging(
            self.nc, cfg.identity, self.eventlog.key, self._node_key_record, self.pipeline.bulk
        )
        retention = Retention.for_node(self.pipeline, cfg, self._jetstream)
        await self.pipeline.load_replay_memory()
        await self._start_services()
        recovered = await self.writer.call(self._count_unfinished)
        # the last process's events end at a checkpoint naming its node.started, so the
        # first checkpoint covering any event names the process that logged it
        await self.writer.checkpoint()
        await self.writer.append(
            NodeStarted(
                version=__version__,
                pid=os.getpid(),
                modules=tuple(m.name for m in cfg.modules),
                config_hash=cfg.digest,
                recovered=int(recovered) if isinstance(recovered, int) else 0,
                code=self._code_hashes or None,
            )
        )
        await self._start_consumer()
        await self._start_directory_sync()
        self._spawn(self._write_status(), "status-file")
        self._spawn(self._checkpoints(), "checkpoints")
        self._spawn(retention.run(), "retention")
        log.info(
            "node.started",
            node=self.eventlog.log_id,
            url=safe_url(self.url),
            modules=[m.name for m in cfg.modules],
            grants=[f"{g.principal}: {g.module}.{f}" for g in cfg.grants for f in g.functions],
            trusted_sites=[t.site for t in cfg.trust],
        )

    async def serve(self) -> None:
        """Run until :meth:`request_stop` (or a signal in the CLI)."""
        await self._stop.wait()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the node to stop (safe from a signal handler)."""
        self._stop.set()

    async def stop(self, reason: str = "stopped") -> None:
        """Stop cleanly; harmless twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        try:
            await self._wind_down(reason)
        finally:  # whatever failed above: the embedded server, the log and locks are let go
            await self.stack.aclose()
        log.info("node.stopped", reason=reason)

    async def _wind_down(self, reason: str) -> None:
        background = [
            t for t in self._tasks if t.get_name() in ("status-file", "checkpoints", "retention")
        ]
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # stop requesting calls; a call the server still delivers is handed back at once
        if self.consumer is not None:
            await self.consumer.close()
        if self.federation is not None:
            await self.federation.close()
        await self._finish_calls()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.writer is not None and self.eventlog is not None and self.eventlog.initialized:
            with contextlib.suppress(FederationError):
                await self.writer.append(NodeStopped(reason=reason))
                await self.writer.checkpoint()  # a fresh receipt covers the whole run

    async def _finish_calls(self) -> None:
        """Let the calls in flight finish for ``grace`` seconds (a burst being taken may
        still start runs), then cancel what is left (its messages are handed back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        logged = False
        while calls := [t for t in self._tasks if t.get_name() == "call" and not t.done()]:
            if not logged:
                log.info("node.finishing_calls", count=len(calls), grace=self.grace)
                logged = True
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait(calls, timeout=left)
                continue
            for t in calls:
                t.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _lock_instance(self) -> None:
        """Take the first free instance slot of this node: 1, 2, ... (one lock file each).

        Instance 1 owns ``events.db`` and, without a NATS URL, the embedded server; every
        further process of the same config pulls from the same durable consumer and keeps
        its own log ``events.<n>.db`` (log id ``<identity>#<n>``).
        """
        for instance in range(1, MAX_INSTANCES + 1):
            name = "node.lock" if instance == 1 else f"node.{instance}.lock"
            fh = (self.cfg.node.data_dir / name).open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self.instance = instance
            self.stack.callback(fh.close)
            return
        raise ConfigError(
            f"{MAX_INSTANCES} node processes already use {self.cfg.node.data_dir}",
            hint="stop one, or give the new one its own [node] name and data_dir",
        )

    # --- NATS -----------------------------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.cfg
        url = cfg.nats.url
        if not url and self.instance > 1:
            url_file = cfg.node.data_dir / "nats.url"
            if running_server_pid(cfg.node.data_dir / "nats.pid") is None or not url_file.exists():
                raise ConfigError(
                    f"node process {self.instance} found no embedded nats-server to join",
                    hint="start the first process of this node first, or set [nats] url",
                )
            url = url_file.read_text().strip()
        elif not url:
            url = await self._embedded_server()
        self.url = url
        self.link = NatsLink(
            url,
            name=f"fedhub-node {self.cfg.identity}",
            credentials=cfg.resolve(cfg.nats.credentials) if cfg.nats.credentials else None,
            ca=cfg.resolve(cfg.nats.ca) if cfg.nats.ca else None,
            connect_timeout=cfg.nats.connect_timeout,
            on_reconnected=self._on_reconnected,
            on_closed=self._on_nats_closed,
        )
        self.stack.push_async_callback(self.link.close)
        # retried with backoff until it works; a stop request (SIGTERM) ends the wait
        self.nc = await self.link.connect(self._stop)

    async def _on_reconnected(self) -> None:
        # pull requests may not have survived the link: ask again
        if self.consumer is not None:
            self.consumer.reset()

    async def _on_nats_closed(self) -> None:
        """nats-py gave up on the connection for good: stop (exit 1, a supervisor restarts)."""
        self.failure = "the NATS connection was closed"
        self.request_stop()

    async def _embedded_server(self) -> str:
        """Start the embedded nats-server, or adopt the one a killed node left running.

        The server runs in its own session (a Ctrl-C reaches the node, which stops it last),
        so when a node dies hard its server lives on with the queued calls; the next node
        on the same data dir takes it over instead of starting a second one on the same
        store.
        """
        cfg = self.cfg
        url_file, pid_file = cfg.node.data_dir / "nats.url", cfg.node.data_dir / "nats.pid"
        left = running_server_pid(pid_file)
        if left is not None and url_file.exists():
            log.info("nats_server.adopted", pid=left)
            self.stack.callback(terminate_server, left, pid_file)
            url = url_file.read_text().strip()
            self._register_local(url, left)
            return url
        self.server = NatsServer(
            cfg.node.data_dir / "nats",
            port=cfg.nats.embedded_port,
            jetstream_domain=self.site,
            server_name=f"{self.site}-{cfg.node.name}",
            leafnode_remotes=cfg.nats.leafnode_remotes,
            max_payload=cfg.calls.max_payload + 64 * 1024,
        )
        await self.server.start()
        self.stack.callback(pid_file.unlink, missing_ok=True)
        self.stack.push_async_callback(self.server.stop)
        url = self.server.client_url
        url_file.write_text(url + "\n")
        pid_file.write_text(f"{self.server.pid}\n")
        self._register_local(url, self.server.pid)
        return url

    def _register_local(self, url: str, pid: int | None) -> None:
        """Let callers on this machine find the embedded server (see hub.localnodes)."""
        if pid is None:
            return
        path = localnodes.register(self.cfg.node.key_home, self.cfg.identity, url, pid)
        self.stack.callback(localnodes.unregister, path)

    async def _send(self, subject: str, data: bytes) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, data)

    def _jetstream(self) -> JetStreamContext:
        """One JetStream context for publishing: its ack subscription is made once."""
        assert self.nc is not None
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def _load_result(self, name: str) -> bytes:
        return await get_object(self._jetstream(), RESULTS_BUCKET, name)

    async def _store_result(self, name: str, data: bytes) -> None:
        await put_object(self._jetstream(), RESULTS_BUCKET, name, data)

    def _bulk_link(self) -> BulkLink:
        """Bulk arguments and results of this instance (spool folder swept at start)."""
        assert self.nc is not None and self.eventlog is not None
        link = BulkLink.for_node(
            self.cfg, self.instance, self.eventlog.key, self.nc, self._jetstream
        )
        self.stack.push_async_callback(link.aclose)
        return link

    def _max_reply(self) -> int:
        """The largest message this connection carries (the server's ``max_payload``)."""
        assert self.nc is not None
        return int(self.nc.max_payload)

    # --- directory ------------------------------------------------------------------------

    async def _build_directory(self) -> Directory:
        assert self.eventlog is not None and self.writer is not None
        eventlog = self.eventlog
        state = await self.writer.call(lambda: load_directory(self.cfg, eventlog))
        assert isinstance(state, DirectoryState)
        self._node_key_record = state.node_key
        if state.pending:
            await self.writer.append(*state.pending)
        return state.directory

    async def _start_directory_sync(self) -> None:
        """Watch the federation directory, apply it live, witness other logs (fedsync)."""
        assert self.nc is not None and self.directory is not None and self.writer is not None
        assert self.eventlog is not None and self._node_key_record is not None
        self.federation = FederationLink(
            self.nc, self.site, self.directory, self.eventlog, self.writer, self._node_key_record
        )
        self.stack.push_async_callback(self.federation.close)
        await self.federation.start()

    def _count_unfinished(self) -> int:
        assert self.eventlog is not None
        states = sorted(UNFINISHED)
        marks = ", ".join("?" * len(states))
        row = self.eventlog.db.execute(
            f"SELECT COUNT(*) FROM requests WHERE state IN ({marks})",  # noqa: S608
            states,
        ).fetchone()
        return int(row[0])

    # --- services -------------------------------------------------------------------------

    async def _start_services(self) -> None:
        assert self.nc is not None and self.runner is not None and self.eventlog is not None
        assert self._node_key_record is not None
        await start_services(
            self.nc,
            self.site,
            self.eventlog.log_id,
            self.runner.modules,
            self._module_description,
            self.stack,
        )
        sub = await self.nc.subscribe(
            status_subject(self.site), queue="fh-node", cb=self._on_control
        )
        self.stack.push_async_callback(sub.unsubscribe)
        admin = await self.nc.subscribe(admin_subject(self.site), cb=self._on_admin)
        self.stack.push_async_callback(admin.unsubscribe)

    def _module_description(self, name: str, info: dict[str, Any]) -> ModuleDescription:
        """The info answer of module ``name`` (its loaded description plus this node's)."""
        assert self.eventlog is not None and self._node_key_record is not None
        return ModuleDescription.model_validate(
            {
                **info,
                "site": self.site,
                "module": name,
                "node": self.eventlog.log_id,
                "node_key": self._node_key_record,
                "max_payload": self.cfg.calls.max_payload,
            }
        )

    async def _on_admin(self, msg: Msg) -> None:
        """Apply a signed directory record sent to ``fh.admin.<site>`` (every node applies it).

        Records authenticate themselves (a key record signed by a trusted site, a revocation
        signed by the key's own site or ours), so the sender needs no other authority.
        """
        assert self.directory is not None and self.writer is not None
        answer: BaseModel | FederationError
        try:
            publish = self.federation.sync.publish if self.federation is not None else None
            answer = await apply_admin(self.directory, self.writer.append, msg.data, publish)
        except RemoteError as exc:
            log.warning("admin.refused", reason=exc.message)
            answer = exc
        except FederationError as exc:  # a record that does not verify here
            log.warning("admin.refused", reason=exc.message)
            answer = UnauthorizedError(exc.message, hint=exc.hint)
        assert self.nc is not None
        await _respond(self.nc, msg, answer)

    async def _on_control(self, msg: Msg) -> None:
        assert self.pipeline is not None
        answer: BaseModel | bytes | FederationError
        try:
            answer = await self.pipeline.control(msg.data)
        except FederationError as exc:
            answer = exc
        except Exception as exc:  # never let a control message take a handler down
            log.exception("control.failed")
            answer = RemoteError(f"control failed: {type(exc).__name__}", code="internal_error")
        assert self.nc is not None
        await _respond(self.nc, msg, answer)

    # --- pulling calls --------------------------------------------------------------------

    async def _start_consumer(self) -> None:
        assert self.nc is not None
        calls = self.cfg.calls
        assert self.pipeline is not None
        self.dispatcher = Dispatcher(
            self.pipeline,
            self._spawn,
            self._release,
            metrics=self.metrics,
            keepalive_every=calls.ack_wait / 3,
        )
        self.consumer = CallConsumer(
            self.nc,
            CALLS_STREAM,
            CALLS_CONSUMER,
            self.dispatcher.deliver,
            window=calls.max_in_flight,
            refill=calls.fetch_batch,
        )
        await self.consumer.start()

    def _release(self) -> None:
        assert self.consumer is not None
        self.consumer.release()

    # --- status ---------------------------------------------------------------------------

    async def _checkpoints(self) -> None:
        """Sign a checkpoint every ``checkpoint_seconds`` when events were added since."""
        assert self.writer is not None and self.eventlog is not None
        eventlog, last = self.eventlog, -1
        while True:
            await asyncio.sleep(self.cfg.log.checkpoint_seconds)
            if eventlog.size != last:
                with contextlib.suppress(FederationError):
                    last = (await self.writer.checkpoint()).seq

    async def _write_status(self) -> None:
        path = self.cfg.node.data_dir / (
            "status.json" if self.instance == 1 else f"status.{self.instance}.json"
        )
        tmp = path.with_suffix(".json.tmp")
        try:
            # ends on stop even when the cancel lands inside a NATS request, which turns
            # it into a timeout that _queue_depth takes for an unanswered question
            while not self._stop.is_set():
                data = self.status()
                data["queue"] = await self.queue_depth()
                data["pid"] = os.getpid()
                data["time"] = time.time()
                tmp.write_text(json.dumps(data, indent=2, default=str))
                tmp.replace(path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def queue_depth(self) -> dict[str, int] | None:
        """Calls waiting in the stream for any worker, and handed out but not yet acked."""
        assert self.nc is not None
        try:
            info = await self.nc.jetstream().consumer_info(
                CALLS_STREAM, CALLS_CONSUMER, timeout=1.0
            )
        except (nats.errors.Error, TimeoutError):
            return None
        return {"waiting": int(info.num_pending or 0), "unacked": int(info.num_ack_pending or 0)}

    def status(self) -> dict[str, Any]:
        """Modules, queue and in-flight figures, log head (for `fedhub-node status`)."""
        assert self.runner is not None and self.eventlog is not None and self.pipeline is not None
        head = self.eventlog.head()
        return {
            "node": self.eventlog.log_id,
            "url": self.url,
            "modules": self.runner.stats(),
            "in_flight": self.pipeline.in_flight,
            "log": {
                "events": self.eventlog.size,
                "checkpoint": head.model_dump() if head else None,
            },
        }


async def _respond(nc: NatsClient, msg: Msg, answer: BaseModel | bytes | FederationError) -> None:
    """Answer a service request: a model as JSON, a frame already encoded (a fetched
    result), or an error the NATS micro way (headers, empty body; :mod:`hub.answers`)."""
    if not msg.reply:
        return
    if isinstance(answer, FederationError):
        await nc.publish(msg.reply, b"", headers=error_headers(answer))
        return
    data = answer if isinstance(answer, bytes) else answer.model_dump_json().encode()
    try:
        await nc.publish(msg.reply, data)
    except nats.errors.MaxPayloadError:
        # the asker hears why at once, instead of waiting out its request's timeout
        log.warning("service.answer_too_large", subject=msg.subject, size=len(data))
        error = OversizeError(
            f"the answer is {len(data):,} bytes, more than one message carries here "
            f"({nc.max_payload:,})",
            hint="ask for less at a time",
        )
        await nc.publish(msg.reply, b"", headers=error_headers(error))


def read_status_file(data_dir: Path) -> dict[str, Any] | None:
    """The status a running node last wrote into its data dir, if any."""
    path = data_dir / "status.json"
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def read_embedded_url(data_dir: Path) -> str | None:
    """The URL of the embedded server a running node wrote into its data dir, if any."""
    path = data_dir / "nats.url"
    return path.read_text().strip() if path.exists() else None
