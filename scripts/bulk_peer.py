"""One side of a bulk transfer in a process of its own, reporting its memory as JSON.

Used by the transfer tests (a sender to kill, peak RSS of each side) and by
``scripts/bench_payload.py``::

    python scripts/bulk_peer.py receive --url URL --subject S --control C --dest PATH --key HEX
    python scripts/bulk_peer.py send --url URL --source PATH --to S --control C --key HEX \
        --transfer HEX

``send`` seals ``--source`` into a spool file next to it first (fresh stream, the given
key and transfer id), then sends it. At the end each prints one JSON line: bytes, seconds,
``rss_start`` (peak RSS in KiB once connected, before the transfer) and ``rss_peak``
(peak RSS in KiB at the end). Each prints ``ready`` on stderr once connected, a sender
``sealed`` when it starts sending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import nats

from hub.transfer import DEFAULT_CHUNK_SIZE, Receiver, Sender, TransferOptions, seal_file


def _peak_rss_kib() -> int:
    """This process's own peak RSS: ``VmHWM`` on Linux. (``ru_maxrss`` there also counts
    the peak of the process that forked this one, carried across ``exec``.)"""
    try:
        with Path("/proc/self/status").open() as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _cpu_seconds() -> float:
    """User and system CPU this process used so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _options(args: argparse.Namespace) -> TransferOptions:
    return TransferOptions(
        window=args.window,
        ack_every=max(1, args.window // 4),
        idle_timeout=args.idle_timeout,
    )


async def _run(args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(args.url, pending_size=8 * 1024 * 1024)
    rss_start = _peak_rss_kib()
    print("ready", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        key = bytes.fromhex(args.key)
        if args.role == "receive":
            received = await Receiver(
                nc,
                subject=args.subject,
                dest=Path(args.dest),
                key=key,
                expect_control=args.control,
                options=_options(args),
                timeout=args.timeout,
            ).run()
            stats = received.stats
        else:
            source = Path(args.source)
            sealed = source.with_name(source.name + ".sealed")
            await asyncio.to_thread(
                seal_file,
                source,
                sealed,
                key,
                transfer_id=bytes.fromhex(args.transfer),
                chunk_size=args.chunk_size,
                compress=args.compress,
            )
            print("sealed", file=sys.stderr, flush=True)
            try:
                stats = await Sender(
                    nc,
                    sealed,
                    to=args.to,
                    control=args.control,
                    options=_options(args),
                    timeout=args.timeout,
                ).run()
            finally:
                sealed.unlink(missing_ok=True)
    finally:
        await nc.close()
    return {
        "role": args.role,
        "bytes": stats.plain_bytes,
        "seconds": time.monotonic() - started,
        "transfer_seconds": stats.seconds,
        "resent_chunks": stats.resent_chunks,
        "peak_in_flight": stats.peak_in_flight,
        "cpu_seconds": _cpu_seconds(),
        "rss_start_kib": rss_start,
        "rss_peak_kib": _peak_rss_kib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="content key, hex")
    parser.add_argument("--control", required=True, help="the sender's subject")
    parser.add_argument("--subject", help="receive: the subject to listen on")
    parser.add_argument("--dest", help="receive: where the payload goes")
    parser.add_argument("--source", help="send: the file to send")
    parser.add_argument("--to", help="send: the receiver's subject")
    parser.add_argument("--transfer", help="send: transfer id, hex")
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--window", type=int, default=TransferOptions().window)
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
