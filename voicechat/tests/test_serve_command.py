"""`manage.py serve`: several uvicorn processes on one port, each relaying real conversations."""

import json

import pytest
from websockets.asyncio.client import connect

from voicechat.tests.conftest import free_port
from voicechat.tests.servers import serve_process, server_env, wait_for_port, wait_for_workers

pytestmark = pytest.mark.django_db(transaction=True)


async def test_two_workers_share_the_port_and_relay(fake_upstream, alice_token):
    port = free_port()
    # The test database (SQLite or PostgreSQL, whichever this run uses) and the fake upstream.
    env = server_env(upstream_url=fake_upstream.url)
    proc = serve_process(port, env, workers=2)
    try:
        await wait_for_port(port, proc)
        await wait_for_workers(proc, 2)  # both listen (the parent only supervises them)
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
