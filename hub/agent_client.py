"""The ``fedhub`` side of the resident agent (:mod:`hub.agent`), in the standard library only.

``fedhub call`` (and ``fetch``) first asks the user's agent over a Unix socket to run the
command: it sends the command line, the working directory and the ``FEDHUB_*``
environment, then writes what the agent sends back to its own stdout and stderr as it
comes (progress too) and exits with the agent's exit code. The agent has fedhub imported
and a client connected already, so the command costs little more than the call itself.
When no agent answers, :func:`run` starts one in the background and returns None: this
call runs in-process as without an agent. ``FEDHUB_AGENT=off`` (or ``--no-agent``) never
asks and never starts one. docs/agent.md.

This module imports ``os``, ``sys``, ``_socket`` (the C module under ``socket``, whose
Python layer pulls in ``selectors`` and ``enum``) and ``_signal`` (the same, under
``signal``) only: it runs before anything else of fedhub, on every such command.

The wire (one connection per command; both sides check the other's uid)::

    request   MAGIC, length (4 bytes, big-endian), body: fields TAG + text + NUL
              (A: one argv item, C: cwd, E: NAME=value, T: ttys "010", O: op, B: build)
    then      b"I" for each Ctrl-C of the caller
    answer    frames TAG (1 byte) + length (4 bytes) + payload:
              1 stdout bytes, 2 stderr bytes, X exit code, F "run it yourself" (reason),
              S status (JSON text), ! refused (one line)
"""

# os.path, not pathlib, and no contextlib: every module imported here is paid on each command
# ruff: noqa: PTH100, PTH109, PTH111, PTH112, PTH116, PTH118, PTH120, SIM105

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C modules: see the module docstring
import _socket
import os
import sys

__all__ = [
    "AGENT_COMMANDS",
    "MAGIC",
    "MAX_REQUEST",
    "agent_dir",
    "ask",
    "build_id",
    "command_of",
    "connect",
    "disabled",
    "encode_request",
    "frame",
    "run",
    "start_agent",
]

#: Commands the agent runs; any other runs in-process.
AGENT_COMMANDS = frozenset({"call", "fetch"})
#: First bytes of every request (and the protocol's version).
MAGIC = b"fedhub-agent/1\n"
#: The largest request body the agent reads (a command line and its environment).
MAX_REQUEST = 256 * 1024
#: Environment names sent along besides ``FEDHUB_*`` (where the key store is by default).
CALLER_ENV = ("HOME", "XDG_CONFIG_HOME", "COLUMNS")
#: ``FEDHUB_AGENT`` values that turn the agent off.
OFF = frozenset({"off", "0", "no", "false"})
#: Global options of ``fedhub`` that take a value (skipped to find the command).
_VALUED = frozenset({"--home", "--log-level"})
#: A Unix socket path must fit in ``sockaddr_un`` (108 bytes on Linux, with its NUL).
_MAX_PATH = 100
SOCKET_NAME = "agent.sock"


def disabled(argv: list[str], env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether the agent is turned off (``FEDHUB_AGENT=off`` or ``--no-agent``)."""
    return env.get("FEDHUB_AGENT", "").strip().lower() in OFF or "--no-agent" in argv


def command_of(argv: list[str]) -> str | None:
    """The command word after ``fedhub``'s global options, if the line is plain enough."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif word.startswith("-"):
            if word.split("=", 1)[0] not in {*_VALUED, "--log-json", "--no-agent"}:
                return None  # --help, --version, or a mistake: the full parser says
        else:
            return word
    return None


def agent_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The agent's folder: ``$FEDHUB_HOME/agent``, else ``$XDG_RUNTIME_DIR/fedhub``, else
    ``agent`` in the default key store home; None when its socket path would not fit."""
    if env.get("FEDHUB_HOME"):
        folder = os.path.join(env["FEDHUB_HOME"], "agent")
    elif env.get("XDG_RUNTIME_DIR"):
        folder = os.path.join(env["XDG_RUNTIME_DIR"], "fedhub")
    else:  # as hub.keys.default_home (a test keeps the two alike)
        config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        folder = os.path.join(config, "fedhub", "agent")
    folder = os.path.abspath(folder)
    if len(os.fsencode(os.path.join(folder, SOCKET_NAME))) > _MAX_PATH:
        return None
    return folder


def private_dir(folder: str) -> bool:
    """Whether ``folder`` is a real directory of this user that no one else may enter."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    is_dir = (st.st_mode & 0o170000) == 0o040000  # not a symlink to one
    return is_dir and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    return int.from_bytes(raw[4:8], sys.byteorder)


def connect(folder: str, timeout: float = 5.0) -> _socket.socket | None:
    """A connection to the agent in ``folder``, or None when none of this user answers."""
    if not hasattr(_socket, "SO_PEERCRED") or not private_dir(folder):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.path.join(folder, SOCKET_NAME))
        if peer_uid(sock) != os.getuid():
            raise OSError("the agent's socket belongs to another user")
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return sock


def build_id() -> str:
    """What identifies this installation of fedhub: its version and when its package folder
    last changed (an upgrade), so an agent of another build steps aside."""
    from hub import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    return f"{__version__}:{os.stat(here).st_mtime_ns}"


def _isatty(fd: int) -> str:
    try:
        return "1" if os.isatty(fd) else "0"
    except OSError:
        return "0"


def encode_request(
    argv: list[str],
    *,
    op: str = "run",
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    ttys: str | None = None,
) -> bytes:
    """A request as :data:`MAGIC`, length and body (the module docstring)."""
    env = (
        env
        if env is not None
        else {k: v for k, v in os.environ.items() if k.startswith("FEDHUB_") or k in CALLER_ENV}
    )
    if ttys is None:
        ttys = _isatty(0) + _isatty(1) + _isatty(2)
    if ttys[1:].count("1") and "COLUMNS" not in env:
        try:
            env = {**env, "COLUMNS": str(os.get_terminal_size(1 if ttys[1] == "1" else 2)[0])}
        except OSError:
            pass
    fields = [b"O" + op.encode(), b"B" + build_id().encode(), b"T" + ttys.encode()]
    fields.append(b"C" + os.fsencode(cwd if cwd is not None else os.getcwd()))
    fields += [b"E" + os.fsencode(f"{k}={v}") for k, v in env.items()]
    fields += [b"A" + os.fsencode(word) for word in argv]
    body = b"".join(field + b"\0" for field in fields)
    return MAGIC + len(body).to_bytes(4, "big") + body


def frame(tag: bytes, payload: bytes) -> bytes:
    """One answer frame."""
    return tag + len(payload).to_bytes(4, "big") + payload


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _relay(sock: _socket.socket, request: bytes) -> int | None:
    """Send ``request``, then write the agent's frames out until its exit code; None: run
    the command here.

    Ctrl-C, wherever it lands, is passed on to the agent, which asks the node to cancel
    as the CLI does; a second one stops at once (130); one before the request went out
    sends nothing (130). A handler of its own rather than KeyboardInterrupt, which could
    land between two steps, outside any ``try``. The handler stays once the agent has
    answered: the process ends right after (:func:`hub.cli.main`)."""
    state = _Relay()

    def on_interrupt(signum: int, frame: object) -> None:
        if state.interrupted and state.sent:
            os._exit(130)
        state.interrupted = True
        if state.sent:
            try:
                sock.sendall(b"I")
            except OSError:
                pass

    try:
        previous = _signal.signal(_signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: signals go elsewhere
        previous = None
    try:
        # SIGINT held back while the request goes out: after it, a Ctrl-C is told
        held = _signal.pthread_sigmask(_signal.SIG_BLOCK, [_signal.SIGINT])
        try:
            if state.interrupted:
                return 130
            sock.sendall(request)
            state.sent = True
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
        while not state.step(sock):
            pass
    except BaseException:
        if previous is not None:
            _signal.signal(_signal.SIGINT, previous)
        raise
    if state.code is None and previous is not None:
        _signal.signal(_signal.SIGINT, previous)  # the command runs here, as without an agent
    return state.code


class _Relay:
    """What :func:`_relay` has received and written so far, and how it ended."""

    def __init__(self) -> None:
        self.buffer = b""
        self.wrote = False
        self.sent = False  # the request has gone out
        self.interrupted = False
        self.code: int | None = None  # the exit code; None: run the command here

    def step(self, sock: _socket.socket) -> bool:
        """Receive once and write out every whole frame; whether the command has ended
        (then :attr:`code` says how)."""
        chunk = sock.recv(1 << 16)
        if not chunk:
            if self.wrote:
                _write(2, b"error: the fedhub agent stopped during the command "
                       b"(FEDHUB_AGENT=off runs commands without it)\n")  # fmt: skip
                self.code = 1
            return True
        self.buffer += chunk
        while len(self.buffer) >= 5:
            size = int.from_bytes(self.buffer[1:5], "big")
            if len(self.buffer) < 5 + size:
                break
            tag, payload = self.buffer[:1], self.buffer[5 : 5 + size]
            self.buffer = self.buffer[5 + size :]
            if tag in (b"1", b"2"):
                self.wrote = True
                _write(int(tag), payload)
            elif tag == b"X":
                self.code = int(payload)
                return True
            else:  # F (the agent leaves this one to us), ! (refused), or unknown
                self.code = 1 if self.wrote else None
                return True
        return False


def run(argv: list[str]) -> int | None:
    """Run ``fedhub argv`` through the user's agent: its exit code, or None when this
    process must run it (no agent command, agent off, or none answering: then one is
    started in the background for the next command)."""
    if command_of(argv) not in AGENT_COMMANDS or disabled(argv):
        return None
    if "--log-json" in argv or any(a.startswith("--log-level") for a in argv):
        return None  # logging is set per process: these run here
    folder = agent_dir()
    if folder is None:
        return None
    sock = connect(folder)
    if sock is None:
        # only where one can serve: not in a folder it would refuse (each call would start
        # one in vain), nor below a key store home that does not exist (a mistyped one)
        fresh = not os.path.lexists(folder)
        if os.path.isdir(os.path.dirname(folder)) and (fresh or private_dir(folder)):
            start_agent(folder)
        return None
    try:
        return _relay(sock, encode_request(argv))
    except OSError:
        return None
    finally:
        sock.close()


def ask(folder: str, op: str) -> bytes | None:
    """The agent's answer to ``op`` (``status``/``stop``): the payload of its S or X
    frame; None when no agent answers."""
    sock = connect(folder)
    if sock is None:
        return None
    try:
        sock.sendall(encode_request([], op=op, env={}, ttys="000"))
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    except OSError:
        return None
    finally:
        sock.close()
    if len(data) < 5 or data[:1] not in (b"S", b"X"):
        return None
    return data[5 : 5 + int.from_bytes(data[1:5], "big")]


def start_agent(folder: str, idle: float | None = None) -> int:
    """Start an agent for ``folder`` in the background (its own session, no terminal);
    its pid. It gets no ``FEDHUB_*`` variable but ``FEDHUB_AGENT_IDLE``: a caller's
    settings, a passphrase above all, travel with each request instead."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    if idle is not None:
        env["FEDHUB_AGENT_IDLE"] = str(idle)
    elif "FEDHUB_AGENT_IDLE" in os.environ:
        env["FEDHUB_AGENT_IDLE"] = os.environ["FEDHUB_AGENT_IDLE"]
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.agent", folder],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env=env,
    )
    return process.pid
