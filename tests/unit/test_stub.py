"""The typed client generator (``hub.stub``) on real module infos."""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import xarray as xr

from hub.errors import ConfigError
from hub.stub import generate_stub
from node.modules import load_module

CLIMATE = Path(__file__).resolve().parents[1] / "fixtures" / "modules" / "climate.py"

#: The project's own lint selection, applied to the generated file on its own.
PROJECT_RULES = "E,F,W,I,UP,B,SIM,RUF,C4,N,RET,PTH,ASYNC"


class Recorder:
    """Stands in for a SyncClient: records calls, answers with a fixed value."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, float | None, dict[str, Any]]] = []

    def call(self, address: str, /, *, timeout: float | None = None, **kwargs: Any) -> Any:
        self.calls.append((address, timeout, kwargs))
        return self.answer


@pytest.fixture(scope="module")
def climate_info() -> dict[str, Any]:
    return load_module(str(CLIMATE), name="climate").info()


def write_and_import(source: str, path: Path) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stub(climate_info: dict[str, Any], tmp_path: Path) -> ModuleType:
    source = generate_stub(climate_info, site="hereon", node="node:hereon/n1")
    return write_and_import(source, tmp_path / "climate_client.py")


def ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    path = str(found) if found.exists() else shutil.which("ruff")
    if path is None:  # a test dependency (pyproject's test extra): missing is a broken setup
        pytest.fail("ruff is not installed: install the test extra (pip install -e '.[test]')")
    return path


def assert_ruff_clean(path: Path, *rules: str) -> None:
    """``ruff check`` (default rules, or ``rules`` with the project's own ignores) and
    ``ruff format --check`` pass."""
    # ASYNC109: a call's timeout is part of its public API (pyproject says why)
    select = ["--select", ",".join(rules), "--ignore", "ASYNC109"] if rules else []
    for command in (["check", *select], ["format", "--check"]):
        result = subprocess.run(  # from the file's folder, where `hub` is an installed package
            [ruff(), *command, "--isolated", "--no-cache", path.name],
            capture_output=True,
            text=True,
            check=False,
            cwd=path.parent,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_generated_client_passes_ruff_with_default_and_project_rules(
    climate_info: dict[str, Any], tmp_path: Path
) -> None:
    for flavour in ("sync", "async"):
        path = tmp_path / f"climate_{flavour}.py"
        path.write_text(generate_stub(climate_info, site="hereon", flavour=flavour))
        assert_ruff_clean(path)
        assert_ruff_clean(path, PROJECT_RULES)


def test_every_served_function_becomes_a_typed_function(stub: ModuleType) -> None:
    assert set(stub.__all__) == {
        "Station",
        "aggregate",
        "async_sleep",
        "broken_result",
        "checksum",
        "compute_sum",
        "crash",
        "fail",
        "normalize",
        "scale",
        "sleep",
        "slow_mean",
        "connect",
        "use",
    }
    assert not hasattr(stub, "variadic")  # skipped by the node, so not in the stub
    assert "variadic" in (stub.__doc__ or "")


def test_parameters_keep_their_names_defaults_and_types(stub: ModuleType) -> None:
    sig = inspect.signature(stub.compute_sum)
    assert list(sig.parameters) == ["da", "dim", "client", "timeout"]
    assert sig.parameters["dim"].default == "time"
    assert sig.parameters["client"].kind is inspect.Parameter.KEYWORD_ONLY
    hints = typing.get_type_hints(stub.compute_sum)
    assert hints["da"] is xr.DataArray
    assert hints["dim"] is str
    assert hints["return"] is xr.DataArray

    assert typing.get_type_hints(stub.normalize)["values"] is np.ndarray
    assert typing.get_type_hints(stub.scale)["values"] == list[float]
    assert inspect.signature(stub.scale).parameters["factor"].default == 2.0
    assert typing.get_type_hints(stub.checksum)["algorithm"] == typing.Literal["sum", "xor"]


def test_progress_parameter_is_not_part_of_the_stub(stub: ModuleType) -> None:
    assert list(inspect.signature(stub.slow_mean).parameters) == [
        "da",
        "steps",
        "client",
        "timeout",
    ]


def test_types_the_client_cannot_import_come_from_the_json_schema(stub: ModuleType) -> None:
    import datetime

    hints = typing.get_type_hints(stub.aggregate)
    assert hints["readings"] == list[dict[str, Any]]  # a pydantic model: its fields as a dict
    assert hints["how"] == typing.Literal["mean", "max", "min"]  # an Enum: its values
    assert hints["since"] == datetime.datetime | None
    assert inspect.signature(stub.aggregate).parameters["how"].default == "mean"


def test_docstrings_carry_summary_parameters_and_returns(stub: ModuleType) -> None:
    doc = inspect.getdoc(stub.compute_sum) or ""
    assert doc.startswith("Sum a data array along one dimension.")
    assert "Missing values are skipped." in doc
    assert "da : xarray.DataArray\n    The field to sum." in doc
    assert "dim : str, optional" in doc
    assert "The sum, without ``dim``." in doc
    assert "hereon.climate.compute_sum" in doc


def test_functions_call_the_remote_address_with_keyword_arguments(stub: ModuleType) -> None:
    client = Recorder(answer=[2.0])
    assert stub.scale([1.0], client=client, timeout=7) == [2.0]
    assert client.calls == [("hereon.climate.scale", 7, {"values": [1.0], "factor": 2.0})]


def test_a_class_becomes_a_class_whose_methods_send_the_constructor_arguments(
    stub: ModuleType,
) -> None:
    client = Recorder(answer={"name": "x"})
    station = stub.Station("Helgoland", 54.2, 7.9, client=client)
    assert list(inspect.signature(stub.Station).parameters) == ["name", "lat", "lon", "client"]
    assert station.describe(unit="rad") == {"name": "x"}
    assert client.calls == [
        (
            "hereon.climate.Station.describe",
            None,
            {"name": "Helgoland", "lat": 54.2, "lon": 7.9, "unit": "rad"},
        )
    ]


def test_the_module_default_client_is_used_without_client_argument(stub: ModuleType) -> None:
    client = Recorder(answer=1.5)
    stub.use(client)
    try:
        assert stub.sleep(1.5) == 1.5
    finally:
        stub.use(None)
    assert client.calls == [("hereon.climate.sleep", None, {"seconds": 1.5})]


ODD_MODULE = '''
"""Odd names and defaults.\\\\ With a backslash and \\"\\"\\" quotes."""

import datetime as dt


def connect(timeout: float, client: str = "c", when: dt.datetime = dt.datetime(2020, 1, 1),
            xs: list[int] = [1, 2], ratio: float = float("inf")) -> str:
    """Take names the stub uses itself."""
    return client


def sorted(values: list[float]) -> float:
    """Shadow a builtin the stub uses."""
    return values[0]


def meanOf(values: list[float]) -> float:
    """Keep a camelCase name as it is."""
    return sum(values) / len(values)


def defaults(when: dt.datetime = dt.datetime(2020, 1, 1), xs: list[int] = [1, 2],
             ratio: float = float("inf"), n: int = 3) -> str:
    """Defaults that JSON cannot carry as Python literals of their type."""
    return "ok"
'''


def test_names_the_stub_uses_itself_and_unwritable_defaults_are_handled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "odd_names.py"
    path.write_text(ODD_MODULE)
    info = load_module(str(path), name="odd_names").info()
    source = generate_stub(info, site="lab")
    stub = write_and_import(source, tmp_path / "odd_client.py")
    assert_ruff_clean(tmp_path / "odd_client.py")
    # the remote function named `connect` does not hide the stub's own connect()
    assert {"connect_", "sorted_", "meanOf", "defaults"} <= set(stub.__all__)
    sig = inspect.signature(stub.connect_)
    assert list(sig.parameters) == [
        "timeout",
        "client",
        "when",
        "xs",
        "ratio",
        "client_",
        "timeout_",
    ]
    assert sig.parameters["client"].default == "c"
    client = Recorder(answer="ok")
    # hub.client's call() takes `timeout` as its own option, so a remote parameter of that
    # name cannot travel yet: the stub says so instead of mixing the two up
    with pytest.raises(TypeError, match="argument named 'timeout'"):
        stub.connect_(1.0, client="d", client_=client, timeout_=3)
    assert client.calls == []
    assert "backslash" in (stub.__doc__ or "")

    sig = inspect.signature(stub.defaults)
    assert repr(sig.parameters["when"].default) == "<node default>"
    assert repr(sig.parameters["xs"].default) == "<node default>"
    assert repr(sig.parameters["ratio"].default) == "<node default>"
    assert sig.parameters["n"].default == 3
    assert stub.defaults(client=client) == "ok"
    # left-out defaults are not sent: the node applies the function's own
    assert client.calls == [("lab.odd_names.defaults", None, {"n": 3})]


def test_an_unreadable_signature_falls_back_to_keyword_only_schema_types(
    climate_info: dict[str, Any], tmp_path: Path
) -> None:
    info = dict(climate_info)
    functions = dict(info["functions"])
    functions["scale"] = {**functions["scale"], "signature": "scale(<broken"}
    functions["Station.describe"] = {**functions["Station.describe"], "signature": "??"}
    info["functions"] = functions
    stub = write_and_import(generate_stub(info, site="hereon"), tmp_path / "fallback.py")
    params = inspect.signature(stub.scale).parameters
    assert list(params) == ["values", "factor", "client", "timeout"]  # schema order
    assert params["factor"].default == 2.0
    assert typing.get_type_hints(stub.scale)["values"] == list[float]
    # a method's constructor and own arguments are mixed: keyword-only, so order is moot
    params = inspect.signature(stub.station_describe).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    client = Recorder()
    stub.station_describe(name="x", lat=1.0, lon=2.0, client=client)
    assert client.calls[0][0] == "hereon.climate.Station.describe"
    assert client.calls[0][2] == {"name": "x", "lat": 1.0, "lon": 2.0, "unit": "deg"}


def test_info_without_site_or_functions_is_refused(climate_info: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no site"):
        generate_stub(climate_info)
    with pytest.raises(ConfigError, match="no functions"):
        generate_stub({"module": "m"}, site="s")
