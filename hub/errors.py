"""The fedhub exception tree.

Every error fedhub raises on purpose derives from :class:`FederationError`; other
libraries' errors are converted where they enter (``raise X(...) from exc``)::

    FederationError
    ├── ConfigError              bad config file, option, key store or key file
    │   ├── KeyStoreError        missing key, wrong passphrase, corrupt key file
    │   └── ArgumentError        a call argument is malformed, or its @file missing/unreadable
    ├── TransportError           NATS unreachable, connection lost
    │   ├── CallTimeoutError     (also a TimeoutError) no answer before the deadline
    │   └── TransferError        a bulk transfer failed or was stopped; carries a code
    │       ├── TransferCancelledError  cancelled by either side
    │       └── TransferTimeoutError    (also a TimeoutError) deadline passed, peer silent
    ├── RemoteError              the remote side refused or failed; carries code + description
    │   ├── NotFoundError        unknown site, module or function
    │   │   └── UnreachableError nothing answers on the site's subject (site or way down)
    │   ├── UnauthorizedError    caller unknown, revoked, or not granted
    │   ├── ValidationError      arguments or result do not match the function's schema
    │   │   ├── SelectionError   a slice names an unknown dimension or variable, an index
    │   │   │                    out of range, or a result that is no array
    │   │   └── InterfaceChangedError  the function changed since the caller read its info
    │   ├── FunctionFailedError  the function raised (or its worker crashed)
    │   ├── CallCancelledError   cancelled by the caller or interrupted by shutdown
    │   ├── OversizeError        message above the configured limit
    │   └── ReplayError          request id or nonce seen before, or time outside the window
    ├── IntegrityError           a verification step failed; never a warning
    │   ├── SignatureError       a signature does not verify
    │   ├── ChainError           hash chain broken (gap, reorder, insertion, edit)
    │   ├── CheckpointError      a checkpoint's root or size does not match the events
    │   ├── LifecycleError       a request event that its request's state does not allow
    │   ├── DecryptionError      ciphertext cannot be opened with the given key
    │   │   └── ChunkError       one chunk of a sealed payload is wrong (names the chunk)
    │   └── CanonicalError       bytes are not in canonical form / cannot be encoded
    └── NodeError                the site node cannot do what was asked
        ├── UnknownFunctionError a module or function is not served by this node
        ├── LogConflictError     the event log refuses a write (sequence or chain conflict)
        └── StopRequestedError   asked to stop before it was serving (not a failure)

Each error has :meth:`FederationError.diagnostics`, one line a person can read, which the
CLIs print before exiting nonzero. On the wire an error is a code (``not_found``,
``unauthorized`` ...): :func:`error_code` and :func:`error_from_code` map between the two,
for call replies and service answers alike.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "CallCancelledError",
    "CallTimeoutError",
    "CanonicalError",
    "ChainError",
    "CheckpointError",
    "ChunkError",
    "ConfigError",
    "DecryptionError",
    "FederationError",
    "FunctionFailedError",
    "IntegrityError",
    "InterfaceChangedError",
    "KeyStoreError",
    "LifecycleError",
    "LogConflictError",
    "NodeError",
    "NotFoundError",
    "OversizeError",
    "RemoteError",
    "ReplayError",
    "SelectionError",
    "SignatureError",
    "StopRequestedError",
    "TransferCancelledError",
    "TransferError",
    "TransferTimeoutError",
    "TransportError",
    "UnauthorizedError",
    "UnknownFunctionError",
    "UnreachableError",
    "ValidationError",
    "caller_code",
    "error_code",
    "error_from_code",
    "service_status",
    "wire_codes",
]


class FederationError(Exception):
    """Root of every error fedhub raises on purpose."""

    #: What the user can do about it; appended to :meth:`diagnostics` when set.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def diagnostics(self) -> str:
        """One readable line: what happened and, when known, what to do."""
        line = f"{type(self).__name__}: {self.message}"
        if self.hint:
            line += f" ({self.hint})"
        return line


class ConfigError(FederationError):
    """A config file, option or key store is invalid."""


class KeyStoreError(ConfigError):
    """A key is missing, its file is corrupt, or its passphrase is wrong."""


class ArgumentError(ConfigError):
    """A call argument (``key=value``, ``key=@PATH``) is malformed, or the file it names is
    missing or unreadable: the command line is wrong, not the configuration (CLI exit 2)."""

    exit_code = 2


class TransportError(FederationError):
    """NATS could not be reached or the connection failed."""


class CallTimeoutError(TransportError, TimeoutError):
    """No answer arrived before the call's deadline."""


class TransferError(TransportError):
    """A bulk transfer (see :mod:`hub.transfer`) failed or was stopped.

    ``code`` says why, the same on both sides of the transfer: ``cancelled``, ``timeout``,
    ``refused`` (the receiver would not take it), ``integrity`` (a chunk or the whole
    payload did not verify at the receiver) or ``failed`` (anything else).
    """

    code: str = "failed"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code


class TransferCancelledError(TransferError):
    """A bulk transfer was cancelled by one of its two sides."""

    code = "cancelled"


class TransferTimeoutError(TransferError, TimeoutError):
    """A bulk transfer passed its deadline, or its peer stopped answering."""

    code = "timeout"


class RemoteError(FederationError):
    """The remote side refused or failed the call.

    ``code`` is the machine-readable reason carried in the reply (see docs/protocol.md).
    """

    code: str = "remote_error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code


class NotFoundError(RemoteError):
    """No such site, module or function."""

    code = "not_found"


class UnreachableError(NotFoundError):
    """Nothing answers on a site's subject: the site, or the way to it, is down (no
    responders). A NotFoundError, as the caller sees it; a client's recovery asks again."""


class UnauthorizedError(RemoteError):
    """The caller is unknown, revoked, or not granted this function."""

    code = "unauthorized"


class ValidationError(RemoteError):
    """Arguments or result do not match the function's schema."""

    code = "invalid_arguments"


class InterfaceChangedError(ValidationError):
    """The function's interface changed since the caller read the module's info: the call
    was not run (read the info again and call again)."""

    code = "interface_changed"


class SelectionError(ValidationError):
    """A slice of a kept result that cannot be taken (docs/results.md, "Slices")."""

    code = "bad_selection"


class FunctionFailedError(RemoteError):
    """The remote function raised, or the worker running it died."""

    code = "function_failed"


class CallCancelledError(RemoteError):
    """The call was cancelled by its caller or interrupted by a shutdown."""

    code = "cancelled"


class OversizeError(RemoteError):
    """A message is larger than the configured limit."""

    code = "oversize"


class ReplayError(RemoteError):
    """A request id or nonce was seen before, or its time is outside the window."""

    code = "replay"


class IntegrityError(FederationError):
    """A verification step failed."""


class SignatureError(IntegrityError):
    """A signature does not verify against the expected key."""


class ChainError(IntegrityError):
    """The hash chain is broken."""


class CheckpointError(IntegrityError):
    """A checkpoint does not match the events it claims to cover."""


class LifecycleError(IntegrityError):
    """A request event that the request's state does not allow (see :mod:`hub.lifecycle`)."""


class DecryptionError(IntegrityError):
    """Ciphertext cannot be opened with the given key."""


class ChunkError(DecryptionError):
    """One chunk of a sealed payload is flipped, missing, repeated, reordered or foreign.

    ``index`` is the chunk's position in its transfer (``None`` when the failure is about
    the whole payload: its header, its length or its hash).
    """

    def __init__(self, message: str, *, index: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.index = index


class CanonicalError(IntegrityError):
    """A value cannot be canonically encoded, or bytes are not canonical."""


class NodeError(FederationError):
    """The site node cannot do what was asked."""


class UnknownFunctionError(NodeError):
    """A module or function is not served by this node."""


class LogConflictError(NodeError):
    """The event log refused a write."""


class StopRequestedError(NodeError):
    """The node was asked to stop while still starting (e.g. waiting for NATS).

    Not a failure: ``fedhub-node run`` exits 0 on it.
    """


#: Wire error code → the error a caller raises for it and its service status (as HTTP).
#: The one table for call replies (``ReplyHeader.code``) and service answers (headers).
_CODES: dict[str, tuple[type[FederationError], int]] = {
    "invalid_arguments": (ValidationError, 400),
    "bad_selection": (SelectionError, 400),
    "interface_changed": (InterfaceChangedError, 400),
    "undecryptable": (RemoteError, 400),
    "unauthorized": (UnauthorizedError, 401),
    "not_found": (NotFoundError, 404),
    "replay": (ReplayError, 409),
    "cancelled": (CallCancelledError, 409),
    "oversize": (OversizeError, 413),
    "function_failed": (FunctionFailedError, 500),
    "internal_error": (FunctionFailedError, 500),
    "invalid_result": (RemoteError, 500),
    "integrity": (IntegrityError, 500),
    "busy": (RemoteError, 503),
    "transfer_failed": (TransferError, 502),
    "interrupted": (CallCancelledError, 503),
    "timeout": (CallTimeoutError, 504),
    # reasons a node logs for a rejection (``request.rejected``), as a status reports them
    "malformed": (ValidationError, 400),
    "bad_signature": (UnauthorizedError, 401),
    "misrouted": (NotFoundError, 404),
}


#: Reasons a node logs for a rejection whose reply carried another (the caller's) code.
_REJECTION_CODES = {
    "bad_signature": "unauthorized",
    "malformed": "invalid_arguments",
    "misrouted": "not_found",
}


def caller_code(code: str) -> str:
    """The wire code a caller sees for a code in a node's log: a rejection's reason
    (``malformed`` ...) becomes the code its error reply carried, others stay as they are;
    so a call's error is the same whether its reply or its status told it."""
    return _REJECTION_CODES.get(code, code)


def error_from_code(code: str, message: str, hint: str | None = None) -> FederationError:
    """The typed error for a wire error ``code`` (unknown codes: :class:`RemoteError`)."""
    cls, _ = _CODES.get(code, (RemoteError, 500))
    if issubclass(cls, RemoteError | TransferError):
        return cls(message, code=code, hint=hint)
    return cls(message, hint=hint)


#: A transfer's own codes that are also call codes (the others are ``transfer_failed``).
_TRANSFER_CODES = {"cancelled": "cancelled", "timeout": "timeout", "integrity": "integrity"}


def error_code(exc: FederationError) -> str:
    """The wire code of an error; :func:`error_from_code` turns it back into its class."""
    if isinstance(exc, RemoteError):
        return exc.code
    if isinstance(exc, TransferError):  # a bulk payload did not arrive whole
        return _TRANSFER_CODES.get(exc.code, "transfer_failed")
    if isinstance(exc, CallTimeoutError):
        return "timeout"
    if isinstance(exc, DecryptionError):
        return "undecryptable"
    if isinstance(exc, CanonicalError):
        return "invalid_result"
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, NodeError):
        return "busy"
    return "failed"


def service_status(code: str) -> int:
    """The numeric status of a wire error code, as in NATS micro's ``Nats-Service-Error-Code``."""
    return _CODES.get(code, (RemoteError, 500))[1]


def wire_codes() -> tuple[str, ...]:
    """Every wire error code with a class of its own."""
    return tuple(_CODES)
