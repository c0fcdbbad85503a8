"""fedhub's common language: protocol, keys, crypto, subjects, topology, client and audit.

The supported public surface is re-exported here; everything else may change::

    from hub import connect                 # blocking client (scripts, Jupyter)
    from hub import aconnect                # async client, same defaults as the CLI
    from hub import Client                  # async client
    from hub import Progress                # what a backend function may accept
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `fedhub call` pays it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from hub.client import CallHandle, Client, ModuleInfo, SyncClient, connect
    from hub.defaults import aconnect
    from hub.errors import (
        CallCancelledError,
        CallTimeoutError,
        ConfigError,
        FederationError,
        FunctionFailedError,
        IntegrityError,
        NotFoundError,
        OversizeError,
        RemoteError,
        ReplayError,
        TransportError,
        UnauthorizedError,
        ValidationError,
    )
    from hub.progress import Progress

__version__ = "0.1.0"

#: Public names imported on first use: ``import hub`` (and so every ``fedhub`` command)
#: must not pay for the client, NATS and the array stack before it needs them, nor (for
#: ``fedhub call`` through the agent, hub.agent_client) even for the error classes.
_ERRORS = (
    "CallCancelledError",
    "CallTimeoutError",
    "ConfigError",
    "FederationError",
    "FunctionFailedError",
    "IntegrityError",
    "NotFoundError",
    "OversizeError",
    "RemoteError",
    "ReplayError",
    "TransportError",
    "UnauthorizedError",
    "ValidationError",
)
_LAZY = {
    **dict.fromkeys(_ERRORS, "hub.errors"),
    "CallHandle": "hub.call_handle",
    "Client": "hub.client",
    "ModuleInfo": "hub.call_handle",
    "SyncClient": "hub.sync_client",
    "connect": "hub.sync_client",
    "Progress": "hub.progress",
    "aconnect": "hub.defaults",
}


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: a name of ``table`` (name -> module)
    is imported from its module when first asked for, then kept in the package. (Also
    ``hub.nats``'s; it lives here so that ``import hub`` imports nothing else.)"""

    def attribute(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib
        import sys

        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return attribute


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "CallCancelledError",
    "CallHandle",
    "CallTimeoutError",
    "Client",
    "ConfigError",
    "FederationError",
    "FunctionFailedError",
    "IntegrityError",
    "ModuleInfo",
    "NotFoundError",
    "OversizeError",
    "Progress",
    "RemoteError",
    "ReplayError",
    "SyncClient",
    "TransportError",
    "UnauthorizedError",
    "ValidationError",
    "__version__",
    "aconnect",
    "connect",
]
