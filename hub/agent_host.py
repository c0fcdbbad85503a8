"""How a command of ``fedhub`` gets its client: a new one in the ordinary CLI, the resident
agent's warm one when the agent (:mod:`hub.agent`) runs the command for a caller.

The command code is the same either way (:mod:`hub.cli_calls`); the agent sets
:data:`AGENT_HOST` for the command it runs, and :func:`connected` and the command's Ctrl-C
handling ask it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hub.client import Client

__all__ = ["AGENT_HOST", "AgentHost", "Connection", "connect_with", "connected", "running_in_agent"]


@dataclass(frozen=True)
class Connection:
    """Where and as whom a command connects, every default resolved (environment, key
    store, passphrase, paths made absolute): nothing of it is read again later."""

    url: str
    identity: str
    home: Path
    passphrase: str | None = field(repr=False)  # never in a log line or traceback
    creds: str | None
    ca: str | None
    timeout: float


async def connect_with(conn: Connection) -> Client:
    """A client connected as ``conn`` says."""
    return await Client.connect(
        conn.url,
        conn.identity,
        home=conn.home,
        passphrase=conn.passphrase,
        creds=conn.creds,
        tls=conn.ca,
        default_timeout=conn.timeout,
    )


class AgentHost(Protocol):
    """What the resident agent (:mod:`hub.agent`) gives a command it runs for a caller:
    a warm client for a connection, and the caller's Ctrl-C."""

    def client(self, conn: Connection) -> contextlib.AbstractAsyncContextManager[Client]:
        """A connected client for ``conn`` (kept for later commands; not closed)."""
        ...

    def interrupts(self) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An event set when the caller presses Ctrl-C while the block runs."""
        ...


#: Set by the agent while it runs a command; None in the ordinary, in-process CLI.
AGENT_HOST: contextvars.ContextVar[AgentHost | None] = contextvars.ContextVar(
    "fedhub_agent_host", default=None
)


def running_in_agent() -> AgentHost | None:
    """The agent's host of the command running now (None: the ordinary CLI)."""
    return AGENT_HOST.get()


@contextlib.asynccontextmanager
async def connected(conn: Connection) -> AsyncIterator[Client]:
    """A client for ``conn``: the agent's warm one, else a new one closed afterwards."""
    host = AGENT_HOST.get()
    if host is not None:
        async with host.client(conn) as fed:
            yield fed
    else:
        async with await connect_with(conn) as fed:
            yield fed
