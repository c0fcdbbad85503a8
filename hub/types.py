"""Pydantic types for the binary values science functions exchange.

Function arguments and results travel in fedhub's binary codec, so validation here works on
already-decoded Python objects: an :data:`NDArray` field accepts a ``numpy.ndarray``
instance (nothing is converted), a :data:`DataArray` an ``xarray.DataArray``, a
:data:`Dataset` an ``xarray.Dataset``, and :data:`Bytes` raw ``bytes`` (no base64, no str).
Their JSON Schema describes what travels::

    NDArray    {"type": "string", "contentMediaType": "application/x-fedhub-ndarray",
                "x-fedhub-type": "numpy.ndarray"}
    DataArray  {"type": "string", "contentMediaType": "application/x-fedhub-dataarray",
                "x-fedhub-type": "xarray.DataArray"}
    Dataset    {"type": "string", "contentMediaType": "application/x-fedhub-dataset",
                "x-fedhub-type": "xarray.Dataset"}
    Bytes      {"type": "string", "format": "binary",
                "contentMediaType": "application/octet-stream", "x-fedhub-type": "bytes"}

Module authors annotate with the plain classes (``np.ndarray``, ``xr.DataArray``, ``bytes``);
:func:`fedhub_type` rewrites such annotations, also inside ``list[...]``, ``X | None`` etc.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

import numpy as np
import xarray as xr
from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, Strict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = [
    "BINARY_TYPES",
    "Bytes",
    "DataArray",
    "Dataset",
    "NDArray",
    "fedhub_type",
]


class _BinaryValue:
    """Annotation marker: validate by ``isinstance``, describe as a binary string."""

    def __init__(self, cls: type, media_type: str, type_name: str) -> None:
        self.cls = cls
        self.json_schema: dict[str, Any] = {
            "type": "string",
            "contentMediaType": media_type,
            "x-fedhub-type": type_name,
        }

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(self.cls)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(self.json_schema)

    def __repr__(self) -> str:
        return f"_BinaryValue({self.json_schema['x-fedhub-type']})"


class _BytesSchema:
    """JSON Schema of raw bytes: a binary string (the codec never base64-encodes)."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(
            {
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
                "x-fedhub-type": "bytes",
            }
        )
        return json_schema


def _to_bytes(value: object) -> object:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


NDArray = Annotated[
    np.ndarray[Any, Any],
    _BinaryValue(np.ndarray, "application/x-fedhub-ndarray", "numpy.ndarray"),
]
"""A numpy array, passed through unchanged."""

DataArray = Annotated[
    xr.DataArray,
    _BinaryValue(xr.DataArray, "application/x-fedhub-dataarray", "xarray.DataArray"),
]
"""An xarray DataArray, passed through unchanged."""

Dataset = Annotated[
    xr.Dataset,
    _BinaryValue(xr.Dataset, "application/x-fedhub-dataset", "xarray.Dataset"),
]
"""An xarray Dataset, passed through unchanged."""

Bytes = Annotated[bytes, BeforeValidator(_to_bytes), Strict(), _BytesSchema()]
"""Raw bytes (``bytearray``/``memoryview`` become ``bytes``; ``str`` is refused)."""

#: The plain classes a module author may use as annotations, and what they stand for.
BINARY_TYPES: dict[type, Any] = {
    np.ndarray: NDArray,
    xr.DataArray: DataArray,
    xr.Dataset: Dataset,
    bytes: Bytes,
}


def fedhub_type(annotation: Any) -> Any:
    """Replace plain ``np.ndarray``/``xr.DataArray``/``xr.Dataset``/``bytes`` in a type.

    Works through unions, ``Annotated`` and generic containers; anything else is returned
    unchanged (``npt.NDArray[np.float64]`` counts as ``np.ndarray``).
    """
    if isinstance(annotation, type) and annotation in BINARY_TYPES:
        return BINARY_TYPES[annotation]
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    if origin is np.ndarray:
        return NDArray
    if origin is typing.Literal:
        return annotation
    args = typing.get_args(annotation)
    if origin is Annotated:
        inner = fedhub_type(args[0])
        if inner is args[0]:
            return annotation
        return Annotated[(inner, *annotation.__metadata__)]
    new_args = tuple(fedhub_type(arg) if not isinstance(arg, list) else arg for arg in args)
    if all(new is old for new, old in zip(new_args, args, strict=True)):
        return annotation
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[new_args]  # noqa: UP007 - built from a runtime tuple
    if isinstance(annotation, types.GenericAlias):
        return types.GenericAlias(origin, new_args)
    copy_with = getattr(annotation, "copy_with", None)
    if copy_with is not None:
        return copy_with(new_args)
    return annotation
