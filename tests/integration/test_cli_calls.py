"""The caller's command line end to end: ``fedhub call/ls/stub/status`` as real processes.

One node (``fedhub-node run`` with its embedded nats-server) serves the example climate
module for the whole file; every test runs ``python -m hub.cli`` against it with the test
world's key store.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import xarray as xr
from support.terminal import run_on_terminal
from support.world import NodeProcess, World

from hub.cli_calls import jsonable
from hub.cli_progress import ProgressBar
from hub.client import connect

KLAUS = "klaus@geomar"
STEPS = ["steps=400"]  # slow_mean for 20 s: long enough to be interrupted
EVE = "eve@geomar"  # known to the node, but granted nothing


@dataclass
class Site:
    world: World
    node: NodeProcess
    url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
        }
        env.update(FEDHUB_HOME=str(self.home), FEDHUB_URL=self.url, FEDHUB_IDENTITY=KLAUS)
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    world = World(tmp_path_factory.mktemp("cli-calls"))
    world.person(KLAUS)
    world.person(EVE)
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=[KLAUS, EVE],
        grants=[(KLAUS, "climate", "*")],
    )
    node = world.spawn_node(cfg)
    try:
        url = (cfg.node.data_dir / "nats.url").read_text().strip()
        yield Site(world, node, url, world.store.home)
    finally:
        node.stop()


@dataclass
class Run:
    code: int
    out: str
    err: str

    def request_id(self) -> str:
        found = re.search(r"^request (\S+)$", self.err, re.MULTILINE)
        assert found, self.err
        return found.group(1)


def fedhub(site: Site, *args: str, cwd: Path | None = None, **env: str) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=site.env(**env),
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_error_line(run: Run, *phrases: str, code: int = 1) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line containing ``phrases``."""
    assert run.code == code, (run.out, run.err)
    assert "Traceback" not in run.err
    lines = [line for line in run.err.splitlines() if not line.startswith("request ")]
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


@pytest.fixture
def field(tmp_path: Path) -> xr.DataArray:
    da = xr.DataArray(
        np.arange(12.0).reshape(3, 4), dims=("time", "x"), name="t", attrs={"units": "K"}
    )
    da.to_netcdf(tmp_path / "in.nc")
    return da


# --- fedhub call ------------------------------------------------------------------------


def test_call_with_json_arguments_prints_the_result_and_the_request_id(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.scale", "values=[1, 2, 3]", "factor=3")
    assert run.code == 0, run.err
    assert run.out.strip() == "[3.0, 6.0, 9.0]"
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", run.request_id())


def test_call_reads_a_netcdf_argument_and_writes_the_result_to_a_netcdf_file(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    run = fedhub(
        site, "call", "hereon.climate.compute_sum", "da=@in.nc", "--out", "sum.nc", cwd=tmp_path
    )
    assert run.code == 0, run.err
    assert run.out == ""
    with xr.open_dataarray(tmp_path / "sum.nc") as result:
        xr.testing.assert_identical(result.load(), field.sum(dim="time"))


def test_call_prints_an_xarray_result_as_its_repr(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    run = fedhub(site, "call", "hereon.climate.compute_sum", "da=@in.nc", cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.out.startswith("<xarray.DataArray 't' (x: 4)>")
    assert "units:    K" in run.out


def test_call_with_json_flag_prints_numpy_and_xarray_results_as_json(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    np.save(tmp_path / "values.npy", np.array([2.0, 4.0, 6.0]))
    # options may come before, between or after the key=value arguments
    run = fedhub(
        site, "call", "hereon.climate.normalize", "--json", "values=@values.npy", cwd=tmp_path
    )
    assert run.code == 0, run.err
    assert json.loads(run.out) == [0.0, 0.5, 1.0]

    run = fedhub(site, "call", "hereon.climate.compute_sum", "da=@in.nc", "--json", cwd=tmp_path)
    assert run.code == 0, run.err
    data = json.loads(run.out)
    assert data["dims"] == ["x"]
    assert data["data"] == [12.0, 15.0, 18.0, 21.0]
    assert data["attrs"] == {"units": "K"}


def test_call_of_an_unknown_function_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.nope", "x=1")
    assert_one_error_line(run, "NotFoundError", "nope", "compute_sum")


def test_call_by_a_caller_without_a_grant_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.scale", "values=[1]", "--as", EVE)
    assert_one_error_line(run, "UnauthorizedError", EVE)


def test_call_with_wrong_arguments_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.scale", "values=abc")
    assert_one_error_line(run, "ValidationError", "values")


def test_call_with_a_malformed_argument_fails_before_connecting(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.scale", "values")
    assert_one_error_line(run, "ArgumentError", "key=value", code=2)
    run = fedhub(site, "call", "hereon.climate.sleep", "seconds=1", "timeout=3")
    assert_one_error_line(run, "ArgumentError", "'timeout'", "--timeout", code=2)


def test_call_with_a_missing_file_says_so_apart_from_config_errors(
    site: Site, tmp_path: Path
) -> None:
    for name in ("missing.nc", "missing.npy"):  # streamed NetCDF and read-at-once files
        run = fedhub(site, "call", "hereon.climate.compute_sum", f"da=@{name}", cwd=tmp_path)
        line = assert_one_error_line(run, "ArgumentError", "no file", name, code=2)
        assert "ConfigError" not in line
    (tmp_path / "folder.nc").mkdir()
    run = fedhub(site, "call", "hereon.climate.compute_sum", "da=@folder.nc", cwd=tmp_path)
    assert_one_error_line(run, "ArgumentError", "not a regular file", code=2)
    # a broken key store is still a ConfigError (exit 1): the two are told apart
    run = fedhub(site, "call", "hereon.climate.scale", "values=[1]", "--as", "nobody@nowhere")
    assert "ArgumentError" not in run.err and run.code == 1, run.err


def test_call_to_an_unreachable_server_fails_with_one_line(site: Site) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # `ls` connects on its own; `call` through hub.client fails the same way, only slower
    run = fedhub(site, "ls", f"--url=nats://127.0.0.1:{port}")
    assert_one_error_line(run, "TransportError", str(port))


def test_call_needs_to_know_who_calls_when_the_store_holds_several_people(site: Site) -> None:
    run = fedhub(site, "call", "hereon.climate.scale", "values=[1]", FEDHUB_IDENTITY="")
    assert_one_error_line(run, "--as")


def test_call_uses_the_only_person_key_of_the_store(site: Site, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    for path in site.world.store.dir.iterdir():
        if path.name.startswith(("klaus", "site%3A")):
            shutil.copy(path, home / "keys" / path.name)
    run = fedhub(
        site,
        "call",
        "hereon.climate.scale",
        "values=[1]",
        FEDHUB_IDENTITY="",
        FEDHUB_HOME=str(home),
    )
    assert run.code == 0, run.err
    assert run.out.strip() == "[2.0]"


def test_call_shows_no_progress_bar_when_stderr_is_not_a_terminal(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    run = fedhub(site, "call", "hereon.climate.slow_mean", "da=@in.nc", cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.err.splitlines() == [f"request {run.request_id()}"]
    assert float(run.out) == pytest.approx(5.5)


def test_call_draws_a_live_progress_bar_on_a_terminal(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    code, out, text = run_on_terminal(
        [sys.executable, "-m", "hub.cli", "call", "hereon.climate.slow_mean", "da=@in.nc"],
        site.env(),
        cwd=tmp_path,
    )
    assert code == 0
    assert "step 1 of 5" in text
    assert "[####################] 100%" in text
    assert "step 5 of 5" in text
    assert text.endswith("\r\x1b[K")  # the bar is erased at the end
    assert float(out.decode()) == pytest.approx(5.5)


def test_ctrl_c_asks_the_node_to_cancel_and_exits_130(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "call", "hereon.climate.slow_mean", "da=@in.nc", *STEPS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env(),
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "request <id>": the call is on its way
    assert first.startswith("request "), first
    request_id = first.split()[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines() == [f"interrupted; asked hereon to cancel request {request_id}"]

    state: dict[str, object] = {}
    for _ in range(50):  # the cancellation lands at the node's next progress step
        run = fedhub(site, "status", "--site", "hereon", "--json", "--", request_id)
        assert run.code == 0, run.err
        state = json.loads(run.out)
        if state["state"] not in ("received", "accepted", "running"):
            break
        time.sleep(0.1)
    assert state["state"] == "failed"
    assert state["code"] == "cancelled"


# --- fedhub ls --------------------------------------------------------------------------


def test_ls_lists_the_module_and_its_functions(site: Site) -> None:
    run = fedhub(site, "ls")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("hereon.climate  (1 node)  Climate toolbox")
    assert "    hereon.climate.compute_sum" in lines
    assert "    hereon.climate.Station.describe" in lines
    assert "variadic" not in run.out


def test_ls_of_a_site_as_json_names_nodes_and_functions(site: Site) -> None:
    run = fedhub(site, "ls", "hereon", "--json")
    assert run.code == 0, run.err
    (entry,) = json.loads(run.out)
    assert entry["site"] == "hereon"
    assert entry["module"] == "climate"
    assert entry["nodes"] == ["node:hereon/n1"]
    assert "slow_mean" in entry["functions"]


def test_ls_of_a_site_nobody_serves_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "ls", "nosuchsite")
    assert_one_error_line(run, "NotFoundError", "nosuchsite")


def test_ls_of_a_module_shows_signatures_and_summaries(site: Site) -> None:
    run = fedhub(site, "ls", "hereon.climate")
    assert run.code == 0, run.err
    assert run.out.startswith("hereon.climate  served by node:hereon/n1")
    assert "  compute_sum(da: xr.DataArray, dim: str = 'time') -> xr.DataArray" in run.out
    assert "      Sum a data array along one dimension." in run.out
    assert "  slow_mean(da: xr.DataArray, steps: int = 5) -> float" in run.out
    assert "not served: variadic" in run.out


def test_ls_of_an_unknown_module_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "ls", "hereon.nomodule")
    assert_one_error_line(run, "NotFoundError", "hereon.nomodule")


# --- fedhub stub ------------------------------------------------------------------------


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stub_writes_a_client_module_that_calls_the_node(
    site: Site, field: xr.DataArray, tmp_path: Path
) -> None:
    run = fedhub(site, "stub", "hereon.climate", "-o", "climate_client.py", cwd=tmp_path)
    assert run.code == 0, run.err
    assert "wrote climate_client.py" in run.err
    stub = _import(tmp_path / "climate_client.py")
    with connect(site.url, KLAUS, home=site.home) as fed:
        assert stub.scale([1.0, 2.0], client=fed) == [2.0, 4.0]
        assert stub.scale([1.0], factor=5, client=fed) == [5.0]
        total = stub.compute_sum(field, client=fed)
        xr.testing.assert_identical(total, field.sum(dim="time"))
        station = stub.Station("Helgoland", 54.18, 7.89, client=fed)
        assert station.describe() == {"name": "Helgoland", "lat": 54.18, "lon": 7.89}
        stub.use(fed)
        assert stub.aggregate(
            [{"station": "a", "value": 1.0, "time": "2024-01-01T00:00:00Z"}], how="max"
        ) == pytest.approx(1.0)
        stub.use(None)


# --- fedhub status ----------------------------------------------------------------------


def test_status_of_a_finished_request_shows_completed(site: Site) -> None:
    call = fedhub(site, "call", "hereon.climate.scale", "values=[1]")
    assert call.code == 0, call.err
    request_id = call.request_id()
    run = fedhub(site, "status", "--site", "hereon", "--", request_id)
    assert run.code == 0, run.err
    rows = dict(line.split(None, 1) for line in run.out.splitlines())
    assert rows["request"] == request_id
    assert rows["state"] == "completed"
    assert rows["address"] == "hereon.climate.scale"
    assert rows["progress"] == "100%"
    assert re.match(r"stored until \S+Z, hash ", rows["result"]), rows["result"]

    run = fedhub(site, "status", "--site", "hereon", "--json", "--", request_id)
    assert json.loads(run.out)["state"] == "completed"


def test_call_of_a_function_that_raises_fails_with_one_line_and_status_tells_why(
    site: Site,
) -> None:
    call = fedhub(site, "call", "hereon.climate.fail", "message=boom")
    assert_one_error_line(call, "FunctionFailedError", "boom")
    run = fedhub(site, "status", "--site", "hereon", "--", call.request_id())
    assert run.code == 0, run.err
    rows = dict(line.split(None, 1) for line in run.out.splitlines())
    assert rows["state"] == "failed"
    assert rows["code"] == "function_failed"
    assert "RuntimeError" in rows["reason"]  # the message stays encrypted, not logged


# --- fedhub fetch -----------------------------------------------------------------------


def test_fetch_gets_a_stored_result_again_as_json_or_into_a_file(
    site: Site, tmp_path: Path
) -> None:
    call = fedhub(site, "call", "hereon.climate.scale", "values=[1.5, 2]", "factor=3")
    assert call.code == 0, call.err
    rid = call.request_id()
    run = fedhub(site, "fetch", "--site", "hereon", "--json", "--", rid)
    assert run.code == 0, run.err
    assert json.loads(run.out) == [4.5, 6.0]
    out = tmp_path / "again.json"
    run = fedhub(site, "fetch", "--site", "hereon", "--out", str(out), "--", rid)
    assert run.code == 0, run.err
    assert json.loads(out.read_text()) == [4.5, 6.0]


def test_fetch_of_a_failed_call_or_of_someone_elses_fails_with_one_line(site: Site) -> None:
    failed = fedhub(site, "call", "hereon.climate.fail", "message=boom")
    run = fedhub(site, "fetch", "--site", "hereon", "--", failed.request_id())
    assert_one_error_line(run, "NotFoundError", "has no result: it is failed")
    klaus = fedhub(site, "call", "hereon.climate.scale", "values=[1]")
    assert klaus.code == 0, klaus.err
    run = fedhub(site, "fetch", "--site", "hereon", "--", klaus.request_id(), FEDHUB_IDENTITY=EVE)
    assert_one_error_line(run, "NotFoundError", f"of {EVE}")


def test_status_of_an_unknown_or_malformed_id_fails_with_one_line(site: Site) -> None:
    run = fedhub(site, "status", "--site", "hereon", "--", "A" * 22)
    assert_one_error_line(run, "NotFoundError")
    run = fedhub(site, "status", "--site", "hereon", "nonsense")
    assert_one_error_line(run, "ConfigError", "not a request id")


# --- pieces -----------------------------------------------------------------------------


def test_progress_bar_line_shows_fraction_and_message_within_the_width() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, "hereon.climate.slow_mean", width=100)
    bar.update(0.5, "step 5\nof 10")
    line = bar.line()
    assert line.startswith("hereon.climate.slow_mean [##########..........] 50% ")
    assert line.endswith(" step 5 of 10")
    assert stream.getvalue().endswith("\r\x1b[K" + line)
    bar.update(None, "")
    assert "running" in bar.line()
    narrow = ProgressBar(io.StringIO(), "hereon.climate.slow_mean", width=40)
    narrow.update(0.5, "a long message that does not fit")
    assert len(narrow.line()) == 39
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_json_output_turns_numpy_dates_and_bytes_into_json() -> None:
    value = {
        "a": np.arange(3),
        "t": np.datetime64("2024-01-02T03:04:05"),
        "b": b"\x00\x01",
        "f": np.float32(1.5),
    }
    data = json.loads(json.dumps(value, default=jsonable))
    assert data == {"a": [0, 1, 2], "t": "2024-01-02T03:04:05", "b": "AAE=", "f": 1.5}


def test_ls_and_call_find_the_local_nodes_embedded_server_without_a_url(
    site: Site, tmp_path: Path
) -> None:
    env = site.env()
    del env["FEDHUB_URL"]
    run = subprocess.run(
        [sys.executable, "-m", "hub.cli", "ls"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "hereon.climate.compute_sum" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "call",
            "hereon.climate.scale",
            "values=[1, 2]",
            "factor=2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [2.0, 4.0]
