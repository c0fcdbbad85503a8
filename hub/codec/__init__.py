"""Binary codec for call arguments and results (the plaintext inside an encrypted envelope).

:func:`encode` turns a tree of Python values into one ``bytes`` blob and :func:`decode` turns
it back, exactly. Binary data (``bytes``, array buffers) travels raw, never base64-inflated,
and big arrays cost at most one copy each way. The format is also described in
``docs/codec.md``.

Layout of a blob (all integers unsigned 64-bit little-endian)::

    b"FHC1"                      magic, format version 1
    header_length                length of the header in bytes
    header                       JSON, ASCII only (so also UTF-8), describing the tree; padded
                                 with trailing spaces so that the header ends on a multiple
                                 of 8 counted from the start of the blob
    then, for every buffer:
      buffer_length              length of the buffer in bytes (padding not included)
      buffer                     raw bytes; starts on a multiple of 8
      padding                    zero bytes up to the next multiple of 8

Nothing may follow the last buffer's padding. Buffers are numbered from 0 in order, and the
header refers to buffer ``i`` as ``{"$b": i}``; every buffer is referenced exactly once.

The header is JSON where JSON suffices: ``null``, ``true``/``false``, integers in the signed
64-bit range, finite floats (written by ``repr``, so exact, ``-0.0`` included), strings (with
``\\uXXXX`` escapes, so lone surrogates survive), lists (arrays) and dicts with ``str`` keys
(objects). Everything else is a tagged object ``{"$t": TAG, ...}``:

========================  ==================================================================
Python value              header
========================  ==================================================================
bytes, bytearray          ``{"$b": i}`` (decodes to ``bytes``)
tuple                     ``{"$t": "tuple", "items": [...]}`` (tuples stay tuples)
dict with a ``"$t"`` or   ``{"$t": "dict", "items": [[key, value], ...]}``: the escape that
``"$b"`` key, or a non-   keeps such dicts apart from tagged objects; keys may be any value
``str`` key               that decodes to something hashable
int outside int64         ``{"$t": "int", "hex": "-1f..."}``
nan, inf, -inf            ``{"$t": "float", "bits": "000000000000f87f"}``: the 8 bytes of
                          the IEEE double, little-endian, hex (NaN payloads survive)
complex                   ``{"$t": "complex", "v": [real, imag]}``
datetime.datetime         ``{"$t": "datetime", "v": "2024-05-01T12:00:00", "offset": us,
                          "fold": 1}``: wall time in ISO 8601 without offset; ``offset``
                          (UTC offset in microseconds) only when aware, ``fold`` only when
                          1. An aware value comes back with a fixed-offset
                          ``datetime.timezone``: the instant and offset are kept, zone
                          names such as Europe/Berlin are not
datetime.date             ``{"$t": "date", "v": "2024-05-01"}``
datetime.time             ``{"$t": "time", "v": "12:00:00", "offset": us, "fold": 1}``
datetime.timedelta        ``{"$t": "timedelta", "v": [days, seconds, microseconds]}``
numpy.ndarray             ``{"$t": "ndarray", "dtype": "<f8", "shape": [2, 3], "data":
                          {"$b": i}}``
numpy scalar              ``{"$t": "npscalar", "dtype": "<f4", "data": {"$b": i}}`` (comes
                          back as the same numpy scalar type)
xarray.Variable           ``{"$t": "Variable", "dims": [...], "data": ndarray, "attrs":
                          {...}}``
xarray.DataArray          ``{"$t": "DataArray", "name": ..., "variable": Variable, "coords":
                          [[name, Variable], ...]}``
xarray.Dataset            ``{"$t": "Dataset", "data_vars": [[name, Variable], ...],
                          "coords": [[name, Variable], ...], "attrs": {...}}``
========================  ==================================================================

Conversions that do not come back as the same type (by design):

* ``enum.Enum`` members are sent as their ``value``; the receiver's pydantic model turns the
  value back into the member.
* pydantic models are sent as ``model.model_dump(mode="python")``, a dict; the receiving
  function's pydantic model validates it again.
* ``bytearray`` and ``memoryview`` come back as ``bytes``; subclasses of ``str``, ``int``,
  ``float``, ``list``, ``tuple`` and ``dict`` (named tuples included) come back as the base
  type; subclasses of ``datetime`` lose their extra precision (e.g. pandas nanoseconds).

Arrays: the dtype must be bool, integer, float (16/32/64-bit), complex (64/128-bit),
datetime64, timedelta64, or fixed-width ``U``/``S``; ``object``, structured/void and
``longdouble`` dtypes are refused. Data travels in C order with little-endian byte order
(a big-endian array comes back little-endian, same values); non-contiguous and Fortran-order
arrays are copied into C order first. Masked arrays are refused (the mask would be lost).

Decoded arrays are always writeable. When :func:`decode` gets a writeable buffer
(``bytearray`` or a writeable ``memoryview``), aligned arrays are views into it — no copy —
and share its memory; when it gets immutable ``bytes``, each array is copied once.

xarray: names, dims, data, coordinates (dimension, non-dimension and multi-dimensional) and
``attrs`` round-trip; ``encoding`` (on-disk chunking, compression, fill values) is dropped.
Object-dtype variables holding only ``str`` (or only ``bytes``), as xarray makes of NetCDF
string variables, are sent as fixed-width ``U`` (``S``); any other object data, a pandas
MultiIndex and cftime dates included, is refused.

:func:`decode` refuses anything malformed, truncated or hostile with
:class:`hub.errors.CanonicalError`: bad magic, bad lengths, trailing bytes, non-zero padding,
invalid or non-ASCII JSON, duplicate keys, NaN literals, unknown tags or fields, dangling or
reused buffer references, a shape that does not match its buffer, disallowed dtypes, invalid
bool or unicode data, and nesting deeper than :data:`MAX_DEPTH` values.

The package has one module per job: :mod:`~hub.codec.frame` (the blob layout),
:mod:`~hub.codec.arrays` (numpy arrays and their buffers), :mod:`~hub.codec.encoder` and
:mod:`~hub.codec.decoder` (the value tree, xarray included, each way) and
:mod:`~hub.codec.describe` (one-line descriptions for logs).
"""

from __future__ import annotations

from hub.codec.decoder import decode, decode_many
from hub.codec.describe import describe
from hub.codec.encoder import encode, encode_many
from hub.codec.frame import MAGIC, MAX_DEPTH

__all__ = [
    "MAGIC",
    "MAX_DEPTH",
    "decode",
    "decode_many",
    "describe",
    "encode",
    "encode_many",
]
