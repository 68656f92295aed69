"""bench/run.py end to end, small: frames are counted, loss is caught, a dead target fails the run.

These run the real harness (../shared/bench) against real servers for a couple of seconds; the
numbers they produce are not checked (speed belongs in BENCHMARKS.md), only the bookkeeping.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import DEFAULT_HARNESS, ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEFAULT_HARNESS / "loadgen.py").exists(),
        reason="shared harness not beside the project",
    ),
]

# More sessions than a user may hold by default: the bench must lift that limit too.
QUICK = ["--ns", "5", "--duration", "2", "--repeat", "1", "--quiet-wait-s", "0", "--nice", "0"]
LOSSY = f"lossy={sys.executable} {Path(__file__).parent / 'lossy_relay.py'} {{port}} {{upstream}}"


def bench(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", *QUICK, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = out / "summary.json"
    data = json.loads(summary.read_text()) if summary.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


def test_every_frame_is_counted_through_the_gateway(tmp_path):
    code, summary, output = bench(tmp_path, "--targets", "direct,gw-uvicorn")
    assert code == 0, output
    rows = {r["target"]: r for r in summary["rows"]}
    for target in ("direct", "gw-uvicorn"):
        lg = json.loads((tmp_path / "results" / f"{target}-n5.loadgen.json").read_text())
        # 5 sessions x 2 s of 40 ms chunks, each echoed back through the target
        assert lg["connections_ready"] == 5 and lg["frames_sent"] == 250
        assert lg["frames_received"] == 250 and rows[target]["lost"] == 0
    assert rows["gw-uvicorn"]["overhead"]["p99"] is not None
    assert summary["capacity"]["gw-uvicorn"] == 5


def test_a_relay_that_drops_frames_is_reported_with_loss_and_no_capacity(tmp_path):
    code, summary, output = bench(tmp_path, "--targets", "direct,lossy", "--target", LOSSY)
    assert code == 0, output
    lossy = next(r for r in summary["rows"] if r["target"] == "lossy")
    assert lossy["lost"] == 125  # every other append of 250
    assert "loss" in lossy["flags"]
    assert summary["capacity"]["lossy"] is None


def test_a_target_that_never_listens_fails_the_run(tmp_path):
    code, summary, output = bench(
        tmp_path, "--targets", "direct,dead", "--target", "dead=false", "--start-timeout", "3"
    )
    assert code == 1
    assert "dead did not open port" in output and "FAILED runs: dead N=5" in output
