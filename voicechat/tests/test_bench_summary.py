"""The benchmark's verdicts: what passes, and capacity (bench/summary.py)."""

from bench.summary import capacity, passes


def row(target: str, n: int, *, added_p99: float = 1.0, lost: int = 0, ready: bool = True) -> dict:
    return {
        "target": target,
        "n": n,
        "lost": lost,
        "ready_all": ready,
        "overhead": {"p50": 0.1, "p95": 0.5, "p99": added_p99},
    }


def test_a_row_passes_only_without_loss_failed_sessions_or_slow_p99():
    assert passes(row("node", 10), 20)
    assert not passes(row("node", 10, added_p99=20.5), 20)
    assert not passes(row("node", 10, lost=1), 20)
    assert not passes(row("node", 10, ready=False), 20)
    assert not passes({"target": "node", "n": 10, "lost": 0, "ready_all": True}, 20)  # no direct


def test_capacity_is_the_largest_n_reached_without_a_failure_below_it():
    rows = [
        row("gw", 10),
        row("gw", 100),
        row("gw", 200, added_p99=35),
        row("gw", 300),  # a lucky run above a failing N does not count
        row("node", 10, lost=3),
    ]
    assert capacity(rows, "gw", 20) == 100
    assert capacity(rows, "node", 20) is None
    assert capacity(rows, "python", 20) is None
