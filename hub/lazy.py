"""Lazy kept results: an xarray value backed by dask whose blocks are fetched as slices
only when computed (docs/results.md, "Lazy results").

``ds = await fed.open_result(rid, site="hereon", chunks={"time": 10})`` sends one
``describe`` (the result's kind, dimensions, coordinates, attributes and each variable's
shape and dtype; the coordinates' values come along) and builds the value from it. Each
dask block of a data variable is one ``slice`` request (:mod:`hub.slices`) with its own
grant, sent when dask computes that block: ``ds.t2m.isel(time=0).values`` fetches only
the blocks it covers.

Blocks are fetched on the client's event loop. With the blocking client
(:func:`hub.sync_client.connect`) that loop runs in its own thread and ``.compute()``
works anywhere; with the async client, compute off the loop
(``await asyncio.to_thread(ds.compute)``). Needs dask: ``pip install 'fedhub[lazy]'``.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hub.errors import CallTimeoutError, ConfigError

if TYPE_CHECKING:
    from hub.slices import Grantor

__all__ = ["LOOP_SILENCE", "RemoteBlocks", "open_lazy", "require_dask"]

#: Seconds a block waits for the client's event loop to turn before it decides that the
#: loop is blocked by the compute that asked for the block (computed on the loop itself).
LOOP_SILENCE = 20.0


def require_dask() -> Any:
    """``dask.array``, or a ConfigError that names the extra to install."""
    try:
        return importlib.import_module("dask.array")
    except ImportError as exc:
        raise ConfigError(
            "a lazy result needs dask, which is not installed",
            hint="pip install 'fedhub[lazy]'",
        ) from exc


class RemoteBlocks:
    """One data variable of a kept result as an array-like for ``dask.array.from_array``:
    indexing it with a tuple of slices fetches that block as one slice request."""

    def __init__(
        self,
        owner: Grantor,
        loop: asyncio.AbstractEventLoop,
        name: Any,
        dims: tuple[str, ...],
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        *,
        of_dataset: bool,
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.name = name
        self.dims = dims
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)
        self.of_dataset = of_dataset

    def __getitem__(self, key: tuple[slice, ...] | slice) -> np.ndarray[Any, Any]:
        key = key if isinstance(key, tuple) else (key,)
        isel: dict[str, int | slice] = {}
        for dim, part, size in zip(self.dims, key, self.shape, strict=False):
            if part != slice(None) and part != slice(0, size):
                isel[dim] = part
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop or threading.get_ident() == getattr(self.loop, "_thread_id", 0):
            raise _on_the_loop()
        turned = threading.Event()  # a loop blocked by this very compute never turns
        self.loop.call_soon_threadsafe(turned.set)
        if not turned.wait(LOOP_SILENCE):
            raise _on_the_loop()
        variables = [self.name] if self.of_dataset else None
        future = asyncio.run_coroutine_threadsafe(
            self.owner.ask("slice", isel, variables), self.loop
        )
        timeout = self.owner.client.default_timeout + 60.0
        try:
            part = future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise CallTimeoutError(
                f"no block of {self.name} from {self.owner.site} in {timeout:g} s",
                hint="is the client's event loop blocked? compute off it (asyncio.to_thread)",
            ) from exc
        if self.of_dataset:
            part = part[self.name]
        return np.asarray(part.values, dtype=self.dtype)


def _on_the_loop() -> ConfigError:
    return ConfigError(
        "a lazy result is computed on its client's event loop, which would wait on itself",
        hint="await asyncio.to_thread(value.compute), or use hub.sync_client.connect()",
    )


def _block_sizes(
    dims: tuple[str, ...], shape: tuple[int, ...], chunks: Mapping[str, int]
) -> tuple[int, ...]:
    return tuple(
        max(1, min(int(chunks.get(d, n)), n)) if n else 1 for d, n in zip(dims, shape, strict=True)
    )


def open_lazy(
    owner: Grantor,
    layout: Mapping[str, Any],
    loop: asyncio.AbstractEventLoop,
    chunks: Mapping[str, int] | None = None,
) -> Any:
    """The lazy xarray value of a kept result described by ``layout`` (the answer of a
    ``describe``), with blocks of ``chunks`` positions per dimension (a whole dimension
    where none is given)."""
    import xarray as xr

    da = require_dask()
    chunks = dict(chunks or {})
    coords = layout["coords"]
    known = set(coords.dims) | {d for _, v in layout["variables"] for d in v["dims"]}
    unknown = sorted(set(chunks) - known)
    if unknown:
        raise ConfigError(f"chunks name no dimension of the result: {', '.join(unknown)}")
    if any(not isinstance(n, int) or n < 1 for n in chunks.values()):
        raise ConfigError(f"chunks are positive block sizes per dimension, not {chunks!r}")
    of_dataset = layout["kind"] == "Dataset"
    token = secrets.token_hex(4)
    variables: dict[Any, xr.Variable] = {}
    for name, spec in layout["variables"]:
        dims = tuple(spec["dims"])
        shape = tuple(int(n) for n in spec["shape"])
        dtype = np.dtype(spec["dtype"])
        blocks = RemoteBlocks(owner, loop, name, dims, shape, dtype, of_dataset=of_dataset)
        array = da.from_array(
            blocks,
            chunks=_block_sizes(dims, shape, chunks),
            name=f"fedhub-{owner.site}-{owner.request_id}-{name}-{token}",
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * len(shape), dtype=dtype),
        )
        variables[name] = xr.Variable(dims, array, attrs=spec["attrs"])
    if not of_dataset:
        ((name, variable),) = variables.items()
        return xr.DataArray(variable, coords=coords.coords, name=name)
    return xr.Dataset(variables, coords=coords.coords, attrs=layout["attrs"])
