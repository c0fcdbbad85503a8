"""Subject, stream and identity names of the federation (pure functions, no I/O).

Every NATS subject fedhub uses is built and parsed here, so the rest of the code never
glues strings together by hand::

    fh.call.<site>.<module>.<function>        a call (function may be ``Class.method``)
    fh.inbox.<site>.<user>.<token>            replies, progress and results for a caller
    fh.bulk.<site>.<transfer>                 bulk transfer messages to a site (chunks, acks)
    fh.events.<site>.<node>                   a node's signed event log
    fh.info.<site>.<module>                   a module's schemas (fedhub's info endpoint)
    fh.status.<site>                          status and cancel requests to a site
    fh.discover.info                          ``$SRV.INFO`` of every other site (via the hub)

Name syntax (checked everywhere a name enters):

- site: ``[a-z][a-z0-9_-]{0,31}`` (also the site's JetStream domain)
- module and function: Python identifiers; a class method is ``Class.method``
- user and node names: ``[a-z0-9][a-z0-9_-]{0,63}``
- identity ids: ``name@site`` (user), ``site:name`` (site), ``node:site/name`` (node)

Invalid names raise :class:`hub.errors.ConfigError` naming the bad part.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from hub.errors import ConfigError

__all__ = [
    "CALLS_CONSUMER",
    "CALLS_STREAM",
    "DIRECTORY_OUT_STREAM",
    "DIRECTORY_STREAM",
    "DISCOVERY_SUBJECT",
    "EVENTS_STREAM",
    "RESULTS_BUCKET",
    "SUBJECT_ROOT",
    "CallAddress",
    "Identity",
    "IdentityKind",
    "admin_subject",
    "bulk_filter",
    "bulk_subject",
    "call_subject",
    "calls_filter",
    "directory_filter",
    "directory_subject",
    "events_filter",
    "events_subject",
    "hub_events_stream",
    "inbox_prefix",
    "inbox_subject",
    "info_subject",
    "instance_log_id",
    "is_inbox_of",
    "is_log_of",
    "parse_address",
    "parse_call_subject",
    "service_name",
    "status_subject",
    "validate_function",
    "validate_identity",
    "validate_module",
    "validate_name",
    "validate_site",
    "validate_token",
]

#: First token of every fedhub subject.
SUBJECT_ROOT = "fh"
#: Where a hub with per-site accounts delivers ``$SRV.INFO`` requests to every other site.
DISCOVERY_SUBJECT = f"{SUBJECT_ROOT}.discover.info"
#: Work-queue stream of a site's incoming calls (one per site JetStream domain).
CALLS_STREAM = "FH_CALLS"
#: Stream of a site's event logs (one per site JetStream domain; the hub sources it).
EVENTS_STREAM = "FH_EVENTS"
#: A site's own directory records (signed), sourced by the hub's :data:`DIRECTORY_STREAM`.
DIRECTORY_OUT_STREAM = "FH_DIR"
#: The federation-wide directory: on the hub (sourcing every site's ``FH_DIR``) and, as a
#: copy sourcing the hub's, in every site's domain.
DIRECTORY_STREAM = "FH_DIRECTORY"
#: Object Store bucket holding a site's encrypted results.
RESULTS_BUCKET = "fh-results"
#: Durable pull consumer on :data:`CALLS_STREAM` shared by a site's node workers.
CALLS_CONSUMER = "fh-node"

_SITE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

IdentityKind = Literal["user", "site", "node"]


def _check(pattern: re.Pattern[str], value: object, what: str, rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ConfigError(f"invalid {what} {value!r}: expected {rule}")
    return value


def validate_site(site: str) -> str:
    """Return ``site`` if it is a valid site name, else raise :class:`ConfigError`."""
    return _check(_SITE_RE, site, "site name", "[a-z][a-z0-9_-]{0,31}")


def validate_module(module: str) -> str:
    """Return ``module`` if it is a Python identifier, else raise :class:`ConfigError`."""
    return _check(_IDENT_RE, module, "module name", "a Python identifier")


def validate_function(function: str) -> str:
    """Return ``function`` (``name`` or ``Class.method``) if valid, else raise."""
    if not isinstance(function, str):
        raise ConfigError(f"invalid function name {function!r}: expected a string")
    parts = function.split(".")
    if len(parts) > 2:
        raise ConfigError(
            f"invalid function name {function!r}: expected 'function' or 'Class.method'"
        )
    for part in parts:
        _check(_IDENT_RE, part, f"function name part in {function!r}:", "a Python identifier")
    return function


def validate_name(name: str, what: str = "name") -> str:
    """Return a user or node ``name`` if valid (``[a-z0-9][a-z0-9_-]{0,63}``), else raise."""
    return _check(_NAME_RE, name, what, "[a-z0-9][a-z0-9_-]{0,63}")


def validate_token(token: str) -> str:
    """Return an inbox ``token`` if it is one subject token of ``[A-Za-z0-9_-]``, else raise."""
    return _check(_TOKEN_RE, token, "inbox token", "[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class Identity:
    """A parsed identity id: ``klaus@geomar``, ``site:hereon`` or ``node:hereon/worker1``."""

    kind: IdentityKind
    name: str
    site: str

    @property
    def id(self) -> str:
        """The identity id in its canonical text form."""
        if self.kind == "user":
            return f"{self.name}@{self.site}"
        if self.kind == "site":
            return f"site:{self.site}"
        return f"node:{self.site}/{self.name}"

    def __str__(self) -> str:
        return self.id


def validate_identity(identity: str) -> Identity:
    """Parse an identity id into an :class:`Identity`; raise :class:`ConfigError` if invalid."""
    if not isinstance(identity, str):
        raise ConfigError(f"invalid identity {identity!r}: expected a string")
    if identity.startswith("site:"):
        site = validate_site(identity.removeprefix("site:"))
        return Identity(kind="site", name=site, site=site)
    if identity.startswith("node:"):
        site, sep, name = identity.removeprefix("node:").partition("/")
        if not sep:
            raise ConfigError(f"invalid node identity {identity!r}: expected 'node:site/name'")
        return Identity(
            kind="node", name=validate_name(name, "node name"), site=validate_site(site)
        )
    name, sep, site = identity.partition("@")
    if not sep:
        raise ConfigError(
            f"invalid identity {identity!r}: expected 'user@site', 'site:name' or 'node:site/name'"
        )
    return Identity(kind="user", name=validate_name(name, "user name"), site=validate_site(site))


@dataclass(frozen=True, slots=True)
class CallAddress:
    """Where a call goes: site, module and function (``name`` or ``Class.method``)."""

    site: str
    module: str
    function: str

    @property
    def address(self) -> str:
        """The user-facing form ``site.module.function``."""
        return f"{self.site}.{self.module}.{self.function}"

    @property
    def subject(self) -> str:
        """The call subject ``fh.call.<site>.<module>.<function>``."""
        return f"{SUBJECT_ROOT}.call.{self.address}"

    def __str__(self) -> str:
        return self.address


def _call_address(site: str, module: str, function: str) -> CallAddress:
    return CallAddress(
        site=validate_site(site),
        module=validate_module(module),
        function=validate_function(function),
    )


def call_subject(site: str, module: str, function: str) -> str:
    """Return ``fh.call.<site>.<module>.<function>`` (function may be ``Class.method``)."""
    return _call_address(site, module, function).subject


def parse_call_subject(subject: str) -> CallAddress:
    """Parse a call subject back into a :class:`CallAddress`; raise if it is not one."""
    prefix = f"{SUBJECT_ROOT}.call."
    if not isinstance(subject, str) or not subject.startswith(prefix):
        raise ConfigError(f"invalid call subject {subject!r}: expected '{prefix}<site>...'")
    return _parse_tokens(subject.removeprefix(prefix), subject)


def parse_address(address: str) -> CallAddress:
    """Parse ``site.module.function`` or ``site.module.Class.method`` (the user-facing form)."""
    if not isinstance(address, str):
        raise ConfigError(f"invalid call address {address!r}: expected a string")
    return _parse_address(address)


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str) -> CallAddress:
    """A valid address parsed once (a client calls the same few addresses again and
    again); an invalid one raises each time."""
    return _parse_tokens(address, address)


def _parse_tokens(rest: str, original: str) -> CallAddress:
    parts = rest.split(".")
    if len(parts) not in (3, 4):
        raise ConfigError(
            f"invalid call address {original!r}: expected 'site.module.function' "
            "or 'site.module.Class.method'"
        )
    site, module, *function = parts
    return _call_address(site, module, ".".join(function))


def calls_filter(site: str) -> str:
    """Return ``fh.call.<site>.>``: every call to ``site`` (the subjects of its FH_CALLS)."""
    return f"{SUBJECT_ROOT}.call.{validate_site(site)}.>"


def inbox_prefix(site: str, user: str) -> str:
    """Return ``fh.inbox.<site>.<user>``, the prefix of every inbox of ``user@site``."""
    return f"{SUBJECT_ROOT}.inbox.{validate_site(site)}.{validate_name(user, 'user name')}"


@functools.lru_cache(maxsize=4096)
def _user_inbox_prefix(identity: str) -> str | None:
    """``fh.inbox.<site>.<user>.`` for a user identity, None for anything else (cached:
    a node checks the reply subject of every call against its caller)."""
    try:
        ident = validate_identity(identity)
    except ConfigError:
        return None
    return inbox_prefix(ident.site, ident.name) + "." if ident.kind == "user" else None


def is_inbox_of(identity: str, subject: str) -> bool:
    """Whether ``subject`` is one inbox of the user ``identity``:
    ``fh.inbox.<site>.<user>.<token>`` (see :func:`inbox_subject`)."""
    if not isinstance(identity, str) or not isinstance(subject, str):
        return False
    prefix = _user_inbox_prefix(identity)
    return (
        prefix is not None
        and subject.startswith(prefix)
        and _TOKEN_RE.fullmatch(subject, len(prefix)) is not None
    )


def inbox_subject(site: str, user: str, token: str) -> str:
    """Return ``fh.inbox.<site>.<user>.<token>``, one reply inbox of ``user@site``."""
    return f"{inbox_prefix(site, user)}.{validate_token(token)}"


def bulk_subject(site: str, transfer: str) -> str:
    """Return ``fh.bulk.<site>.<transfer>``: what one bulk transfer sends to ``site``.

    The chunks of an upload to the site, or the acks and stops of a download from it;
    ``transfer`` is the transfer id in hex (see :mod:`hub.transfer`). The other end of a
    transfer is an inbox of the caller (:func:`inbox_subject`).
    """
    return f"{SUBJECT_ROOT}.bulk.{validate_site(site)}.{validate_token(transfer)}"


def bulk_filter(site: str) -> str:
    """Return ``fh.bulk.<site>.>``: every bulk transfer message to ``site``."""
    return f"{SUBJECT_ROOT}.bulk.{validate_site(site)}.>"


def events_subject(site: str, node: str) -> str:
    """Return ``fh.events.<site>.<node>``, where ``node`` publishes its event log."""
    return f"{SUBJECT_ROOT}.events.{validate_site(site)}.{validate_name(node, 'node name')}"


def events_filter(site: str) -> str:
    """Return ``fh.events.<site>.>``: every node log of ``site`` (FH_EVENTS's subjects)."""
    return f"{SUBJECT_ROOT}.events.{validate_site(site)}.>"


def directory_filter(site: str) -> str:
    """Return ``fh.dir.<site>.>``: the directory records ``site`` publishes (FH_DIR)."""
    return f"{SUBJECT_ROOT}.dir.{validate_site(site)}.>"


def directory_subject(site: str, kind: str, token: str) -> str:
    """Return ``fh.dir.<site>.<kind>.<token>``: one signed record of ``site``."""
    return f"{SUBJECT_ROOT}.dir.{validate_site(site)}.{kind}.{token}"


def info_subject(site: str, module: str) -> str:
    """Return ``fh.info.<site>.<module>``, the module's schema endpoint."""
    return f"{SUBJECT_ROOT}.info.{validate_site(site)}.{validate_module(module)}"


def admin_subject(site: str) -> str:
    """Return ``fh.admin.<site>``: signed directory records (keys, revocations) for its nodes."""
    return f"{SUBJECT_ROOT}.admin.{validate_site(site)}"


def status_subject(site: str) -> str:
    """Return ``fh.status.<site>``."""
    return f"{SUBJECT_ROOT}.status.{validate_site(site)}"


def service_name(site: str, module: str) -> str:
    """Return ``fedhub-<site>-<module>``, the NATS micro service name of a module.

    Micro service names allow ``[A-Za-z0-9_-]``; site and module names stay inside that set.
    """
    return f"fedhub-{validate_site(site)}-{validate_module(module)}"


def hub_events_stream(site: str) -> str:
    """Return ``FH_EVENTS_<SITE>``, the hub's sourced copy of a site's FH_EVENTS.

    The site is upper-cased and ``-`` becomes ``_`` (so ``a-b`` and ``a_b`` share a name;
    a federation must not admit both).
    """
    return f"{EVENTS_STREAM}_{validate_site(site).upper().replace('-', '_')}"


# The log of the n-th process of a node (n >= 2) is ``<node identity>#<n>``.
_INSTANCE = re.compile(r"#[1-9][0-9]{0,5}")


def instance_log_id(identity: str, instance: int) -> str:
    """The log id of a node's ``instance``-th process: the identity, then ``#<n>`` from 2 on."""
    if instance < 1:
        raise ValueError(f"instance numbers start at 1, not {instance}")
    return identity if instance == 1 else f"{identity}#{instance}"


def is_log_of(log_id: str, identity: str) -> bool:
    """Whether ``log_id`` is the log of node ``identity`` (itself, or one of its processes)."""
    if log_id == identity:
        return True
    return log_id.startswith(identity) and _INSTANCE.fullmatch(log_id[len(identity) :]) is not None
