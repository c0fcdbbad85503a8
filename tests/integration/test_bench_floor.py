"""``scripts/bench_floor.py`` runs from a clone: both round trips complete, the guarded one
really opens what the caller sealed (its echo is checked by the caller), and ``--json``
prints one object with the figure, its baseline and their ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_floor.py"


@pytest.mark.parametrize("executor", ["thread", "inline"])
def test_the_floor_benchmark_prints_both_round_trips_and_their_ratio(executor: str) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--calls", "20", "--warmup", "5", "--rounds", "1",
         "--executor", executor, "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    guarded = figures["guarded_median_ms"]
    assert guarded["measured"] > 0 and guarded["baseline_ms"] > 0
    assert guarded["ratio"] == pytest.approx(guarded["measured"] / guarded["baseline_ms"], 0.01)
    for runs in figures["rounds"].values():
        (only,) = runs
        assert (only["calls"], only["errors"]) == (20, 0)
    assert figures["settings"]["executor"] == executor
