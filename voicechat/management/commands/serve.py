"""The production server: K uvicorn processes sharing one port through SO_REUSEPORT.

One Python process relays a few hundred conversations per core (docs/benchmarks.md), so a
deployment runs one process per core. uvicorn's own --workers shares a single listening socket,
and whichever process wakes first accepts a burst of connections, which left one worker with
most of the conversations in our benchmark. Here every process binds its own SO_REUSEPORT socket
and the kernel spreads new connections evenly over them.
"""

import multiprocessing
import os
import signal
import socket

from django.core.management.base import BaseCommand


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_one(host: str, port: int, log_level: str) -> None:
    """One worker: its own listening socket, uvloop, httptools, the gateway's WebSocket path."""
    import uvicorn

    from voicechat.websocket_server import GatewayWebSocketProtocol

    sock = _listen(host, port)
    config = uvicorn.Config(
        "config.asgi:application",
        loop="uvloop",
        http="httptools",
        ws=GatewayWebSocketProtocol,
        # Base64 audio barely compresses; deflating every frame would cost more CPU than the
        # relay itself (browsers offer it on every socket). The gateway's protocol never does.
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
        log_level=log_level,
    )
    uvicorn.Server(config).run(sockets=[sock])


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
        _listen(host, port).close()  # fail here, once, if the port is taken
        # spawn: each worker starts from a clean interpreter (no inherited DB connections).
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(target=serve_one, args=(host, port, log_level), daemon=False)
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
        for proc in procs:
            proc.join()
