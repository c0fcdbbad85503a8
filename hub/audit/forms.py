"""The shape of an event body, as the auditor reads it: header, data schemas, canonical form.

An event body is canonical JSON with sorted keys, so ``data`` comes first and the header
fields follow it in a fixed order. Canonical strings escape every ``"``, so the bytes
``,"kid":"`` can occur inside ``data`` only as a key of a nested object -- always before
the top-level one: the LAST occurrence starts the header. A body whose header does not
match this exact form goes to the general path, which parses it in full.

For the fast path, each request event type of each log version has a compiled pattern of
its ``data`` in canonical form (:data:`FAST_KINDS`), generated from the pydantic model in
:mod:`hub.events` and the legal steps in :mod:`hub.lifecycle`: the pattern accepts a
subset of the canonical, schema-valid forms (ASCII strings, small integers), so whatever
it accepts the general path accepts too; anything else takes the general path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, get_args

from pydantic import BaseModel, ValidationError

from hub.canonical import canonical_bytes
from hub.errors import CanonicalError
from hub.events import EVENT_TYPES, V1_ONLY_TYPES, V2_ONLY_TYPES, EventData
from hub.lifecycle import TRANSITIONS, RequestState
from hub.records import one_line

__all__ = [
    "FAST_INDEX",
    "FAST_KINDS",
    "FAST_LIST",
    "FAST_NAMES",
    "FAST_STEPS",
    "FAST_TAIL",
    "SLOW",
    "TAIL",
    "TIME",
    "VERSIONS",
    "FastKind",
    "check_canonical",
    "check_data",
    "event_types",
    "parse_body",
]

VERSIONS: Final = (1, 2)
"""The body versions a verifier reads (a log may go from 1 to 2, never back)."""

# Times: fixed width UTC, so they sort as text; month, day, hour, minute, second in range.
_TIME = (
    rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
)
TIME: Final = re.compile(_TIME.decode())
"""The one time format of event bodies (a ``str`` pattern, for parsed bodies)."""

TAIL: Final = re.compile(
    rb',"kid":"([0-9a-f]{20})","log":"([^"\\\x00-\x1f\x80-\xff]{3,140})","prev":"([0-9a-f]{64})",'
    rb'"seq":([1-9][0-9]{0,17}),"time":"('
    + _TIME
    + rb')","type":"([a-z][a-z._]{0,63})","v":([12])}'
)
"""The header of a body in the form a node writes (ASCII log id, 20-hex kid)."""

FAST_TAIL: Final = re.compile(b"(" + _TIME + rb')","type":"([a-z][a-z._]{0,63}","v":[12])}')
"""The header after ``"time":"``: time, and type with version as :data:`FAST_KINDS` keys."""

SLOW: Final = "\x00slow"  # not a state: the fast path leaves the event to the general path


def event_types(version: int) -> frozenset[str]:
    """The event types a body of ``version`` may carry (anything else is unknown)."""
    if version == 1:
        return EVENT_TYPES - V2_ONLY_TYPES
    return EVENT_TYPES - V1_ONLY_TYPES


_TYPES = {v: event_types(v) for v in VERSIONS}
# every ``data`` model by its type (the members of the EventData union)
_MODELS: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(EventData)[0])
}


def parse_body(body: bytes) -> dict[str, Any]:
    """The whole body as a value (CanonicalError if it is not a JSON object)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CanonicalError(f"not JSON: {exc}") from exc
    if type(value) is not dict:
        raise CanonicalError("not a JSON object")
    return value


def check_canonical(body: bytes, value: Any) -> None:
    """CanonicalError unless ``body`` is exactly the canonical encoding of ``value``."""
    if canonical_bytes(value) != body:
        raise CanonicalError("body is not in canonical form (docs/log-format.md)")


def check_data(kind: str, version: int, data_bytes: bytes) -> tuple[dict[str, Any] | None, str]:
    """``data`` parsed and checked against its type's model: (data, "") or (None, why)."""
    if kind not in _TYPES[version]:
        return None, f"unknown event type {kind!r} (log version {version})"
    try:
        _MODELS[kind].model_validate_json(data_bytes, strict=True)
    except ValidationError as exc:
        return None, f"{kind} data does not match its schema: {one_line(exc)}"
    return json.loads(data_bytes), ""


# --- the fast path's table ---------------------------------------------------------------

_STR = rb'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\bfnrt])*'  # ASCII, short escapes only
_INT = rb"(?:0|-?[1-9][0-9]{0,17})"  # always within 64 bits
_RID = rb'"(?P<rid>[A-Za-z0-9_-]{8,64})"'


def _value(schema: Mapping[str, Any]) -> bytes | None:
    """A pattern for canonical JSON values of a JSON Schema (a subset), or None."""
    if "anyOf" in schema:
        options = [_value(s) for s in schema["anyOf"]]
        if any(o is None for o in options):
            return None
        return b"(?:" + b"|".join(o for o in options if o is not None) + b")"
    kind = schema.get("type")
    if kind == "null":
        return b"null"
    if kind == "string":
        if "pattern" in schema:
            pat = schema["pattern"].removeprefix("^").removesuffix("$").encode()
            return b'"' + pat + b'"' if b'"' not in pat and b"\\" not in pat else None
        if "minLength" in schema or "maxLength" in schema:
            lo, hi = schema.get("minLength", 0), schema.get("maxLength", "")
            return b'"[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e]{%d,%s}"' % (lo, str(hi).encode())
        return b'"' + _STR + b'"'
    if kind == "integer":
        bounds = (schema.get("minimum"), schema.get("maximum"))
        if bounds == (None, None):
            return _INT
        if bounds == (0, 1_000_000):
            return b"(?:0|[1-9][0-9]{0,5}|1000000)"
        low = bounds[0]
        if bounds[1] is None and isinstance(low, int) and 0 <= low <= 9:
            # at least ``low``: one digit from low, or any positive integer of 2+ digits
            return b"(?:[%d-9]|[1-9][0-9]{1,17})" % low
        return None
    if kind == "array":
        item = _value(schema.get("items", {}))
        return None if item is None else rb"\[(?:" + item + rb"(?:," + item + rb")*)?\]"
    return None


def _data_pattern(model: type[BaseModel]) -> re.Pattern[bytes] | None:
    """The canonical ``data`` of ``model`` with a request id (group ``rid``), or None."""
    schema = model.model_json_schema()
    props: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", ()))
    names = sorted(props)
    if names[-1] != "type" or "request_id" not in props:
        return None
    out = b"\\{"
    for name in names[:-1]:
        value = _RID if name == "request_id" else _value(props[name])
        if value is None:
            return None
        item = b'"' + name.encode() + b'":' + value + b","
        out += item if name in required or name == "request_id" else b"(?:" + item + b")?"
    kind = props["type"]["const"].encode()
    return re.compile(out + b'"type":"' + re.escape(kind) + b'"\\}')


@dataclass(frozen=True, slots=True)
class FastKind:
    """A request event type of one log version, as the fast path checks it."""

    kind: str
    version: int
    steps: Mapping[RequestState | None, RequestState | None]
    data: Any  # the bound ``fullmatch`` of the data pattern


def _fast_kinds() -> dict[bytes, FastKind]:
    """Keyed by the bytes ``TYPE","v":N`` of the header (as :data:`TAIL`'s tail reads them)."""
    table = {}
    for (kind, version), steps in TRANSITIONS.items():
        pattern = _data_pattern(_MODELS[kind]) if kind in _TYPES[version] else None
        if pattern is not None:
            key = kind.encode() + b'","v":' + str(version).encode()
            table[key] = FastKind(kind, version, steps, pattern.fullmatch)
    return table


FAST_KINDS: Final = _fast_kinds()
# The same by index (a helper's runs name kinds by index).
FAST_LIST: Final = list(FAST_KINDS.values())
FAST_NAMES: Final = [spec.kind for spec in FAST_LIST]
FAST_STEPS: Final = [spec.steps for spec in FAST_LIST]
FAST_INDEX: Final = {key: i for i, key in enumerate(FAST_KINDS)}
