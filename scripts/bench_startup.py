"""How long the ``fedhub`` command takes to start: ``--version`` and ``--help``, and the
import of ``hub.cli``, next to the baseline of the interpreter starting and doing nothing
(``python -c pass``) measured in the same run, interleaved.

Each figure is the median wall time of ``--runs`` fresh processes; the target of
``--version`` and ``--help`` is 150 ms (issue 11). The ratio says how much of that is
fedhub's own: on a busy machine every figure, the baseline included, grows.

With ``--call``, also ``fedhub call`` of a small function on a local dev node (the one
``fedhub serve`` starts), next to its baseline: the same call's latency inside one process
plus ``python -c pass``; the target is at most twice the call's latency plus the
interpreter's start. The in-process call is made once per round of the ``fedhub call``
runs, as long after the previous call as theirs (every process on the path has idled for
a command's start-up, as before each ``fedhub call``); the latency of calls made back to
back, warmer by that, is given too (``call_latency_back_to_back_ms``). The call goes
through the resident agent (docs/agent.md), started before the runs and stopped after;
``fedhub call (no agent)`` is the same call with ``FEDHUB_AGENT=off``, fedhub imported and
connected in every process.

fedhub's own modules are byte-compiled first, as an installed package is (pip compiles at
install): with ``PYTHONDONTWRITEBYTECODE`` set, a module edited since its last ``.pyc``
would otherwise be compiled again in every process measured.

Usage: ``python scripts/bench_startup.py [--runs 20] [--call] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import figure, load_average

TARGET_MS = 150.0


def fedhub_command() -> list[str]:
    """The installed ``fedhub`` script next to this interpreter (else ``python -m hub.cli``)."""
    script = Path(sys.executable).parent / "fedhub"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hub.cli"]


def wall_ms(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env
    )
    return (time.perf_counter() - started) * 1000.0


def measure(runs: int) -> dict[str, Any]:
    fedhub = fedhub_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fedhub --version": [*fedhub, "--version"],
        "fedhub --help": [*fedhub, "--help"],
        "import hub.cli": [sys.executable, "-c", "import hub.cli"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # warm the file cache once
        wall_ms(command)
    load_before = load_average()
    for _ in range(runs):  # interleaved: a load spike hits every figure alike
        for name, command in commands.items():
            times[name].append(wall_ms(command))
    load = {"start": load_before, "end": load_average()}
    base = statistics.median(times["python -c pass"])
    figures = {}
    for name in ("fedhub --version", "fedhub --help", "import hub.cli"):
        value = statistics.median(times[name])
        targeted = name != "import hub.cli"
        figures[name] = figure(
            value,
            "ms",
            "python -c pass",
            base,
            target=f"<= {TARGET_MS:g} ms" if targeted else None,
            met=value <= TARGET_MS if targeted else None,
            load=load,
            baseline_load=load,
        )
    return {"runs": runs, "figures": figures}


MODULE = "def echo(x: int) -> int:\n    return x\n"


def measure_call(runs: int, base_ms: float) -> dict[str, dict[str, Any]]:
    """``fedhub call dev.bench.echo x=1`` through the agent and without it, against the
    in-process call + interpreter start."""
    import os
    import tempfile

    from hub.serve import start_dev_node
    from hub.sync_client import connect

    with tempfile.TemporaryDirectory(prefix="fedhub-bench-") as folder:
        path = Path(folder) / "bench.py"
        path.write_text(MODULE)
        node = start_dev_node(path)
        try:
            env = {**os.environ, "FEDHUB_HOME": str(node.home), "FEDHUB_AGENT": "on"}
            env.pop("FEDHUB_URL", None)
            command = [*fedhub_command(), "call", "dev.bench.echo", "x=1"]
            in_process = {**env, "FEDHUB_AGENT": "off"}
            with connect(home=node.home) as fed:

                def one_call() -> float:
                    started = time.perf_counter()
                    fed.call("dev.bench.echo", x=1)
                    return (time.perf_counter() - started) * 1000.0

                one_call()  # warm: module info, streams
                back_to_back = [one_call() for _ in range(runs)]
                agent = [*fedhub_command(), "agent"]
                subprocess.run([*agent, "start"], env=env, check=True, capture_output=True)
                try:
                    subprocess.run(command, env=env, check=True, capture_output=True)  # warm
                    walls: dict[str, list[float]] = {"agent": [], "in-process": []}
                    latency = []
                    load_before = load_average()
                    for _ in range(runs):  # interleaved, as in measure()
                        for name, environment in (("agent", env), ("in-process", in_process)):
                            walls[name].append(wall_ms(command, environment))
                        latency.append(one_call())  # as often, and as long after the last
                    load = {"start": load_before, "end": load_average()}
                finally:
                    subprocess.run([*agent, "stop"], env=env, check=False, capture_output=True)
        finally:
            node.stop()
    call_ms = statistics.median(latency)
    baseline = call_ms + base_ms
    target = 2 * call_ms + base_ms
    figures = {}
    for name, label in (("agent", "fedhub call"), ("in-process", "fedhub call (no agent)")):
        value = statistics.median(walls[name])
        figures[label] = figure(
            value,
            "ms",
            "call latency in one process + python -c pass",
            baseline,
            target=f"<= 2 x call latency + interpreter start ({target:.0f} ms)",
            met=value <= target,
            load=load,
            baseline_load=load,
        )
        figures[label]["call_latency_ms"] = round(call_ms, 3)
        figures[label]["call_latency_back_to_back_ms"] = round(statistics.median(back_to_back), 3)
    return figures


def compile_fedhub() -> None:
    """Byte-compile ``hub`` and ``node`` where this interpreter imports them from."""
    import compileall
    import importlib.util

    for package in ("hub", "node"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                compileall.compile_dir(folder, quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="processes per figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--call", action="store_true", help="also fedhub call of a small function (dev node)"
    )
    args = parser.parse_args()
    compile_fedhub()
    result = measure(max(1, args.runs))
    if args.call:
        base = result["figures"]["fedhub --version"]["baseline"]["value"]
        result["figures"].update(measure_call(max(1, args.runs), base))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, fig in result["figures"].items():
        value, base = fig["figure"]["value"], fig["baseline"]["value"]
        target = f"  target {fig['target']}: {'met' if fig['met'] else 'MISSED'}"
        print(
            f"{name:<23} {value:7.1f} ms   {fig['baseline']['name']} {base:6.1f} ms   ratio "
            f"{fig['ratio']:.2f}{target if fig['target'] else ''}"
        )
        if "call_latency_ms" in fig:
            print(
                f"{'':<23} (the call's latency: {fig['call_latency_ms']:.2f} ms made as often as "
                f"the commands, {fig['call_latency_back_to_back_ms']:.2f} ms back to back)"
            )
    print(f"(median of {result['runs']} runs each; load average {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
