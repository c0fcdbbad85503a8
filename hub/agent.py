"""The resident ``fedhub`` agent: runs ``fedhub call`` and ``fetch`` for the user's own
command lines, with fedhub imported and clients connected already (``python -m hub.agent
FOLDER``; started by the CLI itself or ``fedhub agent start``). docs/agent.md.

What it holds: for each connection a caller used (key store home, URL, identity, NATS
credentials, CA, passphrase), one connected :class:`hub.client.Client`, with that
identity's keys in memory. A key store whose files change (a key rotated, removed or
re-protected, a site pinned) is read again: the old client is closed once its calls end.
It writes no key anywhere; its folder holds the socket, its pid and its own log.

How it keeps others out: its folder must be this user's and mode 0700 (it refuses to start
otherwise), the socket is 0600, and every connection's peer uid (SO_PEERCRED) must be its
own. A request that is malformed or too large gets one line (a ``!`` frame) and is closed.

A command runs exactly as in-process (:mod:`hub.cli_calls`): its reading part under the
caller's working directory and ``FEDHUB_*`` environment, then its coroutine on the agent's
loop, with stdout and stderr sent back to the caller as frames and the caller's Ctrl-C
arriving as a byte. It exits after ``FEDHUB_AGENT_IDLE`` seconds without a command
(default 600), when its socket file is removed or replaced, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from hub import agent_client as wire
from hub.agent_host import AGENT_HOST, Connection, connect_with
from hub.cli import build_parser
from hub.cli_calls import passphrase_prompt
from hub.client import Client
from hub.cliutil import configure_logging, fail
from hub.errors import ConfigError, FederationError

__all__ = [
    "DEFAULT_IDLE",
    "Agent",
    "ClientPool",
    "Request",
    "RequestError",
    "ensure_private_dir",
    "keystore_stamp",
    "parse_request",
    "refuse_peer",
]

log = structlog.get_logger(__name__)

#: Seconds without a command after which the agent exits (``FEDHUB_AGENT_IDLE``).
DEFAULT_IDLE = 600.0
#: How often the agent looks at its socket file and its idle time (seconds).
WATCH_EVERY = 1.0
#: How long a caller may take to send its request (seconds).
REQUEST_WINDOW = 10.0


class RequestError(ValueError):
    """A request the agent cannot read (answered with one ``!`` line)."""


@dataclass(frozen=True)
class Request:
    """One caller's request, read from the socket."""

    op: str
    build: str
    ttys: str
    cwd: str
    env: dict[str, str]
    argv: list[str]


def parse_request(body: bytes) -> Request:
    """The request in ``body`` (the part after :data:`MAGIC` and the length)."""
    if body and not body.endswith(b"\0"):
        raise RequestError("a field does not end with NUL")
    fields: dict[str, list[str]] = {}
    for item in body.split(b"\0")[:-1]:
        if not item:
            raise RequestError("an empty field")
        tag, text = item[:1].decode("ascii", "replace"), os.fsdecode(item[1:])
        if tag not in "OBTCEA":
            raise RequestError(f"unknown field {tag!r}")
        fields.setdefault(tag, []).append(text)
    one = {tag: values[0] for tag, values in fields.items() if tag in "OBTC"}
    if any(len(fields.get(tag, ())) != 1 for tag in "OBTC"):
        raise RequestError("op, build, ttys and cwd must each be given once")
    if one["O"] not in ("run", "status", "stop"):
        raise RequestError(f"unknown op {one['O']!r}")
    if len(one["T"]) != 3 or set(one["T"]) - {"0", "1"}:
        raise RequestError("ttys must be three of 0 and 1")
    if not Path(one["C"]).is_absolute():
        raise RequestError("cwd must be an absolute path")
    env: dict[str, str] = {}
    for pair in fields.get("E", ()):
        name, sep, value = pair.partition("=")
        if not sep or not (name.startswith("FEDHUB_") or name in wire.CALLER_ENV):
            raise RequestError(f"environment entry {name!r} is not one the agent takes")
        env[name] = value
    return Request(one["O"], one["B"], one["T"], one["C"], env, fields.get("A", []))


def refuse_peer(uid: int) -> str | None:
    """Why a peer with ``uid`` is refused (None: it is this user)."""
    if uid != os.getuid():
        return f"refused: the fedhub agent of uid {os.getuid()} serves no other user (uid {uid})"
    return None


def ensure_private_dir(folder: Path) -> None:
    """Make ``folder`` (mode 0700), or check the one there: a real directory of this user
    that no one else may enter; else ConfigError."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    if not wire.private_dir(str(folder)):
        st = folder.lstat()
        raise ConfigError(
            f"the agent's folder {folder} is not private (mode {st.st_mode & 0o777:04o}, "
            f"uid {st.st_uid}): refusing to serve from it",
            hint=f"remove it, or run: chmod 700 {folder}",
        )


def keystore_stamp(home: Path) -> tuple[Any, ...]:
    """What changes when any file of ``home``'s key store changes (name, inode, size,
    mtime and mode of each key file)."""
    keys = home / "keys"
    try:
        entries = list(os.scandir(keys))
        folder = keys.stat().st_mtime_ns
    except FileNotFoundError:
        return ()
    stamp = []
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            st = entry.stat(follow_symlinks=False)
            stamp.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
    return (folder, *sorted(stamp))


# --- clients ----------------------------------------------------------------------------


@dataclass
class _Entry:
    stamp: tuple[Any, ...]
    task: asyncio.Task[Client]
    users: int = 0
    retired: bool = False

    def alive(self) -> bool:
        if not self.task.done():
            return True
        if self.task.cancelled() or self.task.exception() is not None:
            return False
        fed = self.task.result()
        return fed.nc.is_connected and not fed._closed


class ClientPool:
    """Connected clients, one per connection a caller used; a client whose key store
    changed, or whose connection dropped, is replaced (and closed once unused)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(conn: Connection) -> tuple[Any, ...]:
        secret = conn.passphrase
        digest = hashlib.sha256(secret.encode()).hexdigest() if secret is not None else None
        return (conn.url, conn.identity, str(conn.home), conn.creds, conn.ca, conn.timeout, digest)

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def client(self, conn: Connection) -> AsyncIterator[Client]:
        """A connected client for ``conn`` (kept after the block)."""
        key = self._key(conn)
        stamp = keystore_stamp(conn.home)
        entry = self._entries.get(key)
        if entry is not None and (entry.stamp != stamp or not entry.alive()):
            log.info("agent.client_replaced", keys_changed=entry.stamp != stamp)
            self._retire(key, entry)
            entry = None
        if entry is None:  # connected outside any command's context (its output, its host)
            task = asyncio.create_task(connect_with(conn), context=contextvars.Context())
            entry = self._entries[key] = _Entry(stamp, task)
        entry.users += 1
        try:
            try:
                fed = await asyncio.shield(entry.task)
            except BaseException:
                if entry.task.done() and self._entries.get(key) is entry:
                    del self._entries[key]  # a failed connect is tried again next time
                raise
            yield fed
        finally:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                self._close(entry)

    def _retire(self, key: tuple[Any, ...], entry: _Entry) -> None:
        del self._entries[key]
        entry.retired = True
        if entry.users == 0:
            self._close(entry)

    def _close(self, entry: _Entry) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await (await entry.task).aclose()

        task = asyncio.create_task(close(), context=contextvars.Context())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every client."""
        for key, entry in list(self._entries.items()):
            self._retire(key, entry)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)


# --- one caller -------------------------------------------------------------------------


@dataclass
class Session:
    """One caller's command: where its output goes and its Ctrl-C comes from."""

    writer: asyncio.StreamWriter
    ttys: str
    pool: ClientPool
    interrupt: asyncio.Event | None = None
    interrupted: bool = False
    task: asyncio.Task[int | None] | None = None
    wrote: bool = False
    _pending: list[bytes] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _thread: int = field(default_factory=threading.get_ident)

    def send(self, tag: bytes, payload: bytes) -> None:
        """Send a frame: frames of one turn of the loop go out together (one syscall).
        From another thread (a command's worker, e.g. a library's warning), via the loop."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.send, tag, payload)
            return
        self.wrote = self.wrote or tag in (b"1", b"2")
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(wire.frame(tag, payload))

    def flush(self) -> None:
        """Send the frames not sent yet."""
        if self._pending and not self.writer.is_closing():
            self.writer.write(b"".join(self._pending))
        self._pending.clear()

    def client(self, conn: Connection) -> contextlib.AbstractAsyncContextManager[Client]:
        return self.pool.client(conn)

    @contextlib.asynccontextmanager
    async def interrupts(self) -> AsyncIterator[asyncio.Event]:
        self.interrupt = asyncio.Event()
        if self.interrupted:
            self.interrupt.set()
        try:
            yield self.interrupt
        finally:
            self.interrupt = None

    def on_interrupt(self) -> None:
        """The caller pressed Ctrl-C: a running call is cancelled at its node (the
        command's own handling); before that, the command stops (exit 130)."""
        self.interrupted = True
        if self.interrupt is not None:
            self.interrupt.set()
        elif self.task is not None:
            self.task.cancel()


SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "fedhub_agent_session", default=None
)


class _Relay(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of the agent: the current command's caller gets what
    is written (as frames), anything else goes to the agent's own log."""

    def __init__(self, tag: bytes, fallback: Any) -> None:
        self._tag = tag
        self._fallback = fallback

    def write(self, text: str) -> int:
        session = SESSION.get()
        if session is None:
            self._fallback.write(text)
        else:
            session.send(self._tag, text.encode("utf-8", "surrogateescape"))
        return len(text)

    def flush(self) -> None:
        if SESSION.get() is None:
            self._fallback.flush()

    def isatty(self) -> bool:
        session = SESSION.get()
        return session is not None and session.ttys[int(self._tag)] == "1"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _Fallback(Exception):  # noqa: N818 (a signal inside this module, never raised out)
    """This command is one the caller runs in-process (the reason in its text)."""


@contextlib.contextmanager
def as_caller(request: Request) -> Iterator[None]:
    """The caller's ``FEDHUB_*`` environment and working directory, for the synchronous
    reading part of a command only (no await inside: no other command interleaves)."""
    here = Path.cwd()
    try:
        os.chdir(request.cwd)
    except OSError as exc:
        raise _Fallback(f"cannot enter {request.cwd}: {exc.strerror}") from exc
    names = [k for k in os.environ if k.startswith("FEDHUB_") or k in wire.CALLER_ENV]
    saved = {k: os.environ.pop(k) for k in names}
    os.environ.update(request.env)
    try:
        yield
    finally:
        os.chdir(here)
        for name in [k for k in os.environ if k.startswith("FEDHUB_") or k in wire.CALLER_ENV]:
            del os.environ[name]
        os.environ.update(saved)


# --- the agent --------------------------------------------------------------------------


class Agent:
    """The agent serving the socket in ``folder`` until idle for ``idle`` seconds."""

    def __init__(self, folder: Path, idle: float = DEFAULT_IDLE) -> None:
        self.folder = folder
        self.idle = idle
        self.socket_path = folder / wire.SOCKET_NAME
        self.pool = ClientPool()
        self.build = wire.build_id()
        self.started = time.monotonic()
        self.last = time.monotonic()
        self.active = 0
        self.commands = 0
        self.stopping = asyncio.Event()
        self._inode = 0
        self._parsers: dict[tuple[str | None, str | None], argparse.ArgumentParser] = {}

    def parser(self, command: str | None) -> argparse.ArgumentParser:
        """``fedhub``'s parser for ``command``, built once: the only default a parser
        reads from the environment is ``--creds`` ($FEDHUB_CREDS), part of the key."""
        key = (command, os.environ.get("FEDHUB_CREDS"))
        if key not in self._parsers:
            self._parsers[key] = build_parser(command)
        return self._parsers[key]

    def bind(self) -> socket.socket:
        """Take the folder's lock and bind the socket (0600), replacing a stale one;
        ConfigError when another agent holds the folder or it is not private."""
        ensure_private_dir(self.folder)
        lock = os.open(self.folder / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock)
            raise ConfigError(f"another agent serves {self.folder}") from exc
        self._lock = lock  # held until the process ends
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # no agent holds the lock: nothing is behind it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        self.socket_path.chmod(0o600)
        self._inode = self.socket_path.stat().st_ino
        pid = self.folder / "agent.pid"
        fd = os.open(pid, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return sock

    async def serve(self, sock: socket.socket) -> None:
        """Serve until stopped (idle, socket gone, SIGTERM or a ``stop`` request)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.stopping.set)
        server = await asyncio.start_unix_server(self._connection, sock=sock)
        log.info("agent.started", folder=str(self.folder), idle=self.idle)
        watcher = asyncio.create_task(self._watch())
        try:
            await self.stopping.wait()
        finally:
            watcher.cancel()
            server.close()
            await self.pool.aclose()
            with contextlib.suppress(FileNotFoundError):
                if self.socket_path.stat().st_ino == self._inode:
                    self.socket_path.unlink()
                    (self.folder / "agent.pid").unlink(missing_ok=True)
            log.info("agent.stopped")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                gone = self.socket_path.stat().st_ino != self._inode
            except FileNotFoundError:
                gone = True
            idle = self.active == 0 and time.monotonic() - self.last > self.idle
            if gone or idle:
                log.info("agent.exiting", reason="socket removed" if gone else "idle")
                self.stopping.set()
                return

    def status(self) -> dict[str, Any]:
        """What ``fedhub agent status`` shows (no secret)."""
        return {
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "idle_timeout": self.idle,
            "uptime": round(time.monotonic() - self.started, 1),
            "commands_running": self.active,
            "commands_run": self.commands,
            "clients": len(self.pool),
        }

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            refusal = refuse_peer(wire.peer_uid(writer.get_extra_info("socket")))
            if refusal is not None:
                log.warning("agent.peer_refused", reason=refusal)
                writer.write(wire.frame(b"!", refusal.encode() + b"\n"))
                return
            try:
                async with asyncio.timeout(REQUEST_WINDOW):  # no task of its own, as wait_for
                    request = await _read_request(reader)
            except (RequestError, TimeoutError, asyncio.IncompleteReadError) as exc:
                text = f"fedhub agent: malformed request: {exc or 'incomplete'}"
                writer.write(wire.frame(b"!", text.encode() + b"\n"))
                return
            if request.op == "status":
                writer.write(wire.frame(b"S", json.dumps(self.status()).encode()))
            elif request.op == "stop":
                writer.write(wire.frame(b"X", b"0"))
                self.stopping.set()
            elif request.build != self.build:  # fedhub was upgraded: a new agent takes over
                writer.write(wire.frame(b"F", b"the agent is of another build of fedhub"))
                self.stopping.set()
            else:
                await self._run(request, reader, writer)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.drain()
            writer.close()

    async def _run(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = Session(writer, request.ttys, self.pool)
        self.active += 1
        self.commands += 1
        try:
            session.task = asyncio.create_task(self._command(request, session))
            listener = asyncio.create_task(_listen(reader, session))
            code: int | None
            try:
                code = await session.task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                code = 130 if session.interrupted else None  # else the caller went away
                if code is not None:
                    session.send(b"2", b"interrupted\n")
            finally:
                listener.cancel()
            if code is not None:
                session.send(b"X", str(code).encode())
            session.flush()
        finally:
            self.active -= 1
            self.last = time.monotonic()

    async def _command(self, request: Request, session: Session) -> int | None:
        """Run the request's command as ``fedhub`` would; its exit code (None: told the
        caller to run it in-process)."""
        SESSION.set(session)
        AGENT_HOST.set(session)
        try:
            with as_caller(request):
                command = wire.command_of(request.argv)
                if command not in wire.AGENT_COMMANDS:
                    raise _Fallback("not a command the agent runs")
                args = self.parser(command).parse_args(request.argv)
                prepare = getattr(args, "prepare", None)
                if prepare is None or args.log_json or str(args.log_level).lower() != "warning":
                    raise _Fallback("not a command the agent runs this way")
                if request.ttys[0] == "1" and passphrase_prompt(args) is not None:
                    raise _Fallback("the passphrase is asked on the caller's terminal")
                coro = prepare(args)
            return int(await coro)
        except _Fallback as exc:  # raised before the command wrote anything
            session.send(b"F", str(exc).encode())
            return None
        except SystemExit as exc:  # argparse: --help, or a wrong command line (usage shown)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except FederationError as exc:
            code = int(getattr(exc, "exit_code", 1))
            fail(exc, code)
            return code
        except Exception as exc:  # a bug: its traceback goes to the agent's log, not the caller
            contextvars.Context().run(log.exception, "agent.command_failed")
            text = " ".join(str(exc).split())[:300]
            sys.stderr.write(
                f"error: unexpected {type(exc).__name__} in the fedhub agent: {text} "
                "(FEDHUB_AGENT=off runs the command without it)\n"
            )
            return 1


async def _read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readexactly(len(wire.MAGIC) + 4)
    if head[: len(wire.MAGIC)] != wire.MAGIC:
        raise RequestError("not a fedhub agent request")
    size = int.from_bytes(head[len(wire.MAGIC) :], "big")
    if size > wire.MAX_REQUEST:
        raise RequestError(f"{size} bytes is more than the {wire.MAX_REQUEST} a request may have")
    return parse_request(await reader.readexactly(size))


async def _listen(reader: asyncio.StreamReader, session: Session) -> None:
    """The caller's Ctrl-C (``I``) while the command runs; its going away cancels it."""
    while True:
        data = await reader.read(64)
        if not data:
            if session.task is not None and not session.task.done():
                session.task.cancel()
            return
        for _ in range(data.count(b"I")):
            session.on_interrupt()


def main(argv: list[str] | None = None) -> int:
    """``python -m hub.agent FOLDER``: serve until idle (started in the background)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hub.agent FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    idle = float(os.environ.get("FEDHUB_AGENT_IDLE") or DEFAULT_IDLE)
    agent = Agent(folder, idle)
    try:
        sock = agent.bind()
    except ConfigError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    logfile = os.open(folder / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(logfile, 1)
    os.dup2(logfile, 2)
    os.close(logfile)
    own = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own stderr)
    sys.stdout = _Relay(b"1", own)
    sys.stderr = _Relay(b"2", own)
    configure_logging()
    import logging

    nats_log = logging.getLogger("nats")
    nats_log.addHandler(logging.NullHandler())
    nats_log.propagate = False
    asyncio.run(agent.serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
