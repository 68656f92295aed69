"""The production server: K uvicorn processes sharing one port through SO_REUSEPORT.

One Python process relays a few hundred conversations per core (docs/benchmarks.md), so a
deployment runs one process per core. uvicorn's own --workers shares a single listening socket,
and whichever process wakes first accepts a burst of connections, which left one worker with
most of the conversations in our benchmark. Here every process binds its own SO_REUSEPORT socket
and the kernel spreads new connections evenly over them.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import multiprocess

from voicechat.checks import refuse_development_key

logger = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_one(host: str, port: int, log_level: str, graceful_seconds: int) -> None:
    """One worker: its own listening socket, uvloop, httptools, the gateway's WebSocket path."""
    import uvicorn

    from voicechat.transport.server import GatewayWebSocketProtocol

    sock = _listen(host, port)
    config = uvicorn.Config(
        "config.asgi:application",
        loop="uvloop",
        http="httptools",
        ws=GatewayWebSocketProtocol,
        # Base64 audio barely compresses; deflating every frame would cost more CPU than the
        # relay itself (browsers offer it on every socket). The gateway's protocol never does.
        ws_per_message_deflate=False,
        # Lifespan events start the process's heartbeat and sweep (voicechat/lifecycle.py).
        lifespan="on",
        access_log=False,
        log_level=log_level,
        # After SIGTERM the conversations end within REALTIME_SHUTDOWN_TIMEOUT (lifecycle.py);
        # a task that still has not stopped then must not keep the worker for good (issue 13).
        timeout_graceful_shutdown=graceful_seconds,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _metrics_dir() -> tuple[str, bool]:
    """PROMETHEUS_MULTIPROC_DIR for the workers, emptied (the given one, or a new temporary one).

    prometheus-client's multiprocess mode: each worker writes its values to files there, and
    /metrics on any worker sums them. Files left by an earlier run would be counted again.
    Returns the directory and whether it is ours to remove at exit.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not given:
        return tempfile.mkdtemp(prefix="voicechat-metrics-"), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return given, False


def _end_conversations_of(pid: int) -> None:
    """A worker is gone: its open conversations end now, not once its heartbeat goes stale."""
    # Imported here: a spawned worker loads this module before Django is set up.
    from voicechat import lifecycle, services

    try:
        ended = services.conversations_end_lost(process=lifecycle.process_id(pid))
    except Exception:
        logger.exception("could not end the conversations of worker %d", pid)
        return
    if ended:
        logger.warning("worker %d stopped with %d conversation(s) open: ended as lost", pid, ended)


class Command(BaseCommand):
    help = "Serve the site and the gateway with one uvicorn process per core (SO_REUSEPORT)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)"
        )
        parser.add_argument("--log-level", default="warning")

    def handle(self, *args, host: str, port: int, workers: int, log_level: str, **options) -> None:
        try:
            refuse_development_key()  # once, here, rather than by every worker as it starts
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        _listen(host, port).close()  # fail here, once, if the port is taken
        # Before the workers start: they read it when they import prometheus_client.
        metrics_dir, ours = _metrics_dir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # spawn: each worker starts from a clean interpreter (no inherited DB connections).
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(
                target=serve_one,
                args=(host, port, log_level, settings.REALTIME_SHUTDOWN_TIMEOUT + 5),
                daemon=False,
            )
            for _ in range(max(1, workers))
        ]
        for proc in procs:
            proc.start()
        self.stdout.write(f"serving http://{host}:{port}/ with {len(procs)} worker(s)")

        def forward(signum, _frame) -> None:
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        # A worker that dies takes its open conversations out of the live gauges at once.
        running = {proc.sentinel: proc for proc in procs}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc = running.pop(sentinel)
                proc.join()
                multiprocess.mark_process_dead(proc.pid, metrics_dir)
                _end_conversations_of(proc.pid)
        if ours:
            shutil.rmtree(metrics_dir, ignore_errors=True)
