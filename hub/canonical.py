"""Canonical bytes for hashing and signing.

fedhub signs and hashes exact byte strings, never objects. The canonical form of a value is
JSON with these rules (see docs/log-format.md, "Canonical encoding"):

* UTF-8, no byte-order mark, no insignificant whitespace (separators ``,`` and ``:``);
* object keys are strings, sorted by Unicode code point, unique;
* strings are escaped minimally: ``"`` and ``\\`` and the control characters U+0000..U+001F
  (``\\b \\f \\n \\r \\t`` by their short form, the rest as ``\\u00XX`` lower-case hex);
  everything else, non-ASCII included, is written as itself; lone surrogates are refused;
* integers only, in the signed 64-bit range; **floats are refused** (times are strings,
  fractions are integers in parts per million), so no two encoders can disagree on a number;
* ``true``, ``false``, ``null``; arrays in order.

Binary values (keys, hashes, signatures, ciphertext) are carried as strings: hashes in
lower-case hex, everything else in unpadded URL-safe base64 (:func:`b64e` / :func:`b64d`).

Encoding: the standard library's ``json`` with the settings above; when ``orjson`` is
installed it is used instead, for speed (about ten times faster on event data): for every
value the checks here let through, its output with sorted keys is the same bytes (the
test suite compares the two encoders on generated values).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from hub.errors import CanonicalError

_orjson_dumps: Callable[..., bytes] | None
try:
    import orjson  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # optional: the standard library encodes the same bytes
    _orjson_dumps = None
    _ORJSON_OPTIONS = 0
else:
    _orjson_dumps = orjson.dumps
    _ORJSON_OPTIONS = orjson.OPT_SORT_KEYS

__all__ = [
    "b64d",
    "b64e",
    "canonical_bytes",
    "canonical_flat",
    "check_canonical",
    "parse_canonical",
]

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1

_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def _check(value: Any) -> None:
    """Refuse what has no canonical form (iterative: this is on the event log's hot path).

    Scalars inside containers are checked in place; only containers go on the stack.
    """
    _check_scalar(value)
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is dict:
            subs = item.values()
            for key in item:
                if type(key) is not str:
                    raise CanonicalError(f"object key {key!r} is not a string")
        elif kind is list or kind is tuple:
            subs = item
        else:
            continue
        if depth >= 64:
            raise CanonicalError("value nests deeper than 64 levels")
        for sub in subs:
            t = type(sub)
            if t is str or t is bool or sub is None:
                continue
            if t is int:
                if not _INT_MIN <= sub <= _INT_MAX:
                    raise CanonicalError(f"integer {sub} is outside the signed 64-bit range")
                continue
            if t is dict or t is list or t is tuple:
                push((sub, depth + 1))
                continue
            _check_scalar(sub)


def _check_scalar(item: Any) -> None:
    """Refuse a non-container value that has no canonical form."""
    kind = type(item)
    if kind is str or kind is bool or item is None or kind in (dict, list, tuple):
        return
    if kind is int:
        if not _INT_MIN <= item <= _INT_MAX:
            raise CanonicalError(f"integer {item} is outside the signed 64-bit range")
        return
    if isinstance(item, float):
        raise CanonicalError("floats have no canonical form; use an integer or a string")
    raise CanonicalError(f"{kind.__name__} has no canonical form")


def canonical_bytes(value: Any) -> bytes:
    """Encode ``value`` (JSON-like, no floats) to its canonical bytes."""
    _check(value)
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value, option=_ORJSON_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError; after _check, only this:
            raise CanonicalError("string holds a lone surrogate") from exc
    return _stdlib_encode(value)


def canonical_flat(value: dict[str, Any]) -> bytes:
    """:func:`canonical_bytes` of an object whose values the caller has checked to be
    ``str``, ``int``, ``bool`` or ``None`` (exact types): only the integers' range is
    checked here (the event log's hot path: most event data is such an object)."""
    for item in value.values():
        if type(item) is int and not _INT_MIN <= item <= _INT_MAX:
            raise CanonicalError(f"integer {item} is outside the signed 64-bit range")
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value, option=_ORJSON_OPTIONS)
        except TypeError as exc:
            raise CanonicalError("string holds a lone surrogate") from exc
    return _stdlib_encode(value)


def _stdlib_canonical_bytes(value: Any) -> bytes:
    """:func:`canonical_bytes` with the standard library's encoder (for comparisons)."""
    _check(value)
    return _stdlib_encode(value)


def _stdlib_encode(value: Any) -> bytes:
    """The standard library's canonical encoding of a value that passed :func:`_check`."""
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("string holds a lone surrogate") from exc


def parse_canonical(data: bytes) -> Any:
    """Parse canonical bytes back to a value; malformed JSON raises CanonicalError.

    This does not check that ``data`` is canonical (see :func:`check_canonical`): signatures
    and hashes are over the exact bytes, so a non-canonical encoding cannot be passed off as
    another value's.
    """
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CanonicalError(f"not valid JSON: {exc}") from exc


def check_canonical(data: bytes) -> Any:
    """Parse ``data`` and require that it is exactly the canonical encoding of its value."""
    value = parse_canonical(data)
    if canonical_bytes(value) != data:
        raise CanonicalError("bytes are valid JSON but not in canonical form")
    return value


def b64e(data: bytes) -> str:
    """Unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Decode unpadded (or padded) URL-safe base64; anything else raises CanonicalError."""
    if not isinstance(text, str):
        raise CanonicalError("expected a base64 string")
    try:
        raw = text.encode("ascii")
        if b"+" in raw or b"/" in raw:
            raise ValueError("standard base64 alphabet")
        raw = raw.translate(_URLSAFE_TO_STD)
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise CanonicalError(f"not URL-safe base64: {text[:20]!r}") from exc
