"""Backend runner: module loading, schemas, validation, execution, progress and limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pytest
import xarray as xr
from pydantic import TypeAdapter
from structlog.testing import capture_logs

from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    ConfigError,
    FunctionFailedError,
    NodeError,
    UnknownFunctionError,
    ValidationError,
)
from hub.progress import Progress
from hub.types import DataArray, NDArray, fedhub_type
from node.config import ModuleConfig, load_config
from node.docstrings import parse_docstring
from node.modules import BackendModule, load_module
from node.runner import CancelSignal, Runner

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "modules"
MODES = ["thread", "process", "inline"]


@pytest.fixture(scope="module")
def climate() -> BackendModule:
    return load_module(str(FIXTURES / "climate.py"))


@pytest.fixture
def data() -> xr.DataArray:
    return xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("time", "x"))


def write_module(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def settings(module: BackendModule, **values: Any) -> ModuleConfig:
    """``module``'s entry of a node config, with ``values`` set."""
    return ModuleConfig(name=module.name, path=module.spec, **values)


async def wait_until(condition: Any, rounds: int = 200) -> None:
    """Yield to the loop until ``condition()`` holds (bounded)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# --------------------------------------------------------------------------- docstrings


def test_numpy_docstring_splits_into_summary_description_params_and_returns() -> None:
    doc = parse_docstring(
        """Sum things.

        Longer story
        over two lines.

        Parameters
        ----------
        a, b : int
            The numbers
            to add.
        *rest : int
            More.

        Returns
        -------
        int
            The total.

        Raises
        ------
        ValueError
            If negative.
        """
    )
    assert doc.summary == "Sum things."
    assert doc.description == "Longer story over two lines."
    assert doc.params == {"a": "The numbers to add.", "b": "The numbers to add.", "rest": "More."}
    assert doc.returns == "The total."
    assert doc.raises == {"ValueError": "If negative."}


def test_google_docstring_is_understood_too() -> None:
    doc = parse_docstring(
        """Scale values.

        Args:
            values (list[float]): What to scale.
            factor: The
                multiplier.

        Returns:
            list[float]: The scaled values.
        """
    )
    assert doc.summary == "Scale values."
    assert doc.params == {"values": "What to scale.", "factor": "The multiplier."}
    assert doc.returns == "The scaled values."


def test_missing_or_sectionless_docstrings_do_not_fail() -> None:
    assert parse_docstring(None).summary == ""
    doc = parse_docstring("Just a line.")
    assert (doc.summary, doc.description, doc.params, doc.returns) == ("Just a line.", "", {}, "")


# --------------------------------------------------------------------------- types


def test_plain_science_classes_map_to_binary_schemas_even_when_nested() -> None:
    schema = TypeAdapter(fedhub_type(Optional[list[xr.DataArray]])).json_schema()  # noqa: UP045
    item = schema["anyOf"][0]["items"]
    assert item["x-fedhub-type"] == "xarray.DataArray"
    assert item["contentMediaType"] == "application/x-fedhub-dataarray"
    assert TypeAdapter(fedhub_type(np.ndarray)).json_schema()["x-fedhub-type"] == "numpy.ndarray"
    assert TypeAdapter(fedhub_type(xr.Dataset)).json_schema()["x-fedhub-type"] == "xarray.Dataset"
    assert TypeAdapter(fedhub_type(bytes)).json_schema()["format"] == "binary"
    assert fedhub_type(Annotated[int, "meta"]) == Annotated[int, "meta"]


def test_binary_types_pass_instances_through_and_refuse_lookalikes() -> None:
    array = np.arange(3)
    assert TypeAdapter(NDArray).validate_python(array) is array
    with pytest.raises(Exception, match="instance of ndarray"):
        TypeAdapter(NDArray).validate_python([1, 2, 3])
    with pytest.raises(Exception, match="instance of DataArray"):
        TypeAdapter(DataArray).validate_python(array)
    assert TypeAdapter(fedhub_type(bytes)).validate_python(bytearray(b"ab")) == b"ab"
    with pytest.raises(Exception, match="valid bytes"):
        TypeAdapter(fedhub_type(bytes)).validate_python("ab")


# --------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_coalesces_fast_reports_but_keeps_first_last_and_order() -> None:
    clock = FakeClock()
    seen: list[tuple[float | None, str]] = []
    progress = Progress(lambda f, m: seen.append((f, m)), min_interval=0.05, clock=clock)
    for step in range(1, 101):
        clock.now = step * 0.001  # 100 reports in 0.1 s
        progress.report(step / 100, f"step {step}")
    progress.flush()
    assert seen[0] == (0.01, "step 1")
    assert seen[-1] == (1.0, "step 100")
    assert len(seen) <= 4
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions)


def test_progress_clamps_fractions_and_refuses_nan() -> None:
    seen: list[float | None] = []
    progress = Progress(lambda f, m: seen.append(f), min_interval=0.0)
    progress.report(1.5)
    progress.report(-1)
    progress.report(None, "thinking")
    assert seen == [1.0, 0.0, None]
    with pytest.raises(ValueError, match="NaN"):
        progress.report(math.nan)


def test_progress_tells_the_function_when_it_was_cancelled() -> None:
    progress = Progress()
    assert not progress.cancelled
    progress.cancel()
    assert progress.cancelled


def test_progress_asks_its_stop_condition_and_remembers_a_stop() -> None:
    late = [False]
    progress = Progress(stop_when=lambda: late[0])
    assert not progress.cancelled
    late[0] = True
    assert progress.cancelled
    late[0] = False  # e.g. a clock read again: once stopped, the call stays stopped
    assert progress.cancelled


async def test_an_inline_call_sees_its_deadline_pass_while_it_holds_the_loop(
    climate: BackendModule,
) -> None:
    seen: list[int] = []
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, executor="inline"))
        with pytest.raises(CallTimeoutError):
            await runner.run(
                "climate",
                "slow_mean",
                {"da": xr.DataArray(np.ones(3)), "steps": 400},
                timeout=0.2,
                on_progress=lambda fraction, message: seen.append(1),
            )
    # 400 steps of 0.05 s: stopped at the deadline, long before the last step
    assert len(seen) < 100


# --------------------------------------------------------------------------- introspection


def test_public_functions_and_methods_defined_in_the_module_are_served(
    climate: BackendModule,
) -> None:
    assert {
        "compute_sum",
        "scale",
        "slow_mean",
        "fail",
        "crash",
        "sleep",
        "async_sleep",
        "aggregate",
        "checksum",
        "normalize",
        "Station.describe",
    } <= set(climate.functions)
    served = set(climate.functions)
    assert not served & {"_helper", "Progress", "BaseModel", "Literal", "Aggregation", "Reading"}
    assert not any(name.startswith(("Reading.", "Aggregation.")) for name in served)


def test_variadic_function_is_skipped_with_its_reason(tmp_path: Path) -> None:
    spec = write_module(
        tmp_path,
        "skips_variadic",
        """
        def total(*values: float) -> float:
            return sum(values)

        def options(**kwargs: int) -> int:
            return len(kwargs)

        def first(x: int, /) -> int:
            return x

        def fine(x: int) -> int:
            return x
        """,
    )
    with capture_logs() as logs:
        module = load_module(spec)
    assert set(module.functions) == {"fine"}
    assert "*values" in module.skipped["total"]
    assert "**kwargs" in module.skipped["options"]
    assert "positional-only" in module.skipped["first"]
    assert module.info()["skipped"] == module.skipped
    events = [e for e in logs if e["event"] == "runner.skipped"]
    assert {e["name"] for e in events} == {"total", "options", "first"}


def test_dunder_all_decides_what_is_served(tmp_path: Path, climate: BackendModule) -> None:
    spec = write_module(
        tmp_path,
        "with_all",
        """
        from climate import scale

        __all__ = ["scale", "mine", "LIMIT"]
        LIMIT = 3

        def mine(x: int) -> int:
            return x

        def not_listed(x: int) -> int:
            return x
        """,
    )
    module = load_module(spec)
    assert set(module.functions) == {"scale", "mine"}
    assert "LIMIT" in module.skipped


def test_unresolvable_or_undescribable_types_are_skipped(tmp_path: Path) -> None:
    spec = write_module(
        tmp_path,
        "odd_types",
        """
        from __future__ import annotations

        class Opaque:
            pass

        def unknown(x: NoSuchType) -> int:
            return 1

        def opaque(x: Opaque) -> int:
            return 1
        """,
    )
    module = load_module(spec)
    assert module.functions == {}
    assert "NoSuchType" in module.skipped["unknown"]
    assert "parameter 'x'" in module.skipped["opaque"]


def test_parameter_names_that_clash_with_pydantic_still_work(tmp_path: Path) -> None:
    spec = write_module(
        tmp_path,
        "clashing_names",
        """
        def pick(copy: int, json: str = "x", model_config: bool = False) -> str:
            return f"{copy}{json}{model_config}"
        """,
    )
    fn = load_module(spec).functions["pick"]
    assert set(fn.arguments_schema()["properties"]) == {"copy", "json", "model_config"}
    assert fn.validate_arguments({"copy": 1}) == {"copy": 1, "json": "x", "model_config": False}


def test_argument_schema_carries_docstring_descriptions_and_defaults(
    climate: BackendModule,
) -> None:
    schema = climate.functions["compute_sum"].arguments_schema()
    assert schema["description"].startswith("Sum a data array along one dimension.")
    assert schema["required"] == ["da"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["da"]["description"] == "The field to sum."
    assert schema["properties"]["da"]["x-fedhub-type"] == "xarray.DataArray"
    assert schema["properties"]["dim"] == {
        "default": "time",
        "description": "Name of the dimension to sum over.",
        "title": "Dim",
        "type": "string",
    }
    returns = climate.functions["compute_sum"].return_schema()
    assert returns["x-fedhub-type"] == "xarray.DataArray"
    assert returns["description"] == "The sum, without ``dim``."


def test_scientific_and_structured_types_get_schemas(climate: BackendModule) -> None:
    aggregate = climate.functions["aggregate"].arguments_schema()
    assert aggregate["$defs"]["Aggregation"]["enum"] == ["mean", "max", "min"]
    assert aggregate["$defs"]["Reading"]["properties"]["time"]["format"] == "date-time"
    checksum = climate.functions["checksum"].arguments_schema()["properties"]
    assert checksum["data"]["format"] == "binary"
    assert checksum["algorithm"]["enum"] == ["sum", "xor"]
    normalize = climate.functions["normalize"]
    assert normalize.arguments_schema()["properties"]["values"]["x-fedhub-type"] == "numpy.ndarray"
    assert normalize.return_schema()["x-fedhub-type"] == "numpy.ndarray"


def test_class_methods_take_constructor_and_method_arguments(climate: BackendModule) -> None:
    describe = climate.functions["Station.describe"]
    schema = describe.arguments_schema()
    assert list(schema["properties"]) == ["name", "lat", "lon", "unit"]
    assert schema["required"] == ["name", "lat", "lon"]
    assert schema["properties"]["lat"]["description"] == "Latitude in degrees."
    assert describe.signature_text == (
        "Station(name: str, lat: float, lon: float)"
        ".describe(unit: Literal['deg', 'rad'] = 'deg') -> dict[str, float | str]"
    )
    assert describe.info()["kind"] == "method"


def test_progress_parameter_is_hidden_from_callers(climate: BackendModule) -> None:
    slow = climate.functions["slow_mean"]
    assert slow.takes_progress == "progress"
    assert "progress" not in slow.arguments_schema()["properties"]
    assert "progress" not in slow.signature_text
    with pytest.raises(ValidationError, match="progress: Extra inputs are not permitted"):
        slow.validate_arguments({"da": xr.DataArray([1.0]), "progress": None})


def test_schema_hash_is_blake2b_of_the_canonical_schemas(climate: BackendModule) -> None:
    fn = climate.functions["scale"]
    canonical = json.dumps(
        {"arguments": fn.arguments_schema(), "returns": fn.return_schema()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert fn.schema_hash == hashlib.blake2b(canonical.encode(), digest_size=32).hexdigest()
    assert fn.schema_hash != climate.functions["sleep"].schema_hash


def test_module_info_is_plain_json(climate: BackendModule) -> None:
    info = json.loads(json.dumps(climate.info()))
    assert info["module"] == "climate"
    assert info["doc"].startswith("Climate toolbox")
    assert info["functions"]["async_sleep"]["is_async"] is True
    assert info["functions"]["slow_mean"]["progress"] is True
    assert info["functions"]["scale"]["signature"] == (
        "scale(values: list[float], factor: float = 2.0) -> list[float]"
    )
    assert "variadic" in info["skipped"]


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("def broken(:\n", "SyntaxError"),
        ("import no_such_package_for_fedhub\n", "ModuleNotFoundError"),
        ("raise RuntimeError('bad config')\n", "RuntimeError: bad config"),
    ],
)
def test_module_that_cannot_load_raises_config_error_naming_the_cause(
    tmp_path: Path, source: str, cause: str
) -> None:
    name = f"broken_{abs(hash(source))}"
    spec = write_module(tmp_path, name, source)
    with pytest.raises(ConfigError, match=cause) as info:
        load_module(spec)
    assert name in str(info.value)
    assert "\n" not in info.value.diagnostics()


def test_missing_file_and_unknown_dotted_name_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_module(str(tmp_path / "absent.py"))
    with pytest.raises(ConfigError, match="No module named"):
        load_module("no_such_package_for_fedhub.tools")


# --------------------------------------------------------------------------- validation


def test_bad_arguments_are_listed_field_by_field_in_one_line(climate: BackendModule) -> None:
    with pytest.raises(ValidationError) as info:
        climate.functions["scale"].validate_arguments(
            {"values": [1.0, "x"], "factor": "big", "extra": 1}
        )
    message = info.value.message
    assert "\n" not in message
    assert message.startswith("invalid arguments for climate.scale: ")
    assert "values.1: Input should be a valid number" in message
    assert "factor: Input should be a valid number" in message
    assert "extra: Extra inputs are not permitted" in message
    assert info.value.code == "invalid_arguments"


def test_missing_arguments_and_wrong_binary_types_are_refused(climate: BackendModule) -> None:
    with pytest.raises(ValidationError, match="da: Field required"):
        climate.functions["compute_sum"].validate_arguments({})
    with pytest.raises(ValidationError, match="da: Input should be an instance of DataArray"):
        climate.functions["compute_sum"].validate_arguments({"da": [1, 2]})
    with pytest.raises(ValidationError, match="data: Input should be a valid bytes"):
        climate.functions["checksum"].validate_arguments({"data": "text"})


def test_valid_arguments_are_converted_and_defaults_filled(
    climate: BackendModule, data: xr.DataArray
) -> None:
    args = climate.functions["aggregate"].validate_arguments(
        {
            "readings": [{"station": "a", "value": 1, "time": "2024-01-01T00:00:00Z"}],
            "how": "max",
        }
    )
    reading = args["readings"][0]  # type: ignore[index]
    assert type(reading).__name__ == "Reading"
    assert reading.time == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert args["how"].name == "MAX"  # type: ignore[attr-defined]
    assert args["since"] is None
    same = climate.functions["compute_sum"].validate_arguments({"da": data})
    assert same == {"da": data, "dim": "time"}
    assert same["da"] is data
    raw = climate.functions["checksum"].validate_arguments({"data": b"\x00\xff"})
    assert raw["data"] == b"\x00\xff"


def test_a_result_that_breaks_the_declared_type_is_a_function_failure(
    climate: BackendModule,
) -> None:
    with pytest.raises(FunctionFailedError, match="returned str, declared list\\[float\\]"):
        climate.functions["broken_result"].validate_result("not a list")
    assert climate.functions["scale"].validate_result([1, 2]) == [1.0, 2.0]


# --------------------------------------------------------------------------- execution


@pytest.fixture(params=MODES)
async def runner(request: pytest.FixtureRequest, climate: BackendModule) -> AsyncIterator[Runner]:
    async with Runner() as runner:
        runner.add_module(
            climate, settings(climate, executor=request.param, max_workers=2, max_concurrency=2)
        )
        yield runner


async def test_sync_functions_return_their_results(runner: Runner, data: xr.DataArray) -> None:
    assert await runner.run("climate", "scale", {"values": [1, 2]}, timeout=30) == [2.0, 4.0]
    total = await runner.run("climate", "compute_sum", {"da": data}, timeout=30)
    assert isinstance(total, xr.DataArray)
    assert total.values.tolist() == [3.0, 5.0, 7.0]
    described = await runner.run(
        "climate", "Station.describe", {"name": "List", "lat": 55.0, "lon": 8.4}, timeout=30
    )
    assert described == {"name": "List", "lat": 55.0, "lon": 8.4}
    assert runner.stats()["climate"]["completed"] == 3


async def test_async_functions_run_on_the_event_loop(runner: Runner) -> None:
    assert await runner.run("climate", "async_sleep", {"seconds": 0}, timeout=30) == 0.0


async def test_progress_reports_arrive_in_order_with_the_final_one(
    runner: Runner, data: xr.DataArray
) -> None:
    seen: list[tuple[float | None, str]] = []
    result = await runner.run(
        "climate",
        "slow_mean",
        {"da": data, "steps": 6},
        timeout=30,
        on_progress=lambda f, m: seen.append((f, m)),
    )
    assert result == 2.5
    assert seen[0] == (1 / 6, "step 1 of 6")
    assert seen[-1] == (1.0, "step 6 of 6")
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions)


async def test_function_raising_becomes_function_failed(runner: Runner) -> None:
    with capture_logs() as logs, pytest.raises(FunctionFailedError) as info:
        await runner.run("climate", "fail", {"message": "no data for 1850"}, timeout=30)
    assert info.value.message == "climate.fail raised RuntimeError: no data for 1850"
    assert "Traceback" not in info.value.message
    assert any(e["event"] == "runner.function_failed" for e in logs)
    assert runner.stats()["climate"]["failed"] == 1


async def test_invalid_arguments_are_refused_before_running(runner: Runner) -> None:
    with pytest.raises(ValidationError, match="seconds: Input should be a valid number"):
        await runner.run("climate", "sleep", {"seconds": "long"})
    assert runner.stats()["climate"]["completed"] == 0


async def test_unknown_module_or_function_is_refused(runner: Runner) -> None:
    with pytest.raises(UnknownFunctionError, match="no function 'nope'"):
        await runner.run("climate", "nope", {})
    with pytest.raises(UnknownFunctionError, match="'weather' is not served"):
        await runner.run("weather", "scale", {})
    with pytest.raises(UnknownFunctionError):
        await runner.run("climate", "_helper", {})


async def test_timeout_raises_call_timeout_and_the_runner_recovers(
    runner: Runner, data: xr.DataArray
) -> None:
    with pytest.raises(CallTimeoutError, match=r"climate.slow_mean timed out after 0.2 s"):
        await runner.run("climate", "slow_mean", {"da": data, "steps": 400}, timeout=0.2)
    # Threads stop cooperatively (progress.cancelled), processes are killed: the slot frees.
    await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 0, rounds=500)
    assert runner.stats()["climate"]["timed_out"] == 1
    assert await runner.run("climate", "scale", {"values": [1]}, timeout=30) == [2.0]


async def test_cancel_event_stops_a_running_call(runner: Runner, data: xr.DataArray) -> None:
    cancel = CancelSignal()
    with pytest.raises(CallCancelledError, match=r"climate\.slow_mean was cancelled"):
        await runner.run(
            "climate",
            "slow_mean",
            {"da": data, "steps": 400},
            timeout=30,
            on_progress=lambda f, m: cancel.set(),
            cancel=cancel,
        )
    await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 0, rounds=500)
    assert runner.stats()["climate"]["cancelled"] == 1
    assert await runner.run("climate", "scale", {"values": [1]}, timeout=30) == [2.0]


async def test_an_already_cancelled_call_never_starts(runner: Runner) -> None:
    cancel = CancelSignal()
    cancel.set()
    with pytest.raises(CallCancelledError, match="before it started"):
        await runner.run("climate", "scale", {"values": [1]}, cancel=cancel)


async def test_async_function_timeout_cancels_the_coroutine(runner: Runner) -> None:
    with pytest.raises(CallTimeoutError):
        await runner.run("climate", "async_sleep", {"seconds": 30}, timeout=0.05)
    assert runner.stats()["climate"]["in_flight"] == 0


async def test_crashed_worker_process_fails_the_call_and_is_replaced(
    climate: BackendModule,
) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, executor="process", max_workers=1))
        with pytest.raises(FunctionFailedError, match="worker process died"):
            await runner.run("climate", "crash", {}, timeout=30)
        assert await runner.run("climate", "scale", {"values": [2]}, timeout=30) == [4.0]
        stats = runner.stats()["climate"]
        assert (stats["failed"], stats["completed"], stats["in_flight"]) == (1, 1, 0)


async def test_timed_out_worker_process_is_killed_and_replaced(climate: BackendModule) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, executor="process", max_workers=1))
        with capture_logs() as logs, pytest.raises(CallTimeoutError):
            await runner.run("climate", "sleep", {"seconds": 60}, timeout=0.2)
        assert [e["reason"] for e in logs if e["event"] == "runner.worker_killed"] == ["timeout"]
        # With the only worker still asleep this call could not finish in time.
        assert await runner.run("climate", "sleep", {"seconds": 0}, timeout=20) == 0.0


async def test_process_mode_carries_models_and_enums_across(climate: BackendModule) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, executor="process", max_workers=1))
        readings = [
            {"station": "a", "value": 1.0, "time": "2024-01-01T00:00:00Z"},
            {"station": "b", "value": 3.0, "time": "2024-01-02T00:00:00Z"},
        ]
        result = await runner.run(
            "climate", "aggregate", {"readings": readings, "how": "max"}, timeout=30
        )
        assert result == 3.0
        array = await runner.run("climate", "normalize", {"values": np.array([2.0, 4.0])})
        assert isinstance(array, np.ndarray)
        assert array.tolist() == [0.0, 1.0]


async def test_calls_beyond_the_queue_limit_are_refused_as_busy(
    climate: BackendModule,
) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, max_workers=1, max_concurrency=1, max_queue=1))
        stop = CancelSignal()

        def call() -> asyncio.Task[object]:
            return asyncio.create_task(
                runner.run("climate", "async_sleep", {"seconds": 30}, cancel=stop)
            )

        running = call()
        await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 1)
        waiting = call()
        await wait_until(lambda: runner.stats()["climate"]["queued"] == 1)
        with pytest.raises(NodeError, match="module climate is busy: 1 calls queued"):
            await runner.run("climate", "scale", {"values": [1]})
        assert runner.stats()["climate"]["rejected"] == 1
        stop.set()
        results = await asyncio.gather(running, waiting, return_exceptions=True)
        assert all(isinstance(r, CallCancelledError) for r in results)
        assert runner.stats()["climate"]["in_flight"] == 0


async def test_queued_call_times_out_while_waiting(climate: BackendModule) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, max_workers=1, max_concurrency=1))
        stop = CancelSignal()
        running = asyncio.create_task(
            runner.run("climate", "async_sleep", {"seconds": 30}, cancel=stop)
        )
        await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 1)
        with pytest.raises(CallTimeoutError, match="while queued"):
            await runner.run("climate", "scale", {"values": [1]}, timeout=0.05)
        assert runner.stats()["climate"]["queued"] == 0
        stop.set()
        with pytest.raises(CallCancelledError):
            await running


async def test_a_closed_runner_refuses_calls(climate: BackendModule) -> None:
    runner = Runner()
    runner.add_module(climate)
    await runner.aclose()
    await runner.aclose()
    with pytest.raises(NodeError, match="closed"):
        await runner.run("climate", "scale", {"values": [1]})


def test_module_config_rejects_nonsense_naming_the_key(climate: BackendModule) -> None:
    with pytest.raises(ConfigError, match=r"^module config: executor: "):
        settings(climate, executor="gpu")
    with pytest.raises(ConfigError, match=r"^module config: max_workers: "):
        settings(climate, max_workers=0)
    with pytest.raises(ConfigError, match=r"^module config: name: "):
        ModuleConfig(name="no-dashes", path="climate.py")
    assert settings(climate, executor="process", max_workers=2, max_concurrency=8).concurrency == 2
    assert settings(climate, max_workers=2, max_concurrency=8).concurrency == 8


async def test_a_module_runs_with_its_own_config_only(climate: BackendModule) -> None:
    async with Runner() as runner:
        with pytest.raises(ConfigError, match="config of module 'other'"):
            runner.add_module(climate, ModuleConfig(name="other", path="other.py"))
        runner.add_module(climate)
        with pytest.raises(ConfigError, match="already served"):
            runner.add_module(climate)
        assert await runner.run("climate", "scale", {"values": [1]}, timeout=30) == [2.0]


def test_a_node_config_file_names_the_bad_module_key(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[node]\nsite = "hereon"\n\n'
        '[[modules]]\nname = "climate"\npath = "climate.py"\nexecutor = "gpu"\n'
    )
    with pytest.raises(ConfigError, match=r"site\.toml: modules\.0\.executor: Input should be"):
        load_config(path)
    path.write_text(
        '[node]\nsite = "hereon"\n\n'
        '[[modules]]\nname = "climate"\npath = "climate.py"\nprogress_interval = 0.5\n'
    )
    (module,) = load_config(path).modules
    assert (module.progress_interval, module.concurrency, module.max_queue) == (0.5, 8, 1000)


async def test_a_sync_call_waiting_behind_an_async_call_runs_once_the_slot_is_free(
    climate: BackendModule,
) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, max_workers=1, max_concurrency=1))
        stop = CancelSignal()
        running = asyncio.create_task(
            runner.run("climate", "async_sleep", {"seconds": 30}, cancel=stop)
        )
        await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 1)
        waiting = asyncio.create_task(runner.run("climate", "scale", {"values": [1]}))
        await wait_until(lambda: runner.stats()["climate"]["queued"] == 1)
        stop.set()
        with pytest.raises(CallCancelledError):
            await running
        assert await waiting == [2.0]
        assert runner.stats()["climate"]["in_flight"] == 0


async def test_the_queue_limit_counts_sync_and_async_calls_waiting_alike(
    climate: BackendModule,
) -> None:
    async with Runner() as runner:
        runner.add_module(climate, settings(climate, max_workers=1, max_concurrency=1, max_queue=1))
        stop = CancelSignal()
        running = asyncio.create_task(
            runner.run("climate", "async_sleep", {"seconds": 30}, cancel=stop)
        )
        await wait_until(lambda: runner.stats()["climate"]["in_flight"] == 1)
        waiting = asyncio.create_task(runner.run("climate", "scale", {"values": [1]}, cancel=stop))
        await wait_until(lambda: runner.stats()["climate"]["queued"] == 1)
        with pytest.raises(NodeError, match="module climate is busy: 1 calls queued"):
            await runner.run("climate", "async_sleep", {"seconds": 1})
        stop.set()
        results = await asyncio.gather(running, waiting, return_exceptions=True)
        assert all(isinstance(r, CallCancelledError) for r in results)
        assert runner.stats()["climate"]["queued"] == 0


async def test_sync_calls_beyond_the_limit_run_one_after_another_without_the_loop(
    tmp_path: Path,
) -> None:
    source = '''
    import time
    from pathlib import Path


    def tick(path: str, gate: str) -> int:
        """Append a line to ``path`` once ``gate`` exists.

        Parameters
        ----------
        path
            A file.
        gate
            A file that lets the call go on.
        """
        for _ in range(3000):
            if Path(gate).exists():
                break
            time.sleep(0.01)
        with Path(path).open("a") as fh:
            fh.write("x\\n")
        return 1
    '''
    module = load_module(write_module(tmp_path, "ticks", source))
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    args = {"path": str(marks), "gate": str(gate)}
    async with Runner() as runner:
        runner.add_module(module, settings(module, max_workers=1, max_concurrency=1))
        calls = [asyncio.create_task(runner.run("ticks", "tick", args)) for _ in range(3)]
        for _ in range(1000):  # until each call has reached the thread pool
            if runner.stats()["ticks"]["queued"] == 2:  # one holds the slot, two wait
                break
            await asyncio.sleep(0.01)
        gate.touch()
        # the loop is held here: only the worker thread can pass the slot on
        assert _lines_within(marks, 3, seconds=30) == 3
        assert await asyncio.gather(*calls) == [1, 1, 1]


def _lines_within(path: Path, count: int, *, seconds: float) -> int:
    """Lines in ``path`` once it has ``count``, or after ``seconds`` (blocking the caller)."""
    lines = 0
    for _ in range(int(seconds * 100)):
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        if lines >= count:
            break
        time.sleep(0.01)
    return lines
