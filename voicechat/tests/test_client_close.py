"""A client that closes while a reply streams ends its conversation completely (issue 13).

The relay could write to the socket between the client's close and the server noticing the
connection lost; uvicorn then raised RuntimeError ("Unexpected ASGI message 'websocket.send',
after sending 'websocket.close'"), and cleanup, which expected only OSError, stopped halfway:
upstream open, transcript not flushed, no end stored (6 of 30 runs).
"""

import asyncio
import base64
import contextlib
import json
import time

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from voicechat import lifecycle
from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.monitoring import live
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 30
AUDIO = base64.b64encode(b"\x01\x00" * 960).decode()  # 40 ms of 24 kHz PCM16
DELTA = json.dumps(
    {
        "type": "response.output_audio.delta",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": AUDIO,
    }
)


async def stream_audio(upstream) -> None:
    """Audio deltas as fast as the gateway takes them, until it closes this upstream."""
    with contextlib.suppress(ConnectionClosed):
        for _ in range(20_000):  # bounded: 800 s of audio
            await upstream.send(DELTA)


async def test_closing_mid_stream_ends_every_conversation(
    fake_upstream, start_server, alice, alice_token
):
    server = await start_server(
        upstream_url=fake_upstream.url,
        REALTIME_CONNECTS_PER_MINUTE_PER_USER="0",
        REALTIME_CONNECTS_PER_MINUTE_PER_IP="0",
        # Unlimited, so a conversation left open fails the check below rather than the connects.
        REALTIME_MAX_CONCURRENT_PER_USER="0",
    )
    url = f"ws://{server.address}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {alice_token}"}
    streams = []
    for run in range(RUNS):
        # Reading never pauses (max_queue=None): the client sees the server's close frame
        # behind the audio still on its way, and the close handshake completes.
        async with ws_connect(url, additional_headers=headers, max_queue=None) as ws:
            async with asyncio.timeout(10):
                while json.loads(await ws.recv())["type"] != "session.updated":
                    pass
                streams.append(asyncio.create_task(stream_audio(fake_upstream.connections[-1])))
                for _ in range(1 + run % 8):  # close at a different point in the stream each run
                    assert json.loads(await ws.recv())["type"] == "response.output_audio.delta"
        # Leaving the block closed the socket cleanly (1000), mid-stream.
        assert ws.close_code == 1000

    async with asyncio.timeout(20):
        await asyncio.gather(*streams)  # each ends when the gateway closes its upstream
        for upstream in fake_upstream.connections:
            await upstream.wait_closed()
        while await db(Conversation.objects.filter(user=alice, ended__isnull=True).count):
            await asyncio.sleep(0.1)
    rows = await db(lambda: list(Conversation.objects.filter(user=alice)))
    assert len(rows) == RUNS
    assert [row.end_reason for row in rows] == [EndReason.CLIENT_CLOSED] * RUNS
    assert all(row.ended >= row.started for row in rows)
    assert "Unexpected ASGI message" not in server.log()


@pytest.mark.parametrize(
    "step",
    [
        "voicechat.upstream.openai.OpenAIUpstream.close",
        "voicechat.records.recorder.TranscriptRecorder.close",
        "voicechat.monitoring.live.ConversationPublisher.close",
    ],
)
async def test_a_failing_cleanup_step_does_not_stop_the_others(
    step, monkeypatch, fake_upstream, alice, alice_token, connect
):
    async def fail(*args, **kwargs) -> None:
        raise RuntimeError("Unexpected ASGI message 'websocket.send'")

    monkeypatch.setattr(step, fail)
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    assert conversation.ended >= conversation.started
    if step != "voicechat.upstream.openai.OpenAIUpstream.close":
        await asyncio.wait_for(fake_upstream.connections[0].wait_closed(), 5)
    assert lifecycle.live_count() == 0


async def test_a_close_while_staff_end_the_conversation_and_the_relay_is_slow_to_stop(
    fake_upstream, alice, alice_token, connect, monkeypatch
):
    """The staff end waits for the relay to stop when the client leaves: neither may hang.

    A database call the relay is making finishes before the relay stops (asgiref waits for the
    thread). The end, cancelled meanwhile, once swallowed its own cancellation and was waited
    for forever, and the conversation was never ended.
    """
    admitting = asyncio.Event()

    async def slow_budget_problem(*args, **kwargs) -> None:
        admitting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # the database call finishes first
            raise

    monkeypatch.setattr("voicechat.gateway.conversation.budget_problem", slow_budget_problem)
    connected, client = await connect(token=alice_token)
    await asyncio.wait_for(admitting.wait(), 5)
    conversation = await db(Conversation.objects.get, user=alice)
    assert await live.request_end(conversation.pk, by="olga")
    await asyncio.sleep(0.1)  # the end is now waiting for the relay to stop
    started = time.monotonic()
    await client.communicator.disconnect(timeout=10)  # then it would cancel the consumer
    assert time.monotonic() - started < 3
    conversation = await finished_conversation(alice, timeout=5)
    assert conversation.end_reason == EndReason.ENDED_BY_STAFF
    assert lifecycle.live_count() == 0
