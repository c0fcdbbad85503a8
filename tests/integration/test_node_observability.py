"""``/healthz`` and ``/metrics`` of a real ``fedhub-node run`` process after real calls.

Scraped over HTTP and parsed with the Prometheus client's own parser: calls by module and
outcome, the latency histogram, queue depth, log head, the NATS gauge; health flips to 503
while the site's NATS server is down and back to 200 when it returns. Hostile: subjects
naming made-up modules do not grow the label set, and a malformed request gets a 4xx
without taking the endpoint down.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.hostile import wait_until
from support.world import World

from hub.client import Client
from hub.errors import FunctionFailedError, UnauthorizedError
from hub.nats import NatsServer, connect
from hub.subjects import call_subject
from node.config import NodeConfig, load_config

CALLER = "klaus@geomar"
STRANGER = "anna@geomar"  # vouched by her site, granted nothing here


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    w.person(STRANGER)
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observed_config(world: World, url: str, port: int) -> NodeConfig:
    cfg = world.node_config(
        "hereon",
        nats_url=url,
        trust=["geomar"],
        users=[CALLER, STRANGER],
        grants=[(CALLER, "climate", "*")],
    )
    assert cfg.source is not None
    with cfg.source.open("a") as fh:
        fh.write(f'[observability]\nlisten = "127.0.0.1:{port}"\n')
    return load_config(cfg.source)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


async def aget(port: int, path: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(get, port, path)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return found


class Node:
    def __init__(self, world: World, cfg: NodeConfig) -> None:
        assert cfg.source is not None
        self.cfg = cfg
        self.out = cfg.node.data_dir / "node.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--config", str(cfg.source)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
            )

    def serving(self) -> bool:
        return (self.cfg.node.data_dir / "status.json").exists()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await aget(port, "/healthz")
    return status, json.loads(body)


async def test_metrics_count_real_calls_by_module_and_outcome(
    world: World, fresh_nats_server: NatsServer
) -> None:
    port = free_port()
    cfg = observed_config(world, fresh_nats_server.url, port)
    node = Node(world, cfg)
    try:
        await wait_until(node.serving, limit=30)
        async with await Client.connect(
            fresh_nats_server.url, CALLER, home=world.store.home
        ) as fed:
            assert await fed.call("hereon.climate.scale", values=[1.0], factor=2.0) == [2.0]
            assert await fed.call("hereon.climate.scale", values=[2.0], factor=2.0) == [4.0]
            with pytest.raises(FunctionFailedError):
                await fed.call("hereon.climate.fail", message="on purpose")
        async with await Client.connect(
            fresh_nats_server.url, STRANGER, home=world.store.home
        ) as other:
            with pytest.raises(UnauthorizedError):
                await other.call("hereon.climate.scale", values=[1.0])

        async def counted() -> bool:
            _, text = await aget(port, "/metrics")
            found = samples(text)
            return found[("fedhub_call_duration_seconds_count", (("module", "climate"),))] >= 4

        await wait_until(counted, limit=10)
        status, text = await aget(port, "/metrics")
        code, body = await health(port)
    finally:
        assert node.stop() == 0
        node.kill()
    assert status == 200
    found = samples(text)

    def calls(outcome: str) -> float:
        return found[("fedhub_calls_total", (("module", "climate"), ("outcome", outcome)))]

    assert (calls("completed"), calls("failed"), calls("rejected")) == (2, 1, 1)
    assert found[("fedhub_call_duration_seconds_count", (("module", "climate"),))] == 4
    inf = ("fedhub_call_duration_seconds_bucket", (("le", "+Inf"), ("module", "climate")))
    assert found[inf] == 4
    assert found[("fedhub_nats_connected", ())] == 1
    assert found[("fedhub_log_head_seq", ())] > 4
    assert found[("fedhub_queue_pending", ())] == 0
    assert ("fedhub_queue_ack_pending", ()) in found
    assert found[("fedhub_transfer_bytes_total", (("direction", "out"),))] == 0
    assert ("process_cpu_seconds_total", ()) in found
    assert (code, body["status"], body["nats"]["connected"]) == (200, "ok", True)
    assert body["log"]["writable"] is True


async def test_health_is_503_while_nats_is_down_and_200_when_it_returns(
    world: World, fresh_nats_server: NatsServer
) -> None:
    port = free_port()
    node = Node(world, observed_config(world, fresh_nats_server.url, port))
    try:
        await wait_until(node.serving, limit=30)
        assert (await health(port))[0] == 200
        await fresh_nats_server.stop()

        async def down() -> bool:
            return (await health(port))[0] == 503

        await wait_until(down, limit=20)
        code, body = await health(port)
        assert (code, body["status"]) == (503, "unavailable")
        assert body["nats"]["connected"] is False
        assert body["log"]["writable"] is True
        _, text = await aget(port, "/metrics")
        assert samples(text)[("fedhub_nats_connected", ())] == 0

        await fresh_nats_server.start()

        async def up() -> bool:
            return (await health(port))[0] == 200

        await wait_until(up, limit=30)
        _, text = await aget(port, "/metrics")
        assert samples(text)[("fedhub_nats_outages", ())] == 1
    finally:
        assert node.stop() == 0
        node.kill()


async def test_health_is_503_while_the_node_waits_for_its_first_connection(
    world: World,
) -> None:
    port = free_port()
    node = Node(world, observed_config(world, f"nats://127.0.0.1:{free_port()}", port))
    try:

        async def answering() -> bool:
            try:
                return (await health(port))[0] == 503
            except OSError:
                return False

        await wait_until(answering, limit=20)
        code, body = await health(port)
        assert (code, body["nats"]["connected"], body["log"]["reason"]) == (
            503,
            False,
            "not open yet",
        )
        assert node.stop() == 0
    finally:
        node.kill()


async def test_subjects_naming_made_up_modules_do_not_grow_the_label_set(
    world: World, fresh_nats_server: NatsServer
) -> None:
    port = free_port()
    node = Node(world, observed_config(world, fresh_nats_server.url, port))
    try:
        await wait_until(node.serving, limit=30)
        nc = await connect(fresh_nats_server.url)
        try:
            js = nc.jetstream()
            for i in range(20):
                await js.publish(call_subject("hereon", f"made_up_{i}", "f"), b"not a request")
        finally:
            await nc.close()

        async def rejected() -> float:
            _, text = await aget(port, "/metrics")
            key = ("fedhub_calls_total", (("module", "unknown"), ("outcome", "rejected")))
            return samples(text).get(key, 0)

        await wait_until(lambda: _at_least(rejected, 20), limit=20)
        _, text = await aget(port, "/metrics")
    finally:
        assert node.stop() == 0
        node.kill()
    modules = {
        dict(labels).get("module")
        for (name, labels) in samples(text)
        if name.startswith("fedhub_call")
    }
    assert modules == {"climate", "unknown"}


async def _at_least(value: Any, n: float) -> bool:
    return bool(await value() >= n)


async def test_a_malformed_request_gets_a_4xx_and_the_endpoint_keeps_answering(
    world: World, fresh_nats_server: NatsServer
) -> None:
    port = free_port()
    node = Node(world, observed_config(world, fresh_nats_server.url, port))
    try:
        await wait_until(node.serving, limit=30)
        answers = []
        for request in (
            b"NONSENSE\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
            b"GET /nothing HTTP/1.1\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answers.append((await reader.read(200)).split(b"\r\n", 1)[0])
            writer.close()
            await writer.wait_closed()
        assert answers == [
            b"HTTP/1.1 400 Bad Request",
            b"HTTP/1.1 405 Method Not Allowed",
            b"HTTP/1.1 431 Request Header Fields Too Large",
            b"HTTP/1.1 404 Not Found",
        ]
        assert (await health(port))[0] == 200
    finally:
        assert node.stop() == 0
        node.kill()
