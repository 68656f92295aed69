"""Real server processes (uvicorn or daphne) running this project, for multi-process tests.

Each one is a subprocess on a free loopback port, configured only through the environment, as
in production, and pointed at the test database (and at the test run's Redis prefix when the
suite runs against Redis). Its output goes to a log file that a failing test prints.
"""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db import connection

from voicechat.tests.conftest import PROVIDER_KEY, REDIS_TEST_PREFIX, free_port

ROOT = Path(__file__).resolve().parents[2]


def database_env() -> dict[str, str]:
    """Environment that points a server process at this test run's database."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return {"SQLITE_PATH": str(db["NAME"])}
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return {"DATABASE_URL": f"postgres://{auth}@{host}/{db['NAME']}"}


def scaled_out_env() -> dict[str, str]:
    """The test database, and the test run's Redis namespace when the run uses Redis."""
    env = database_env()
    if settings.REDIS_URL:
        env.update(REDIS_URL=settings.REDIS_URL, REDIS_PREFIX=REDIS_TEST_PREFIX)
    return env


def server_env(*, upstream_url: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "STATIC_ROOT")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        # The test's own key, so sessions made in the test are valid on every server.
        SECRET_KEY=settings.SECRET_KEY,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        OPENAI_API_KEY=PROVIDER_KEY,
        OPENAI_REALTIME_URL=upstream_url,
        REALTIME_BACKEND="openai",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        **scaled_out_env(),
    )
    env.update(extra)
    return env


def server_command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off", "--no-access-log",
            "--ws", "voicechat.transport.server:GatewayWebSocketProtocol",
        ]  # fmt: skip
    if kind == "uvicorn-workers":
        # As in production: a supervisor process and two workers sharing the socket.
        return [*server_command("uvicorn", port), "--workers", "2"]
    if kind == "daphne":
        return [
            sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
            "config.asgi:application",
        ]  # fmt: skip
    raise ValueError(kind)


class ServerProcess:
    """One server process; `address` is host:port once `start()` has returned."""

    def __init__(self, kind: str = "uvicorn", **env: str) -> None:
        self.kind = kind
        self.env = env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"voicechat-{kind}-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    async def start(self, timeout: float = 30) -> "ServerProcess":
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                server_command(self.kind, self.port),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
                try:
                    response = await client.get(f"http://{self.address}/healthz", timeout=2)
                    if response.status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not become healthy:\n{self.log()}")
                await asyncio.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager sends it; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"{self.kind} did not exit:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_path.unlink(missing_ok=True)


# --- manage.py serve: a supervisor and its workers ---------------------------------------------


def serve_process(port: int, env: dict[str, str], *, workers: int) -> subprocess.Popen:
    """`manage.py serve --workers N` on `port`, as production runs it (its output piped)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--workers", str(workers), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until `proc` accepts connections on `port` (it must not exit meanwhile)."""
    async with asyncio.timeout(timeout):
        while True:
            assert proc.poll() is None, "serve exited early"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)


async def wait_for_workers(proc: subprocess.Popen, workers: int, timeout: float = 30) -> None:
    """Until `serve` has started all its workers (the supervisor itself only watches them)."""
    async with asyncio.timeout(timeout):
        while len(children(proc.pid)) < workers:
            await asyncio.sleep(0.1)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []
