"""`manage.py serve`: several uvicorn processes on one port, each relaying real conversations."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from voicechat.tests.conftest import free_port
from voicechat.tests.servers import server_env

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


async def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            assert proc.poll() is None, "serve exited early"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def test_two_workers_share_the_port_and_relay(fake_upstream, alice_token):
    port = free_port()
    # The test database (SQLite or PostgreSQL, whichever this run uses) and the fake upstream.
    env = server_env(upstream_url=fake_upstream.url)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await _wait_port(port, proc)
        # Both workers listen (the parent only supervises them).
        async with asyncio.timeout(30):
            while len(_children(proc.pid)) < 2:
                await asyncio.sleep(0.1)
        for attempt in range(4):  # several sockets: the kernel spreads them over the workers
            async with connect(
                f"ws://127.0.0.1:{port}/v1/realtime",
                additional_headers={"Authorization": f"Bearer {alice_token}"},
            ) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))
                await fake_upstream.wait_for("input_audio_buffer.append", count=attempt + 1)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output
    assert "with 2 worker(s)" in output
