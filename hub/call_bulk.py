"""The caller's side of calls with bulk payloads (see :mod:`hub.bulk`).

:func:`plan_arguments` decides what travels in the request and what as a bulk transfer;
:func:`seal_arguments` seals the bulk part into a spool file; :func:`upload` streams it
to the node once the call is published; :func:`download` receives a result announced as
a bulk transfer, to ``result_path`` or into memory. A transfer that fails settles the
call at once with its typed error (TransferError: cancelled, timeout, refused, integrity).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.client import Client as NatsClient

from hub import codec
from hub.bulk import (
    NetCDFFile,
    SavedTo,
    bulk_key,
    describe,
    is_xarray,
    map_file,
    open_netcdf,
    seal_netcdf,
    write_netcdf,
)
from hub.envelopes import Bulk, ReplyHeader
from hub.errors import ConfigError, FederationError, TransferError
from hub.transfer import (
    ProgressCallback,
    Receiver,
    SealedInfo,
    Sender,
    TransferOptions,
    TransferProgress,
    download_route,
    new_transfer_id,
    seal_file,
    seal_stream,
    upload_route,
)

if TYPE_CHECKING:
    from hub.call_handle import CallHandle

__all__ = ["ArgumentPlan", "download", "plan_arguments", "seal_arguments", "upload"]

log = structlog.get_logger(__name__)

#: Seconds a caller's receiver waits for the node to send more (a node that died).
RECEIVE_IDLE = 15.0
#: The NetCDF suffixes a result may be written to directly.
_NETCDF = frozenset({".nc", ".nc4", ".netcdf"})


def spool_dir() -> Path:
    """This process's spool folder: ``<temp>/fedhub-spool-<uid>/<pid>``.

    Made on first use, after removing the folders of processes that no longer run (a
    caller killed mid-transfer), each logged as ``client.spool_swept``; removed at exit.
    """
    root = Path(tempfile.gettempdir()) / f"fedhub-spool-{os.getuid()}"
    mine = root / str(os.getpid())
    if not mine.is_dir():
        root.mkdir(mode=0o700, exist_ok=True)
        for folder in root.iterdir():
            if folder.name.isdigit() and not _alive(int(folder.name)):
                size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
                shutil.rmtree(folder, ignore_errors=True)
                log.warning("client.spool_swept", path=str(folder), bytes=size)
        mine.mkdir(mode=0o700, exist_ok=True)
        atexit.register(shutil.rmtree, mine, ignore_errors=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class ArgumentPlan:
    """What goes in the request (``inline``) and what follows as a bulk transfer."""

    inline: dict[str, Any]
    file: tuple[str, Path] | None = None  # a NetCDF argument sent as its file
    encoded: bytes | None = None  # all arguments, codec-encoded, too large for a message
    xarray: tuple[str, Any] | None = None  # a large xarray value, sent as a NetCDF file
    inline_encoded: bytes | None = None  # ``inline`` codec-encoded, when it was measured
    file_kind: str | None = None  # what the node opens ``file`` as (NetCDFFile.kind)

    @property
    def in_bulk(self) -> bool:
        """Whether part of the arguments follows as a bulk transfer."""
        return self.file is not None or self.encoded is not None or self.xarray is not None

    def inline_bytes(self) -> bytes:
        """``inline``, codec-encoded (encoded once: measuring it already did)."""
        if self.inline_encoded is not None:
            return self.inline_encoded
        return codec.encode_many(self.inline)


def plan_arguments(kwargs: dict[str, Any], threshold: int) -> ArgumentPlan:
    """Split the arguments: a large NetCDF file, a large xarray value (sent as a NetCDF
    file: never encoded whole in memory), or large encoded arguments go in bulk.

    A :class:`NetCDFFile` no larger than ``threshold`` is read into memory and sent like
    any value; at most one larger file per call.
    """
    large = [k for k, v in kwargs.items() if isinstance(v, NetCDFFile) and v.size > threshold]
    if len(large) > 1:
        raise ConfigError(
            f"arguments {', '.join(large)} are all large files; a call sends at most one",
            hint="pass one large file per call",
        )
    inline = {
        k: open_netcdf(v.path, kind=v.kind, load=True)
        if isinstance(v, NetCDFFile) and k not in large
        else v
        for k, v in kwargs.items()
        if k not in large
    }
    if large:
        name = large[0]
        return ArgumentPlan(inline, file=(name, kwargs[name].path), file_kind=kwargs[name].kind)
    arrays = [k for k, v in inline.items() if is_xarray(v) and int(v.nbytes) > threshold]
    if len(arrays) == 1:
        name = arrays[0]
        rest = {k: v for k, v in inline.items() if k != name}
        rest_encoded = codec.encode_many(rest)
        if len(rest_encoded) <= threshold:
            return ArgumentPlan(rest, xarray=(name, inline[name]), inline_encoded=rest_encoded)
    encoded = codec.encode_many(inline)
    if len(encoded) > threshold:
        return ArgumentPlan({}, encoded=encoded)
    return ArgumentPlan(inline, inline_encoded=encoded)


async def seal_arguments(
    plan: ArgumentPlan, content_key: bytes, *, compress: bool, chunk_size: int
) -> tuple[Path, Bulk, float]:
    """Seal the bulk part of ``plan`` into a spool file; its path, descriptor and the
    fraction compression saved."""
    fd, name = tempfile.mkstemp(prefix="fedhub-", suffix=".sealed", dir=spool_dir())
    os.close(fd)
    spool, key, tid = Path(name), bulk_key(content_key), new_transfer_id()

    async def seal_netcdf_file(path: Path) -> SealedInfo:
        """Seal the NetCDF file ``path`` into the spool file."""
        return await asyncio.to_thread(
            seal_file, path, spool, key, transfer_id=tid, compress=compress, chunk_size=chunk_size
        )

    try:
        if plan.xarray is not None:
            arg, value = plan.xarray
            direct = await asyncio.to_thread(
                seal_netcdf,
                value,
                spool,
                key,
                transfer_id=tid,
                chunk_size=chunk_size,
                compress=compress,
            )
            if direct is not None:
                info, kind = direct
                return spool, describe(info, format="netcdf", arg=arg, xarray=kind), info.saving
            written = await asyncio.to_thread(_as_netcdf, value, spool)
            if written is None:  # NetCDF would change it: the codec carries it exactly
                plan = ArgumentPlan({}, encoded=codec.encode_many({**plan.inline, arg: value}))
            else:
                path, kind = written
                try:
                    info = await seal_netcdf_file(path)
                finally:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                return spool, describe(info, format="netcdf", arg=arg, xarray=kind), info.saving
        if plan.file is not None:
            arg, path = plan.file
            info = await seal_netcdf_file(path)
            bulk = describe(info, format="netcdf", arg=arg, xarray=plan.file_kind)
            return spool, bulk, info.saving
        assert plan.encoded is not None
        encoded = plan.encoded

        def seal() -> Any:
            with spool.open("wb") as sink:
                return seal_stream(
                    io.BytesIO(encoded),
                    sink,
                    key,
                    transfer_id=tid,
                    compress=compress,
                    chunk_size=chunk_size,
                )

        info = await asyncio.to_thread(seal)
        return spool, describe(info), info.saving
    except BaseException:
        await asyncio.to_thread(spool.unlink, missing_ok=True)
        raise


def _as_netcdf(value: Any, spool: Path) -> tuple[Path, str] | None:
    """``value`` written as a NetCDF file next to ``spool`` (bounded memory beyond the
    value) and its kind; None when NetCDF would not give it back as it is (a dtype it
    cannot hold)."""
    path = spool.with_suffix(".nc")
    try:
        kind = write_netcdf(value, path)
    except ValueError:
        path.unlink(missing_ok=True)
        return None
    return path, kind


def _reporter(handle: CallHandle, direction: str) -> Any:
    def report(progress: TransferProgress) -> None:
        handle._deliver_transfer(direction, progress)

    return report


async def upload(
    nc: NatsClient,
    handle: CallHandle,
    caller: tuple[str, str],
    spool: Path,
    bulk: Bulk,
    timeout: float,
) -> None:
    """Send the sealed arguments to the node; a failure settles the call at once."""
    route = upload_route(caller[0], caller[1], handle.site, bulk.token)
    sender = Sender(
        nc,
        spool,
        to=route.to,
        control=route.control,
        options=TransferOptions(open_timeout=max(1.0, timeout)),
        progress=_reporter(handle, "upload"),
        timeout=timeout,
    )
    try:
        await sender.run()
    except TransferError as exc:
        handle._settle(error=exc)
    finally:
        await asyncio.to_thread(spool.unlink, missing_ok=True)


async def download(
    nc: NatsClient, handle: CallHandle, caller: tuple[str, str], header: ReplyHeader
) -> None:
    """Receive a result announced as a bulk transfer and settle the call with it."""
    loop = asyncio.get_running_loop()
    try:
        key = handle._client._result_key(header.wraps, handle._node_box_key)
        value = await receive_result(
            nc,
            caller,
            handle.site,
            header,
            key,
            result_path=handle.result_path,
            progress=_reporter(handle, "download"),
            timeout=max(1.0, handle._deadline - loop.time()),
        )
    except FederationError as exc:
        handle._settle(error=exc)
    else:
        handle._settle(value)


async def receive_result(
    nc: NatsClient,
    caller: tuple[str, str],
    site: str,
    header: ReplyHeader,
    content_key: bytes,
    *,
    result_path: Path | None,
    progress: ProgressCallback | None,
    timeout: float,
) -> Any:
    """Receive a bulk result from ``site``: a NetCDF result for a NetCDF ``result_path``
    straight into that file (returns :class:`SavedTo`), anything else into memory."""
    bulk = header.bulk
    assert bulk is not None
    route = download_route(caller[0], caller[1], site, bulk.token)
    direct = (
        bulk.format == "netcdf"
        and result_path is not None
        and result_path.suffix.lower() in _NETCDF
    )
    if direct:
        assert result_path is not None
        dest = result_path
    else:
        fd, name = tempfile.mkstemp(prefix="fedhub-", suffix=".result", dir=spool_dir())
        os.close(fd)
        dest = Path(name)
    try:
        receiver = Receiver(
            nc,
            subject=route.to,
            dest=dest,
            key=bulk_key(content_key),
            expect_hash=bytes.fromhex(bulk.hash),
            expect_size=bulk.size,
            expect_control=route.control,
            options=TransferOptions(idle_timeout=RECEIVE_IDLE),
            progress=progress,
            timeout=timeout,
        )
        await receiver.run()
        if direct:
            return SavedTo(dest)
        return await asyncio.to_thread(open_received, dest, bulk)
    finally:
        if not direct:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(dest.unlink)


def open_received(path: Path, bulk: Bulk) -> Any:
    """The value of a received result: decoded, or a NetCDF file loaded into memory."""
    if bulk.format == "netcdf":
        return open_netcdf(path, kind=bulk.xarray, load=True)
    return codec.decode(map_file(path))
