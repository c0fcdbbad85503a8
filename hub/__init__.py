"""fedhub's common language: protocol, keys, crypto, subjects, topology, client and audit.

The supported public surface is re-exported here; everything else may change::

    from hub import connect                 # blocking client (scripts, Jupyter)
    from hub import Client                  # async client
    from hub import Progress                # what a backend function may accept
"""

from __future__ import annotations

from hub.client import CallHandle, Client, ModuleInfo, SyncClient, connect
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
    "connect",
]
