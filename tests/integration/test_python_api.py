"""The Python API people already know: futures, ``await``, an Executor, the CLI's defaults.

One node (``fedhub-node run``, embedded nats-server) serves the test climate module for the
whole file; the clients connect to it as in a script or a notebook would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import Iterator

import numpy as np
import pytest
import xarray as xr
from support.world import NodeProcess, World

from hub import connect
from hub.client import Client
from hub.errors import ArgumentError, CallCancelledError, CallTimeoutError, ConfigError
from hub.executor import FedExecutor
from hub.progressbar import CallProgressBar, in_notebook
from hub.sync_client import SyncClient

pytestmark = pytest.mark.slow

KLAUS = "klaus@geomar"
EVE = "eve@geomar"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, NodeProcess]]:
    world = World(tmp_path_factory.mktemp("python-api"))
    world.person(KLAUS)
    world.person(EVE)
    cfg = world.node_config(
        "hereon", trust=["geomar"], users=[KLAUS, EVE], grants=[(KLAUS, "climate", "*")]
    )
    process = world.spawn_node(cfg)
    try:
        yield world, process
    finally:
        process.stop()


@pytest.fixture
def fed(node: tuple[World, NodeProcess], monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncClient]:
    world, _ = node
    monkeypatch.delenv("FEDHUB_URL", raising=False)  # found through the key store
    monkeypatch.setenv("FEDHUB_HOME", str(world.store.home))
    monkeypatch.setenv("FEDHUB_IDENTITY", KLAUS)
    with connect() as client:
        yield client


def test_connect_takes_the_same_environment_defaults_as_the_cli(
    node: tuple[World, NodeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    world, _ = node
    monkeypatch.delenv("FEDHUB_URL", raising=False)
    monkeypatch.delenv("FEDHUB_IDENTITY", raising=False)
    monkeypatch.setenv("FEDHUB_HOME", str(world.store.home))
    with pytest.raises(ConfigError, match="which one calls"):  # two people: as the CLI
        connect()
    monkeypatch.setenv("FEDHUB_IDENTITY", KLAUS)
    with connect() as fed:
        assert fed.call("hereon.climate.scale", values=[1.0, 2.0], factor=3) == [3.0, 6.0]


def test_handles_are_futures_for_wait_and_as_completed(fed: SyncClient) -> None:
    handles = [fed.submit("hereon.climate.scale", values=[float(n)], factor=2) for n in range(4)]
    assert all(isinstance(h, concurrent.futures.Future) for h in handles)
    results = [h.result() for h in concurrent.futures.as_completed(handles, timeout=60)]
    assert sorted(r[0] for r in results) == [0.0, 2.0, 4.0, 6.0]
    done, not_done = concurrent.futures.wait(handles, timeout=60)
    assert done == set(handles) and not not_done


def test_wait_first_completed_returns_the_quick_call_and_the_slow_one_can_be_cancelled(
    fed: SyncClient,
) -> None:
    slow = fed.submit("hereon.climate.sleep", seconds=60)
    quick = fed.submit("hereon.climate.scale", values=[1.0])
    done, not_done = concurrent.futures.wait(
        [slow, quick], timeout=60, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert quick in done and slow in not_done
    assert quick.result() == [2.0]
    with pytest.raises(CallTimeoutError, match=slow.request_id):
        slow.result(timeout=0.1)  # a TimeoutError that names the request; the call goes on
    for _ in range(100):  # the node may not have started it yet: ask until it confirms
        if slow.cancel() or slow.done():
            break
        concurrent.futures.wait([slow], timeout=0.1)
    with pytest.raises(CallCancelledError):
        slow.result(timeout=60)
    assert slow.cancel() is False  # over


def test_failed_calls_raise_their_typed_error_through_the_future(fed: SyncClient) -> None:
    handle = fed.submit("hereon.climate.fail", message="no data")
    assert isinstance(handle.exception(timeout=60), Exception)
    assert "no data" in str(handle.exception())


def test_async_handles_and_sync_handles_can_be_awaited(
    node: tuple[World, NodeProcess], fed: SyncClient
) -> None:
    world, process = node
    url = (process.cfg.node.data_dir / "nats.url").read_text().strip()

    async def main() -> list[object]:
        async with await Client.connect(url, KLAUS, home=world.store.home) as client:
            handles = [
                await client.submit("hereon.climate.scale", values=[float(n)]) for n in (1, 2)
            ]
            both = await asyncio.gather(*handles)
            one = await handles[0]  # awaiting twice gives the same result
            from_sync = await fed.submit("hereon.climate.scale", values=[5.0])
        return [*both, one, from_sync]

    assert asyncio.run(main()) == [[2.0], [4.0], [2.0], [10.0]]


def test_executor_submits_maps_and_waits_on_exit(fed: SyncClient) -> None:
    with fed.executor(max_in_flight=2) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        future = ex.submit("hereon.climate.scale", values=[1.0], factor=10)
        # positional arguments follow the remote signature: scale(values, factor)
        mapped = list(ex.map("hereon.climate.scale", [[1.0], [2.0], [3.0]], [2, 3, 4]))
        slow = ex.submit("hereon.climate.sleep", 0.2)
    assert slow.done(), "leaving the block waits for the calls in flight"
    assert future.result() == [10.0]
    assert mapped == [[2.0], [6.0], [12.0]]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit("hereon.climate.scale", values=[1.0])


def test_executor_refuses_what_is_not_a_remote_function(fed: SyncClient) -> None:
    ex = FedExecutor(fed)
    with pytest.raises(ArgumentError, match="not a remote function"):
        ex.submit(print, 1)
    with pytest.raises(ArgumentError, match="2 given by position"):
        ex.submit("hereon.climate.sleep", 1, 2)
    ex.shutdown()


def test_executor_shutdown_can_cancel_the_calls_in_flight(fed: SyncClient) -> None:
    ex = fed.executor()
    slow = ex.submit("hereon.climate.sleep", seconds=60)
    for _ in range(100):  # until the node runs it (a call not yet received is not found)
        if fed.status("hereon", slow.request_id).state == "running":
            break
        concurrent.futures.wait([slow], timeout=0.1)
    ex.shutdown(wait=True, cancel_futures=True)
    assert isinstance(slow.exception(), CallCancelledError)


def test_call_shows_a_tqdm_progress_bar_when_asked(
    fed: SyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    da = xr.DataArray(np.arange(6.0), dims="x")
    assert not in_notebook()
    assert fed.call("hereon.climate.slow_mean", da=da, steps=3, progress_bar=True) == 2.5
    err = capsys.readouterr().err
    assert "hereon.climate.slow_mean" in err and "1000/1000" in err


def test_progress_bar_follows_fractions_and_messages() -> None:
    out = io.StringIO()
    bar = CallProgressBar("hereon.climate.x", file=out)
    seen: list[tuple[float | None, str]] = []
    report = bar.chain(lambda f, m: seen.append((f, m)))
    report(0.25, "a quarter")
    report(None, "still going")
    report(0.2, "never backwards")
    bar.close()
    assert bar._bar.n == 250
    assert seen == [(0.25, "a quarter"), (None, "still going"), (0.2, "never backwards")]
    assert "a quarter" in out.getvalue()
