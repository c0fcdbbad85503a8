"""The raw baseline of ``scripts/bench_payload.py``: Object Store put + get on a given path.

Issue 8 sets the call's target against "raw JetStream object store put + get of the same
bytes over the same path": a plain nats-py client at the caller's site (geomar) putting the
bytes into an Object Store bucket of the node's site (hereon, JetStream domain ``hereon``)
and reading them back, across the caller's leaf, the hub and the node's leaf with the TLS
leaf links of the federation. The federation's own accounts keep every site out of another
site's JetStream API and Object Store (docs/topology.md), so no client can do that on a
federation as generated. :func:`start_bench_federation` starts the benchmark's federation
from the same generator and then opens exactly that path for one bucket,
:data:`RAW_BUCKET`, in the benchmark's own copy of the configs:

* on the hub, the node site's account exports to the caller site's account (and only to
  it) the JetStream API of that one bucket's stream in its domain
  (``$JS.<node>.API.STREAM.*.OBJ_<bucket>``, ``...STREAM.MSG.*``, ``...CONSUMER.*``), its
  data subjects (``$O.<bucket>.>``) and its flow control, as services, and the raw
  client's inboxes (:data:`RAW_INBOX`, where the get's chunks are delivered) as a stream;
  the caller's account imports them;
* the caller's leaf lets ``$O.>`` cross its link to the hub both ways and the node's leaf
  lets it come in (the generated remotes deny all three). The node's leaf still sends no
  ``$O`` subject out, so the call's results stay at the node's site as before; and the
  hub's accounts pass ``$O`` subjects of that one bucket only.

Nothing here changes what :mod:`hub.nats.generate` writes for a real site; the call and
the transfer legs of the benchmark run on these same servers and never use the bucket.
:func:`raw_put_get` is the baseline itself, on either path: the same-path one from the
caller's leaf into the node's domain, the single-server one (the figure the benchmark gave
before) from a client of the node's own leaf.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import nats
import structlog
from nats.js import JetStreamContext

from hub.errors import TransportError
from hub.nats import LocalFederation, iter_object, put_object_stream
from hub.nats.config import LEAF_LOCAL_SUBJECTS, _q, _qlist, site_account

__all__ = ["RAW_BUCKET", "raw_put_get", "start_bench_federation", "streamed_get"]

log = structlog.get_logger(__name__)

#: The one Object Store bucket the benchmark's path-opening exports cover.
RAW_BUCKET = "fh-bench-raw"
#: Inbox prefix of the raw client: its get's deliveries come back under it.
RAW_INBOX = "_INBOX.rawbench"
#: Times the federation is written again when another process took one of its ports.
_PORT_TRIES = 3


def _raw_path_services(node: str) -> list[str]:
    """What the raw client needs of ``node``'s account, all for :data:`RAW_BUCKET` alone:
    its stream's API in the node's domain (info, create, purge, message get, the get's
    consumer), the put's data subjects and the get's flow control."""
    api, stream = f"$JS.{node}.API", f"OBJ_{RAW_BUCKET}"
    return [
        f"{api}.STREAM.*.{stream}",
        f"{api}.STREAM.MSG.*.{stream}",
        f"{api}.CONSUMER.*.{stream}",
        f"{api}.CONSUMER.*.{stream}.>",
        f"$O.{RAW_BUCKET}.>",
        f"$JS.FC.{stream}.>",
    ]


def _raw_path_exports(node: str, caller: str) -> list[str]:
    """``node``'s account exports :func:`_raw_path_services` and the deliveries of the
    get (to the raw client's inboxes) to ``caller``'s account only."""
    only = f"accounts: [{_q(site_account(caller))}]"
    return [
        "      # BENCHMARK ONLY (scripts/bench_rawpath.py): the raw baseline's bucket,",
        f"      # reached from {caller} over the same path as a call.",
        *(f"      {{ service: {_q(s)}, {only} }}" for s in _raw_path_services(node)),
        f"      {{ stream: {_q(RAW_INBOX + '.>')}, {only} }}",
    ]


def _raw_path_imports(node: str) -> list[str]:
    """The caller's account imports of :func:`_raw_path_exports`."""
    acc = _q(site_account(node))
    return [
        f"      # BENCHMARK ONLY: the raw baseline's bucket at {node}.",
        *(
            f"      {{ service: {{ account: {acc}, subject: {_q(s)} }} }}"
            for s in _raw_path_services(node)
        ),
        f"      {{ stream: {{ account: {acc}, subject: {_q(RAW_INBOX + '.>')} }} }}",
    ]


def _insert_after(text: str, block: str, opening: str, lines: list[str]) -> str:
    """``lines`` inserted after the first ``opening`` line that follows ``block``."""
    start = text.index(block)
    at = text.index(opening, start) + len(opening)
    return text[:at] + "\n" + "\n".join(lines) + text[at:]


def open_raw_path(fed: LocalFederation, node: str, caller: str) -> None:
    """Rewrite ``fed``'s generated configs (before it starts) as the module docstring says."""
    for path in fed.generated.hub_configs.values():
        text = path.read_text()
        text = _insert_after(
            text, f'  "{site_account(node)}" {{', "    exports: [", _raw_path_exports(node, caller)
        )
        text = _insert_after(
            text, f'  "{site_account(caller)}" {{', "    imports: [", _raw_path_imports(node)
        )
        path.write_text(text)
    denied = _qlist(LEAF_LOCAL_SUBJECTS)
    kept = _qlist([s for s in LEAF_LOCAL_SUBJECTS if not s.startswith("$O.")])
    # the fewest that carry it (tried one by one): the node's leaf keeps its deny_exports
    for site, direction in (
        (caller, "deny_exports"),
        (caller, "deny_imports"),
        (node, "deny_imports"),
    ):
        path = fed.generated.leaf_configs[site]
        text = path.read_text()
        line = f"{direction}: {denied}"
        if line not in text:
            raise RuntimeError(f"{path} has no line {line!r}: the generator changed")
        path.write_text(text.replace(line, f"{direction}: {kept}  # BENCHMARK ONLY"))


async def start_bench_federation(root: Path, node: str, caller: str) -> LocalFederation:
    """The benchmark's federation (open client ports), with the raw path opened."""
    written = root / "federation.toml"
    for attempt in range(1, _PORT_TRIES + 1):
        fed = LocalFederation(root, (node, caller), secure=False)
        open_raw_path(fed, node, caller)
        try:
            await fed.start()
        except TransportError as exc:
            if "address already in use" not in str(exc) or attempt == _PORT_TRIES:
                raise
            log.debug("bench.port_taken", attempt=attempt)
            written.unlink()
            continue
        return fed
    raise AssertionError("unreachable")


async def streamed_get(js: JetStreamContext, name: str) -> int:
    """Read object ``name`` of :data:`RAW_BUCKET` as nats-py's ``ObjectStore.get`` does.

    An ordered push consumer on the object's chunks (they stream, flow-controlled), the
    SHA-256 digest checked at the end; the bytes are counted and dropped. The stream is
    named, where nats-py looks it up by subject (``STREAM.NAMES``, which the benchmark's
    path does not open). Returns the object's size.
    """
    stream = f"OBJ_{RAW_BUCKET}"
    meta = await js.get_last_msg(stream, f"$O.{RAW_BUCKET}.M.{_b64(name)}")
    info = json.loads(meta.data or b"{}")
    chunks = int(info.get("chunks") or 0)
    sub = await js.subscribe(
        f"$O.{RAW_BUCKET}.C.{info['nuid']}", stream=stream, ordered_consumer=True
    )
    sha, size = hashlib.sha256(), 0
    try:
        for _ in range(chunks):
            msg = await sub.next_msg(timeout=30)
            sha.update(msg.data)
            size += len(msg.data)
    finally:
        await sub.unsubscribe()
    if "SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode() != info.get("digest"):
        raise RuntimeError(f"raw get of {name!r}: digest mismatch")
    return size


def _b64(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


async def raw_put_get(
    url: str,
    source: Path,
    name: str,
    expected: int,
    *,
    domain: str | None = None,
    streamed: bool = True,
) -> tuple[float, float]:
    """Seconds to put ``source`` into :data:`RAW_BUCKET` and to read it back (no crypto).

    The put is :func:`hub.nats.put_object_stream` (1 MiB chunks, a window of unacked
    bytes). The get is :func:`streamed_get` (an ordered push consumer, as nats-py's
    ``ObjectStore.get``: the chunks stream, flow-controlled), or with ``streamed=False``
    :func:`hub.nats.iter_object` (one request per chunk: the single-server baseline as
    this benchmark took it before). ``domain``: the JetStream domain that holds the bucket
    when it is not the one of the server at ``url`` (the same-path baseline: the node's
    site, from the caller's leaf).
    """
    nc = await nats.connect(url, inbox_prefix=RAW_INBOX)
    try:
        js = nc.jetstream(domain=domain)
        try:
            await js.object_store(RAW_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            await js.create_object_store(RAW_BUCKET)
        started = time.monotonic()
        with source.open("rb") as f:
            await put_object_stream(js, RAW_BUCKET, name, f)
        put = time.monotonic() - started
        started = time.monotonic()
        if streamed:
            size = await streamed_get(js, name)
        else:
            size = 0
            async for chunk in iter_object(js, RAW_BUCKET, name):
                size += len(chunk)
        got = time.monotonic() - started
        if size != expected:
            raise RuntimeError(f"raw get returned {size} bytes, not {expected}")
        await js.purge_stream(f"OBJ_{RAW_BUCKET}")
        return put, got
    finally:
        await nc.close()
