#!/usr/bin/env python3
"""Relay cost and capacity of the gateway, side by side with the reference relays, in one run.

    python bench/run.py                      # the full comparison (see docs/benchmarks.md)
    python bench/run.py --quick              # N=50, 8 s per run, every target

Every target gets the same load from the shared harness (../shared/bench: fake upstream, load
generator, process monitor, reference relays) on the same machine in the same run, interleaved
per N and repeat, so the numbers are comparable. The gateway runs with token auth, the policy
and transcript recording on, exactly as deployed. Results: bench/results/<UTC stamp>/ holds the
harness's raw files plus summary.md / summary.json (medians, relay overhead, capacity).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
PROJECT_PY = Path(os.environ.get("PROJECT_PYTHON", sys.executable))


def _own_env() -> dict[str, str]:
    """This environment minus DATABASE_URL/REDIS_URL: the bench has its own SQLite database."""
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}


DEFAULT_HARNESS = Path(os.environ.get("BENCH_HARNESS", ROOT.parent / "shared" / "bench"))

# The production command line (docs/benchmarks.md); {py}, {port} and {workers} are filled in.
UVICORN_CMD = (
    "{py} -m uvicorn config.asgi:application --host 127.0.0.1 --port {port} --workers {workers} "
    "--loop uvloop --http httptools --ws {ws} --lifespan off --no-access-log "
    "--log-level warning"
)
GATEWAY_WS = "voicechat.transport.server:GatewayWebSocketProtocol"
OLD_GATEWAY_WS = "voicechat.websocket_server:GatewayWebSocketProtocol"  # before the sub-packages
RUNSERVER_CMD = "{py} manage.py runserver --noreload --nothreading 127.0.0.1:{port}"
# The gateway's own production launcher: one uvicorn per core, each on its own SO_REUSEPORT socket.
SERVE_CMD = "{py} manage.py serve --host 127.0.0.1 --port {port} --workers {workers}"


@dataclass
class Target:
    """One thing the load generator talks to: a relay we start per run, or the fake itself."""

    name: str
    kind: str  # direct | node | python | gateway
    command: str = ""
    env: dict = field(default_factory=dict)
    path: str = "/ws"
    cwd: Path = ROOT


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


LIVE: set[subprocess.Popen] = set()  # everything started and not yet stopped


def track(proc: subprocess.Popen) -> subprocess.Popen:
    LIVE.add(proc)
    return proc


def stop_all(*_args) -> None:
    """Stop whatever is still running (on exit, and on SIGTERM/SIGINT)."""
    for proc in list(LIVE):
        stop(proc)
    if _args:  # called as a signal handler
        raise SystemExit(130)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group we started, SIGKILL after 5 s."""
    if proc is None:
        return
    LIVE.discard(proc)
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def raise_priority(proc: subprocess.Popen, nice: int) -> None:
    """Give a process we started priority over unrelated load (root only).

    With autogroup scheduling (Linux default) CPU is shared between sessions first, so a
    process's own nice value only matters within its session: set the session's autogroup nice
    too. Every process we start runs in its own session, so each gets the same weight.
    """
    if not nice or os.geteuid() != 0:
        return
    try:
        Path(f"/proc/{proc.pid}/autogroup").write_text(str(nice))
    except OSError:
        pass  # autogroup disabled: the `nice` prefix alone does the job


def machine_busy_pct(interval: float = 1.0) -> float:
    """Whole-machine busy %, summed over CPUs (200 = two busy cores)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 100.0 * (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_quiet(max_pct: float, wait_s: float) -> float:
    """Wait up to wait_s for the machine to be at most max_pct busy; returns the last reading."""
    deadline = time.monotonic() + wait_s
    while True:
        busy = machine_busy_pct()
        if busy <= max_pct or time.monotonic() >= deadline:
            return busy


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.harness = Path(args.harness).resolve()
        self.hpy = CACHE / "venv" / "bin" / "python"
        self.node_modules = CACHE / "node" / "node_modules"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.out = Path(args.out or BENCH / "results" / (stamp + ("-quick" if args.quick else "")))
        self.upstream_port = free_port()
        self.upstream_url = f"ws://127.0.0.1:{self.upstream_port}/"
        self.fake: subprocess.Popen | None = None
        self.db = CACHE / "bench.sqlite3"
        self.tokens: dict[Path, str] = {}  # per checkout (a git revision has its own database)
        self.failures: list[str] = []
        self.prefix_relay: list[str] = []
        self.prefix_load: list[str] = []
        if args.nice and os.geteuid() == 0:
            self.prefix_relay = self.prefix_load = ["nice", "-n", str(args.nice)]
        if args.pin:
            self.prefix_relay = [*self.prefix_relay, "taskset", "-c", args.relay_cpus]
            self.prefix_load = [*self.prefix_load, "taskset", "-c", args.load_cpus]

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Harness venv, node_modules, the bench database with a user and an API token."""
        if not (self.harness / "loadgen.py").exists():
            raise SystemExit(f"harness not found at {self.harness} (set --harness/BENCH_HARNESS)")
        if not self.hpy.exists():
            log("creating the harness venv (bench/.cache/venv)")
            subprocess.run([sys.executable, "-m", "venv", str(CACHE / "venv")], check=True)
            subprocess.run(
                [
                    str(CACHE / "venv/bin/pip"),
                    "install",
                    "-q",
                    "-r",
                    str(self.harness / "requirements.txt"),
                ],
                check=True,
            )
        needs_node = any(t.kind == "node" for t in self.targets())
        if needs_node and not (self.node_modules / "ws").exists():
            log("npm ci for the node relay (bench/.cache/node)")
            (CACHE / "node").mkdir(parents=True, exist_ok=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(self.harness / "node_relay" / name, CACHE / "node" / name)
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=CACHE / "node",
                check=True,
            )
        for cwd in {t.cwd for t in self.targets() if t.kind == "gateway"}:
            self.tokens[cwd] = self.make_token(cwd)

    def gateway_env(self) -> dict:
        return {
            "OPENAI_REALTIME_URL": self.upstream_url,
            "OPENAI_API_KEY": "dummy",
            "REALTIME_BACKEND": "openai",
            "SQLITE_PATH": str(self.db),
            "PYTHONUNBUFFERED": "1",
            # One user on one address opens every conversation here: lift the per-minute
            # connection limits, the concurrency limit and the daily budgets out of reach, but
            # leave their checks running.
            "REALTIME_MAX_CONCURRENT_PER_USER": "1000000",
            "REALTIME_CONNECTS_PER_MINUTE_PER_USER": "1000000",
            "REALTIME_CONNECTS_PER_MINUTE_PER_IP": "1000000",
            "REALTIME_DAILY_MINUTES": "100000000",
            "REALTIME_DAILY_COST_USD": "100000000",
        }

    def db_for(self, cwd: Path) -> Path:
        """The bench database of a checkout: older revisions have older schemas."""
        return self.db if cwd == ROOT else cwd / "bench.sqlite3"

    def make_token(self, cwd: Path, username: str = "bench", *, migrate: bool = True) -> str:
        """A fresh API token for `username` in the checkout's database (migrated first)."""
        env = {**_own_env(), **self.gateway_env(), "SQLITE_PATH": str(self.db_for(cwd))}
        if migrate:
            subprocess.run(
                [str(PROJECT_PY), "manage.py", "migrate", "--noinput", "-v", "0"],
                cwd=cwd,
                env=env,
                check=True,
            )
        code = (
            "from django.contrib.auth import get_user_model as G;"
            "from voicechat.services import api_token_create as t;"
            f"u,_=G().objects.get_or_create(username={username!r});"
            "print(t(user=u, name='bench')[1])"
        )
        out = subprocess.run(
            [str(PROJECT_PY), "manage.py", "shell", "-c", code],
            cwd=cwd,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().splitlines()[-1]

    # --- targets -------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        wanted = self.args.targets.split(",")
        gw = {**self.gateway_env(), "DEBUG": "False", "SECRET_KEY": "bench-" + "x" * 40}
        known = {
            "direct": Target("direct", "direct"),
            "node": Target(
                "node",
                "node",
                f"node {shlex.quote(str(self.harness / 'node_relay' / 'server.js'))}",
                {"NODE_PATH": str(self.node_modules)},
            ),
            "python": Target(
                "python",
                "python",
                f"{self.hpy} {shlex.quote(str(self.harness / 'python_relay_ref.py'))} "
                f"--upstream {self.upstream_url} --port {{port}}",
            ),
            # The development server (`make run`): daphne inside runserver, DEBUG on.
            "gw-runserver": Target(
                "gw-runserver",
                "gateway",
                RUNSERVER_CMD,
                {**self.gateway_env(), "DEBUG": "True"},
                "/v1/realtime",
            ),
        }
        for workers in (1, 2, 3, 4):
            name = "gw-uvicorn" if workers == 1 else f"gw-uvicorn{workers}"
            known[name] = Target(
                name, "gateway", UVICORN_CMD.replace("{workers}", str(workers)), gw, "/v1/realtime"
            )
            known[f"gw-serve{workers}"] = Target(
                f"gw-serve{workers}",
                "gateway",
                SERVE_CMD.replace("{workers}", str(workers)),
                gw,
                "/v1/realtime",
            )
        # The same production command with the metrics switched off (bench/no_metrics.py), for
        # their cost on the relay path in the same run.
        known["gw-uvicorn-nometrics"] = Target(
            "gw-uvicorn-nometrics",
            "gateway",
            UVICORN_CMD.replace("{workers}", "1").replace(
                "config.asgi:application", "bench.no_metrics:application"
            ),
            gw,
            "/v1/realtime",
        )
        for spec in self.args.target:  # --target NAME=COMMAND: any relay, e.g. another server
            name, _, command = spec.partition("=")
            known[name] = Target(name, "custom", command, {}, "/")
        targets = []
        for spec in wanted:
            name, _, rev = spec.partition("@")
            if name not in known:
                raise SystemExit(f"unknown target {spec!r}; known: {sorted(known)} (+ @<git rev>)")
            target = known[name]
            if rev:  # the gateway as of another commit, for before/after rows in the same run
                if target.kind != "gateway":
                    raise SystemExit(f"{spec}: only gateway targets take @<git rev>")
                target = Target(
                    spec, target.kind, target.command, target.env, target.path, snapshot(rev)
                )
            targets.append(target)
        return targets

    def start(self, target: Target) -> tuple[subprocess.Popen | None, str]:
        """Start the target's server on a fresh port; returns (process, URL to load)."""
        if target.kind == "direct":
            return None, self.upstream_url
        port = free_port()
        ws = os.environ.get("BENCH_UVICORN_WS", GATEWAY_WS)
        app = target.cwd / "voicechat"
        if not (app / "transport" / "server.py").exists():
            # A commit from before the sub-packages, or from before the gateway had its own.
            old = (app / "websocket_server.py").exists()
            ws = OLD_GATEWAY_WS if old else "websockets-sansio"
        cmd = target.command.format(py=PROJECT_PY, port=port, upstream=self.upstream_url, ws=ws)
        env = {
            **_own_env(),
            **target.env,
            "PORT": str(port),
            "UPSTREAM_URL": self.upstream_url,
        }
        if target.kind == "gateway":
            env["SQLITE_PATH"] = str(self.db_for(target.cwd))
        logf = open(self.out / f"{target.name}.server.log", "ab")  # noqa: SIM115
        proc = track(
            subprocess.Popen(
                [*self.prefix_relay, *shlex.split(cmd)],
                cwd=target.cwd,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        logf.close()
        raise_priority(proc, self.args.nice)
        if not wait_port(port, self.args.start_timeout, proc):
            stop(proc)
            raise RuntimeError(f"{target.name} did not open port {port} (see {logf.name})")
        return proc, f"ws://127.0.0.1:{port}{target.path}"

    # --- runs ----------------------------------------------------------------------------

    def start_fake(self) -> None:
        cmd = [
            *self.prefix_load,
            str(self.hpy),
            str(self.harness / "fake_upstream.py"),
            "--port",
            str(self.upstream_port),
            "--engine",
            "raw",
            "--transcript-every",
            str(self.args.transcript_every),
        ]
        with open(self.out / "fake_upstream.log", "ab") as logf:
            self.fake = track(
                subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            )
        raise_priority(self.fake, self.args.nice)
        if not wait_port(self.upstream_port, 15, self.fake):
            raise SystemExit("the fake upstream did not start (see fake_upstream.log)")

    def loadgen_cmd(self, target: Target, url: str, n: int) -> list[str]:
        cmd = [
            *self.prefix_load,
            str(self.hpy),
            str(self.harness / "loadgen.py"),
            url,
            "-n",
            str(n),
            "-d",
            str(self.args.duration),
            "--chunk-ms",
            str(self.args.chunk_ms),
            "--engine",
            "raw",
            "--label",
            target.name,
            "-q",
            "--connect-timeout",
            "30",
            "--wait-timeout",
            "30",
        ]
        if self.args.pin:
            cmd += ["--procs", "1"]
        if target.kind == "gateway":
            cmd += ["-H", f"Authorization: Bearer {self.tokens[target.cwd]}"]
        return cmd

    def run_attempt(self, target: Target, n: int, tag: str) -> dict | None:
        base = self.out / f"{tag}-n{n}"
        if target.kind == "gateway":
            # A user of its own per run, as in real life: the daily budget check sums the user's
            # conversations of the day, and one user with thousands of them would skew connects.
            self.tokens[target.cwd] = self.make_token(
                target.cwd, f"bench-{time.time_ns()}", migrate=False
            )
        busy = wait_quiet(self.args.quiet_max_pct, self.args.quiet_wait_s)
        try:
            server, url = self.start(target)
        except RuntimeError as exc:
            log(str(exc))
            return None
        try:
            with (
                open(f"{base}.loadgen.json", "w") as lg_out,
                open(f"{base}.loadgen.log", "w") as lg_log,
            ):
                loadgen = track(
                    subprocess.Popen(
                        self.loadgen_cmd(target, url, n),
                        stdout=lg_out,
                        stderr=lg_log,
                        start_new_session=True,
                    )
                )
            raise_priority(loadgen, self.args.nice)
            mon = [
                str(self.hpy),
                str(self.harness / "procmon.py"),
                "--out",
                f"{base}.samples.jsonl",
                "--interval",
                "0.5",
                "--proc",
                f"upstream={self.fake.pid}",
                "--proc",
                f"loadgen={loadgen.pid}",
            ]
            if server is not None:
                mon += ["--proc", f"relay={server.pid}"]
            Path(f"{base}.samples.jsonl").unlink(missing_ok=True)
            monitor = track(
                subprocess.Popen(mon, stderr=subprocess.DEVNULL, start_new_session=True)
            )
            try:
                loadgen.wait(self.args.duration + 180)
            except subprocess.TimeoutExpired:
                log(f"{tag} N={n}: the load generator hung; stopping it")
            stop(loadgen)
            stop(monitor)
        finally:
            stop(server)
        result = read_loadgen(Path(f"{base}.loadgen.json"))
        if result is not None:
            result["_busy_before"] = round(busy)
        return result

    def run_one(self, target: Target, n: int, tag: str) -> None:
        for attempt in range(self.args.retry_noisy + 1):
            result = self.run_attempt(target, n, tag)
            if result is None:
                self.failures.append(f"{tag} N={n}: no result")
                log(f"{tag} N={n}: FAILED (no result)")
                return
            noise = self.noise(self.out / f"{tag}-n{n}")
            log(
                f"{tag} N={n}: ready {result['connections_ready']}/{n} "
                f"lost {result['frames_lost']}/{result['frames_sent']} "
                f"p50/p99 {result['rtt_ms']['p50']}/{result['rtt_ms']['p99']} ms, "
                f"other CPU {noise}%"
            )
            if result["connections_ready"] == 0:
                self.failures.append(f"{tag} N={n}: no session became ready {result['errors']}")
                return
            if noise <= self.args.noise_max_pct or attempt == self.args.retry_noisy:
                return
            log(f"{tag} N={n}: noisy (other CPU {noise}% > {self.args.noise_max_pct}%), redoing")

    def noise(self, base: Path) -> float:
        sys.path.insert(0, str(self.harness))
        import report  # the harness's report.py (read from the harness, not copied)

        return report.noise_of(str(base))

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        targets = self.targets()
        self.setup()
        meta = {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "nproc": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "ns": self.args.ns,
            "duration_s": self.args.duration,
            "repeat": self.args.repeat,
            "targets": [t.name for t in targets],
            "pin": self.args.pin,
            "nice": self.args.nice,
            "transcript_every": self.args.transcript_every,
            "kernel": os.uname().release,
            "node": subprocess.run(
                ["node", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "uvicorn_cmd": UVICORN_CMD,
            "runserver_cmd": RUNSERVER_CMD,
            "serve_cmd": SERVE_CMD,
            "git_head": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))
        self.start_fake()
        try:
            for n in self.args.ns:
                for rep in range(1, self.args.repeat + 1):
                    for target in targets:
                        tag = target.name if self.args.repeat == 1 else f"{target.name}.r{rep}"
                        self.run_one(target, n, tag)
        finally:
            stop(self.fake)
        meta["loadavg_end"] = os.getloadavg()
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))
        from bench.summary import write_summary

        text = write_summary(self.out, self.harness, self.args.max_added_p99_ms)
        print(text)
        log(f"results in {self.out}")
        if self.failures:
            log("FAILED runs: " + "; ".join(self.failures))
            return 1
        return 0


def snapshot(rev: str) -> Path:
    """The project's files at git revision `rev`, exported once under bench/.cache/."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short=10", rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest = CACHE / f"rev-{sha}"
    if not (dest / "manage.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def read_loadgen(path: Path) -> dict | None:
    """The load generator's JSON line, or None when it printed none."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--targets",
        default="direct,node,python,gw-runserver,gw-uvicorn,gw-serve2",
        help="comma-separated: direct, node, python, gw-runserver, gw-uvicorn[K], gw-serve[K], "
        "a gateway target @<git rev> (that commit's code), or a --target name",
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="an extra relay started per run; COMMAND may use {port}, {upstream} and {py}",
    )
    p.add_argument("--summarize", metavar="DIR", help="only rebuild DIR/summary.md")
    p.add_argument(
        "--ns", type=lambda s: [int(x) for x in s.split(",")], default=[10, 50, 100, 200, 300]
    )
    p.add_argument("--duration", type=float, default=8, help="seconds of streaming per run")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repeats (medians)")
    p.add_argument("--chunk-ms", type=float, default=40)
    p.add_argument(
        "--transcript-every",
        type=int,
        default=5,
        help="the fake upstream adds a transcript delta after every K-th audio echo",
    )
    p.add_argument("--quick", action="store_true", help="N=50, 8 s, one repeat")
    p.add_argument(
        "--pin", action="store_true", help="taskset: relay on --relay-cpus, harness on --load-cpus"
    )
    p.add_argument("--relay-cpus", default="1")
    p.add_argument("--load-cpus", default="0")
    p.add_argument(
        "--nice", type=int, default=-20, help="priority of everything we start (root only)"
    )
    p.add_argument("--quiet-wait-s", type=float, default=3)
    p.add_argument("--quiet-max-pct", type=float, default=25)
    p.add_argument("--noise-max-pct", type=float, default=40)
    p.add_argument("--retry-noisy", type=int, default=0)
    p.add_argument("--max-added-p99-ms", type=float, default=20, help="capacity criterion")
    p.add_argument("--start-timeout", type=float, default=30)
    p.add_argument("--harness", default=str(DEFAULT_HARNESS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.ns, args.duration, args.repeat, args.quiet_wait_s = [50], 8, 1, 3
    return args


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    if args.summarize:
        from bench.summary import write_summary

        print(write_summary(Path(args.summarize), Path(args.harness), args.max_added_p99_ms))
        return 0
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    try:
        return Bench(args).run()
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
