"""SIGTERM to `manage.py serve --workers 2` after many conversations: every worker exits in time.

Issue 13, finding 7: workers hung for more than 90 s at SIGTERM ("Waiting for background tasks
to complete"), their consumers' channel-layer readers stuck "cancelling" inside channels_redis,
and such readers piled up in normal operation. Run on Redis (make test-services) this is the
case that hung; on the embedded defaults it checks the same shutdown with the in-memory layer.
"""

import asyncio
import json
import signal
import time

import pytest
from django.conf import settings
from websockets.asyncio.client import connect

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.monitoring import live
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db, free_port
from voicechat.tests.servers import serve_process, server_env, wait_for_port, wait_for_workers
from voicechat.tests.test_shutdown import receive_until_closed

pytestmark = pytest.mark.django_db(transaction=True)

CHURN = 16  # conversations opened and closed before the signal
OPEN_AT_SIGNAL = 4


def gateway(port: int, token: str):
    return connect(
        f"ws://127.0.0.1:{port}/v1/realtime",
        additional_headers={"Authorization": f"Bearer {token}"},
    )


async def test_sigterm_after_many_conversations_ends_every_worker_in_time(
    fake_upstream, alice, alice_token
):
    port = free_port()
    env = server_env(
        upstream_url=fake_upstream.url,
        REALTIME_MAX_CONCURRENT_PER_USER="0",
        REALTIME_CONNECTS_PER_MINUTE_PER_USER="1000",
        REALTIME_CONNECTS_PER_MINUTE_PER_IP="1000",
    )
    proc = serve_process(port, env, workers=2)
    try:
        await wait_for_port(port, proc)
        await wait_for_workers(proc, 2)

        # Normal operation: conversations come and go; on Redis, staff end some of them.
        for n in range(CHURN):
            async with gateway(port, alice_token) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                if settings.REDIS_URL and n % 4 == 0:
                    latest = await db(lambda: Conversation.objects.order_by("-pk").first())
                    assert await live.request_end(latest.pk, by="olga")
                    await receive_until_closed(ws)
                    assert ws.close_code == CloseCode.ENDED_BY_STAFF

        sockets = [await gateway(port, alice_token).__aenter__() for _ in range(OPEN_AT_SIGNAL)]
        for ws in sockets:
            assert json.loads(await ws.recv())["type"] == "session.created"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            await asyncio.wait_for(receive_until_closed(ws), 30)
            assert ws.close_code == CloseCode.SERVER_SHUTDOWN
        # Bounded only to turn a hang into a failure: the shutdown timeout and a wide margin.
        deadline = signalled + settings.REALTIME_SHUTDOWN_TIMEOUT + 30
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output

    ends = await db(lambda: list(Conversation.objects.values_list("end_reason", flat=True)))
    assert len(ends) == CHURN + OPEN_AT_SIGNAL
    assert ends.count(EndReason.SERVER_SHUTDOWN) == OPEN_AT_SIGNAL
    staff_ends = CHURN // 4 if settings.REDIS_URL else 0
    assert ends.count(EndReason.ENDED_BY_STAFF) == staff_ends
    assert ends.count(EndReason.CLIENT_CLOSED) == CHURN - staff_ends
