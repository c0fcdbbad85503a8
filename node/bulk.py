"""A node's side of calls with bulk payloads: arguments received, results sent and kept.

- An accepted call whose signed header names a bulk argument (:class:`hub.envelopes.Bulk`)
  receives it with a :class:`~hub.transfer.Receiver` into this node's spool folder before
  the function runs: codec-encoded arguments are decoded from there, a NetCDF argument is
  opened lazily from the spooled file (no second copy in memory); the spool files of a
  call are removed when it ends.
- A result above the threshold is sealed into a spool file (an xarray value written as
  NetCDF first), announced in a small result reply, streamed to the caller with a
  :class:`~hub.transfer.Sender`, and stored in the site's result bucket in bounded memory
  (:func:`hub.nats.put_object_stream`); the stored form's head says it is a bulk result.
- :meth:`BulkLink.sweep`: spool files no live call owns (a node killed mid-transfer)
  are removed at start and now and then, each logged as ``transfer.swept``.

See docs/protocol.md, "Calls with bulk payloads".
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from hub import codec
from hub.bulk import (
    Chained,
    bulk_key,
    chunk_size_for,
    describe,
    is_xarray,
    map_file,
    open_netcdf,
    seal_netcdf,
    write_netcdf,
)
from hub.crypto import new_content_key, wrap_key
from hub.envelopes import (
    Bulk,
    RequestHeader,
    StoredResult,
    stored_result_head,
    unpack_stored_result,
    wraps_to_text,
)
from hub.errors import (
    CanonicalError,
    IntegrityError,
    OversizeError,
    TransferError,
    ValidationError,
)
from hub.keys import KeyPair
from hub.nats import iter_object, put_object_stream, sweep_orphan_chunks
from hub.records import KeyRecord
from hub.subjects import RESULTS_BUCKET, validate_identity
from hub.transfer import (
    DEFAULT_ACK_EVERY,
    Received,
    Receiver,
    Route,
    SealedInfo,
    Sender,
    TransferOptions,
    download_route,
    new_transfer_id,
    seal_file,
    seal_stream,
    site_route,
    upload_route,
)
from node.config import NodeConfig
from node.runner import CancelSignal

__all__ = ["BulkLink", "SealedResult"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SealedResult:
    """A result sealed into a spool file, ready to announce, send and keep."""

    path: Path
    bulk: Bulk
    wraps: dict[str, str]


class BulkLink:
    """Bulk arguments and results of one node (its connection and its spool folder)."""

    def __init__(
        self,
        *,
        site: str,
        key: KeyPair,
        nc: Callable[[], NatsClient],
        js: Callable[[], JetStreamContext],
        spool: Path,
        threshold: int,
        max_size: int = 0,
        options: TransferOptions | None = None,
        compress: Callable[[str], bool] = lambda module: False,
        store_timeout: float = 60.0,
    ) -> None:
        self.site = site
        self.key = key
        self._nc = nc
        self._js = js
        self.spool = spool
        self.threshold = threshold
        self.max_size = max_size
        self.options = options or TransferOptions()
        self.compress = compress
        self.store_timeout = store_timeout
        self._live: set[str] = set()  # request ids whose spool files are in use
        self._tasks: set[asyncio.Task[None]] = set()
        spool.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_node(
        cls,
        cfg: NodeConfig,
        instance: int,
        key: KeyPair,
        nc: NatsClient,
        js: Callable[[], JetStreamContext],
    ) -> BulkLink:
        """The link of node instance ``instance`` as ``cfg`` says (its ``[calls]`` bulk
        keys, per-module ``compress``), its spool folder swept and the sweeps started."""
        calls = cfg.calls
        compressed = {m.name for m in cfg.modules if m.compress}
        link = cls(
            site=cfg.node.site,
            key=key,
            nc=lambda: nc,
            js=js,
            spool=cfg.node.data_dir / "spool" / str(instance),
            threshold=calls.bulk_threshold or calls.max_payload // 2,
            max_size=calls.bulk_max_size,
            options=TransferOptions(
                window=calls.bulk_window,
                ack_every=min(DEFAULT_ACK_EVERY, calls.bulk_window // 4),
                idle_timeout=calls.bulk_idle_timeout,
            ),
            compress=compressed.__contains__,
        )
        link.sweep()
        link.start_sweeping(calls.bulk_sweep_every, calls.bulk_orphan_age)
        return link

    # -- arguments -------------------------------------------------------------------------

    async def receive_arguments(
        self,
        header: RequestHeader,
        content_key: bytes,
        *,
        cancel: CancelSignal,
        timeout: float,
    ) -> dict[str, object]:
        """Receive the bulk argument(s) of an accepted call; the keyword arguments they hold.

        Raises the transfer's error (TransferError: cancelled, timeout, refused,
        integrity) or ValidationError when the payload does not decode.
        """
        bulk = header.bulk
        assert bulk is not None
        self.check_size(bulk.size, "the arguments are")
        rid = header.id
        caller = validate_identity(header.caller)
        route = upload_route(caller.site, caller.name, self.site, bulk.token)
        self._live.add(rid)
        dest = self.spool / f"{rid}.arg"
        got = await self.receive(
            route, dest, content_key, bulk.hash, bulk.size, cancel=cancel, timeout=timeout
        )
        log.info("call.argument_received", bytes=bulk.size, seconds=round(got.stats.seconds, 3))
        if bulk.format == "netcdf":
            assert bulk.arg is not None
            try:
                opened = await asyncio.to_thread(open_netcdf, dest, kind=bulk.xarray)
                return {bulk.arg: opened}
            except Exception as exc:  # xarray raises many kinds for a file it cannot read
                raise ValidationError(
                    f"argument {bulk.arg!r} is no readable NetCDF: {exc}"
                ) from exc
        try:
            data = await asyncio.to_thread(map_file, dest)
            dest.unlink(missing_ok=True)  # the mapping keeps the bytes until it is dropped
            return codec.decode_many(data, max_size=max(len(data), 1))
        except CanonicalError as exc:
            raise ValidationError(f"arguments cannot be decoded: {exc.message}") from exc

    def check_size(self, size: int, what: str) -> None:
        """OversizeError when ``size`` bytes are more than this site takes per call
        (``what``: "the arguments are", "ref:… is")."""
        if self.max_size and size > self.max_size:
            raise OversizeError(
                f"{what} {size:,} bytes; this site takes at most {self.max_size:,} per call",
                hint="pass less data per call, or ask the operator to raise bulk_max_size",
            )

    async def receive(
        self,
        route: Route,
        dest: Path,
        content_key: bytes,
        expect_hash: str,
        expect_size: int,
        *,
        cancel: CancelSignal | None,
        timeout: float,
    ) -> Received:
        """Receive one bulk payload on ``route`` into the spool file ``dest``, checked
        whole against ``expect_hash``; a cancel of the call stops it."""
        receiver = Receiver(
            self._nc(),
            subject=route.to,
            dest=dest,
            key=bulk_key(content_key),
            expect_hash=bytes.fromhex(expect_hash),
            expect_size=expect_size,
            expect_control=route.control,
            options=self.options,
            timeout=timeout,
            sync=False,  # a spool file: after a crash the call comes again, and so does it
        )

        def stop() -> None:
            receiver.cancel("the call was cancelled")

        if cancel is not None:
            cancel.add_callback(stop)
            if cancel.is_set():
                stop()
        try:
            return await receiver.run()
        finally:
            if cancel is not None:
                cancel.remove_callback(stop)

    def spool_file(self, rid: str, suffix: str) -> Path:
        """A spool file of call ``rid``, removed with its others by :meth:`release`."""
        self._live.add(rid)
        return self.spool / f"{rid}.{suffix}"

    def release(self, rid: str) -> None:
        """Remove the spool files of a call that ended (a call that never spooled has
        none: most calls, spared a scan of the spool folder)."""
        if rid not in self._live:
            return
        self._live.discard(rid)
        for path in self.spool.glob(f"{rid}.*"):
            path.unlink(missing_ok=True)

    # -- results ---------------------------------------------------------------------------

    async def seal_result(
        self, value: object, header: RequestHeader, record: KeyRecord
    ) -> SealedResult | bytes:
        """The result sealed into a spool file when it is large; else its codec bytes.

        An xarray value larger than the threshold is sealed as a NetCDF file: straight
        from the value where that is exact (:func:`hub.bulk.seal_netcdf`), else written
        as NetCDF first and sealed from that file (the value and one file, never two
        copies in memory).
        """
        rid = header.id
        plain = self.spool / f"{rid}.result"
        sealed = self.spool / f"{rid}.sealed"
        key, tid = new_content_key(), new_transfer_id()
        # per module, or per call: a caller that compressed its arguments gets the same
        compress = self.compress(header.module) or bool(header.bulk and header.bulk.compressed)
        carried = int(self._nc().max_payload)
        if header.reply_max is not None:  # the caller's server carries less than ours
            carried = min(carried, header.reply_max)
        chunk = chunk_size_for(carried)
        threshold = (
            self.threshold
            if header.reply_max is None
            else min(self.threshold, header.reply_max // 2)
        )
        kind: str | None = None
        data: bytes | None = None
        info: SealedInfo | None = None
        if is_xarray(value) and int(getattr(value, "nbytes", 0)) > threshold:
            self._live.add(rid)
            direct = await asyncio.to_thread(
                seal_netcdf,
                value,
                sealed,
                bulk_key(key),
                transfer_id=tid,
                chunk_size=chunk,
                compress=compress,
            )
            if direct is not None:
                info, kind = direct
            else:
                try:
                    kind = await asyncio.to_thread(write_netcdf, value, plain)
                except Exception as exc:  # e.g. a dtype NetCDF3 cannot hold: the codec can
                    await asyncio.to_thread(plain.unlink, missing_ok=True)
                    log.info("call.result_not_netcdf", reason=str(exc)[:200])
        if kind is None:
            data = codec.encode(value)
            if len(data) <= threshold:
                return data
            self._live.add(rid)
        if info is None and data is None:
            info = await asyncio.to_thread(
                seal_file,
                plain,
                sealed,
                bulk_key(key),
                transfer_id=tid,
                compress=compress,
                chunk_size=chunk,
            )
            plain.unlink(missing_ok=True)
        elif info is None and data is not None:

            def seal_in_memory(payload: bytes) -> SealedInfo:
                with sealed.open("wb") as sink:
                    return seal_stream(
                        io.BytesIO(payload),
                        sink,
                        bulk_key(key),
                        transfer_id=tid,
                        compress=compress,
                        chunk_size=chunk,
                    )

            info = await asyncio.to_thread(seal_in_memory, data)
        assert info is not None
        bulk = describe(info, format="netcdf" if kind else "codec", xarray=kind)
        wraps = {
            record.kid: wrap_key(
                self.key.box_secret, self.key.box_public, record.box_key_bytes(), key
            )
        }
        if compress:
            log.info("call.result_compressed", bytes=info.header.total_size, saved=info.saving)
        return SealedResult(sealed, bulk, wraps_to_text(wraps))

    async def send_result(
        self, header: RequestHeader, result: SealedResult, timeout: float
    ) -> None:
        """Stream a sealed result to the caller (who listens once the announce arrived)."""
        caller = validate_identity(header.caller)
        route = download_route(caller.site, caller.name, self.site, result.bulk.token)
        sender = Sender(
            self._nc(),
            result.path,
            to=route.to,
            control=route.control,
            options=self.options,
            timeout=timeout,
        )
        stats = await sender.run()
        log.info("call.result_sent", bytes=stats.plain_bytes, seconds=round(stats.seconds, 3))

    async def store_result(self, name: str, result: SealedResult) -> None:
        """Keep a sealed result in the site's result bucket (head, then its sealed form)."""
        head = stored_result_head(StoredResult(wraps=result.wraps, bulk=result.bulk))
        with result.path.open("rb") as sealed:
            await put_object_stream(
                self._js(),
                RESULTS_BUCKET,
                name,
                io.BufferedReader(Chained(head, sealed)),
                timeout=self.store_timeout,
            )

    async def load_stored(self, name: str, rid: str) -> tuple[StoredResult, bytes | Path]:
        """A kept result: its head, and its ciphertext (one-message results) or the path
        of its sealed form in the spool folder (bulk results), read in bounded memory."""
        path = self.spool / f"{rid}.fetch-{secrets.token_hex(4)}.sealed"
        buf = bytearray()
        head: StoredResult | None = None
        out: BinaryIO | None = None
        self._live.add(rid)
        try:
            async for chunk in iter_object(self._js(), RESULTS_BUCKET, name):
                if out is not None:
                    await asyncio.to_thread(out.write, chunk)
                    continue
                buf += chunk
                if head is None and len(buf) >= 4:
                    size = 4 + int.from_bytes(buf[:4], "big")
                    if len(buf) >= size:
                        head, _ = unpack_stored_result(bytes(buf[:size]))
                        del buf[:size]
                        if head.bulk is not None:
                            out = path.open("wb")
                            out.write(buf)
            if head is None:
                raise IntegrityError(f"the stored result {name!r} has no head")
            if out is None:
                return head, bytes(buf)
            out.close()
            return head, path
        except BaseException:
            if out is not None:
                out.close()
            path.unlink(missing_ok=True)
            raise
        finally:
            self._live.discard(rid)

    async def load_head(self, name: str) -> StoredResult:
        """Only the head of a kept result (its wraps): reads no more chunks than it needs."""
        buf = bytearray()
        async for chunk in iter_object(self._js(), RESULTS_BUCKET, name):
            buf += chunk
            if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = 4 + int.from_bytes(buf[:4], "big")
                head, _ = unpack_stored_result(bytes(buf[:size]))
                return head
        raise IntegrityError(f"the stored result {name!r} has no head")

    def serve(self, caller_identity: str, bulk: Bulk, sealed: Path, timeout: float) -> None:
        """Send a kept bulk result (staged by :meth:`load_stored`) to its caller, or to a
        node that takes it by reference (:func:`hub.transfer.site_route`), in the
        background; the staged file is removed afterwards."""
        caller = validate_identity(caller_identity)
        if caller.kind == "node":
            route = site_route(self.site, caller.site, bulk.token)
        else:
            route = download_route(caller.site, caller.name, self.site, bulk.token)

        async def send() -> None:
            sender = Sender(
                self._nc(),
                sealed,
                to=route.to,
                control=route.control,
                options=self.options,
                timeout=timeout,
            )
            try:
                await sender.run()
            except TransferError as exc:
                log.warning("result.send_failed", transfer=bulk.transfer, reason=exc.message)
            finally:
                await asyncio.to_thread(sealed.unlink, missing_ok=True)

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the transfers still serving fetches."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- orphans ---------------------------------------------------------------------------

    def start_sweeping(self, every: float, orphan_age: float) -> None:
        """Sweep the spool folder and the result bucket now and every ``every`` seconds."""

        async def loop() -> None:
            while True:
                await self.sweep_store(orphan_age)
                await asyncio.sleep(every)
                self.sweep(older_than=2 * self.options.idle_timeout)

        task = asyncio.get_running_loop().create_task(loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep_store(self, orphan_age: float) -> dict[str, int]:
        """Purge result chunks without an object (a node killed while storing), older than
        ``orphan_age`` seconds; each purge is logged as ``result.chunks_swept``."""
        try:
            purged = await sweep_orphan_chunks(self._js(), RESULTS_BUCKET, older_than=orphan_age)
        except Exception as exc:  # the bucket unreachable now: the next round tries again
            log.warning("result.sweep_failed", reason=str(exc) or type(exc).__name__)
            return {}
        for subject, count in purged.items():
            log.warning("result.chunks_swept", subject=subject, messages=count)
        return purged

    def sweep(self, older_than: float = 0.0) -> list[Path]:
        """Remove spool files no live call owns (older than ``older_than`` seconds)."""
        removed: list[Path] = []
        limit = time.time() - older_than
        for path in sorted(self.spool.iterdir()):
            rid = path.name.lstrip(".").split(".", 1)[0]
            if rid in self._live:
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if stat.st_mtime > limit:
                    continue
                path.unlink()
                log.warning("transfer.swept", path=path.name, bytes=stat.st_size)
                removed.append(path)
        return removed
