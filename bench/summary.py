"""Medians per (target, N), relay overhead over `direct`, per-conversation cost, and capacity."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def harness_report(harness: Path):
    """The shared harness's report.py, imported from where it lives."""
    spec = importlib.util.spec_from_file_location("harness_report", harness / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def passes(row: dict, max_added_p99_ms: float) -> bool:
    """A (target, N) row carries its load: every session streamed, nothing lost, p99 added ok."""
    overhead = row.get("overhead") or {}
    added = overhead.get("p99") if row["target"] != "direct" else 0.0
    return (
        row.get("ready_all", False)
        and row.get("lost") == 0
        and added is not None
        and added <= max_added_p99_ms
    )


def capacity(rows: list[dict], target: str, max_added_p99_ms: float) -> int | None:
    """The largest N such that this N and every smaller N measured pass (None: not even the
    smallest). Requiring all smaller N to pass keeps one lucky run from inflating the figure."""
    best = None
    for row in sorted((r for r in rows if r["target"] == target), key=lambda r: r["n"]):
        if not passes(row, max_added_p99_ms):
            break
        best = row["n"]
    return best


def enrich(res: dict, rows: list[dict]) -> list[dict]:
    """Add to each summary row: all sessions ready?, per-conversation CPU and RSS, noise."""
    by_key: dict = {}
    for run in res["runs"]:
        if not run.get("failed"):
            by_key.setdefault((run["target"], run["n"]), []).append(run)
    for row in rows:
        runs = by_key.get((row["target"], row["n"]), [])
        row["ready_all"] = bool(runs) and all(
            r["loadgen"]["connections_ready"] == r["loadgen"]["connections_attempted"] for r in runs
        )
        row["errors"] = {k: v for r in runs for k, v in r["loadgen"]["errors"].items()}
        if row.get("relay_cpu") is not None:
            row["cpu_per_conv"] = round(row["relay_cpu"] / row["n"], 3)
        if row.get("relay_rss") is not None:
            row["rss_per_conv_kb"] = round(1024 * row["relay_rss"] / row["n"], 1)
    return rows


def marginal_rss_kb(rows: list[dict], target: str, up_to_n: int | None) -> float | None:
    """Memory each extra conversation costs: peak RSS growth from the smallest N to `up_to_n`
    (the capacity: beyond it, backlogged frames inflate RSS)."""
    mine = sorted(
        (
            r
            for r in rows
            if r["target"] == target
            and r.get("relay_rss")
            and up_to_n is not None
            and r["n"] <= up_to_n
        ),
        key=lambda r: r["n"],
    )
    if len(mine) < 2 or mine[-1]["n"] == mine[0]["n"]:
        return None
    grown = mine[-1]["relay_rss"] - mine[0]["relay_rss"]
    return round(1024 * grown / (mine[-1]["n"] - mine[0]["n"]), 1)


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(
    rows: list[dict], caps: dict, meta: dict, max_added_p99_ms: float, marginal: dict
) -> str:
    out = [
        f"Run {meta.get('date_utc')} on {meta.get('nproc')} CPUs; load average at start "
        f"{', '.join(f'{x:.2f}' for x in meta.get('loadavg_start', []))}; "
        f"{meta.get('duration_s')} s per run, {meta.get('repeat')} interleaved repeat(s), medians.",
        f"Command: `{meta.get('command')}`",
        "",
        "| target | N | RTT p50 / p95 / p99 ms | added p50 / p95 / p99 ms | lost | CPU % | "
        "CPU %/conv | RSS MB | RSS KB/conv | other CPU % | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ov = r.get("overhead")
        added = " / ".join(_f(ov[k]) for k in ("p50", "p95", "p99")) if ov else "(floor)"
        flags = ",".join(r["flags"]) or "ok"
        if not r["ready_all"]:
            flags += ",not-all-ready"
        out.append(
            f"| {r['target']} | {r['n']} | {_f(r['p50'])} / {_f(r['p95'])} / {_f(r['p99'])} "
            f"| {added} | {_f(r['lost'], 0)} | {_f(r.get('relay_cpu'), 1)} "
            f"| {_f(r.get('cpu_per_conv'), 3)} | {_f(r.get('relay_rss'), 1)} "
            f"| {_f(r.get('rss_per_conv_kb'), 0)} | {_f(r.get('other_cpu'), 1)} | {flags} |"
        )
    out += [
        "",
        f"Capacity (largest N with added p99 <= {max_added_p99_ms:g} ms, no loss, every session "
        "ready, at that N and every smaller N measured):",
        "",
        "| target | capacity N | RSS per extra conversation KB (smallest N to capacity) |",
        "|---|---|---|",
    ]
    for target, cap in caps.items():
        out.append(
            f"| {target} | {cap if cap is not None else '< smallest N'} "
            f"| {_f(marginal.get(target), 0)} |"
        )
    return "\n".join(out) + "\n"


def write_summary(results_dir: Path, harness: Path, max_added_p99_ms: float = 20.0) -> str:
    """Build summary.json and summary.md in results_dir; returns the markdown."""
    report = harness_report(harness)
    res = report.build(str(results_dir))
    rows = enrich(res, report.summary(res))
    for row in rows:
        row["flags"] = [f for f in row["flags"] if f]
    targets = list(dict.fromkeys(r["target"] for r in res["runs"]))
    caps = {t: capacity(rows, t, max_added_p99_ms) for t in targets}
    marginal = {t: marginal_rss_kb(rows, t, caps[t]) for t in targets}
    meta = res.get("meta", {})
    text = markdown(rows, caps, meta, max_added_p99_ms, marginal)
    (results_dir / "summary.md").write_text(text)
    (results_dir / "summary.json").write_text(
        json.dumps(
            {"meta": meta, "rows": rows, "capacity": caps, "rss_per_extra_conv_kb": marginal},
            indent=1,
            default=str,
        )
    )
    # The harness's own per-run table, for the raw view.
    (results_dir / "table.md").write_text(report.table(res) + "\n")
    return text
