"""A failure while handling one client frame ends that conversation properly (issue 13).

Such a failure used to escape the consumer: close 1006, no error event, the row left open and
"live" (the heartbeat went on), the upstream open, and after REALTIME_MAX_CONCURRENT_PER_USER
such frames the user was refused (4012) until the process restarted.
"""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from voicechat import lifecycle
from voicechat.enums import EndReason
from voicechat.gateway.policy import ClientEventPolicy
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Through the test communicator and both production paths (the shortcut, the general path).
    pytest.mark.over_every_transport,
]

HOLD_AT_MOST = 2
BOOM = {"type": "input_audio_buffer.commit", "event_id": "boom"}


@pytest.fixture
def broken_policy(settings, monkeypatch):
    """The policy raises on a frame that mentions "boom", as a bug in it would."""
    settings.REALTIME_MAX_CONCURRENT_PER_USER = HOLD_AT_MOST
    check = ClientEventPolicy._check

    def failing_check(self, text: str):
        if "boom" in text:
            raise TypeError("unhashable type: 'list'")
        return check(self, text)

    monkeypatch.setattr(ClientEventPolicy, "_check", failing_check)


async def all_ended(user, count: int) -> list[Conversation]:
    """The user's `count` conversations, once every one of them is ended."""
    async with asyncio.timeout(10):
        while True:
            rows = await db(lambda: list(Conversation.objects.filter(user=user)))
            if len(rows) == count and all(row.ended is not None for row in rows):
                return rows
            await asyncio.sleep(0.05)


async def assert_ended_by_our_error(user, upstream, count: int) -> None:
    rows = await all_ended(user, count)
    assert [row.end_reason for row in rows] == [EndReason.SERVER_ERROR] * count
    assert all(row.ended >= row.started for row in rows)
    for connection in upstream.connections:
        await asyncio.wait_for(connection.wait_closed(), 5)
    assert lifecycle.live_count() == 0


async def test_a_failing_frame_ends_the_conversation_and_frees_its_place(
    broken_policy, fake_upstream, alice, alice_token, connect
):
    for _ in range(HOLD_AT_MOST + 1):
        connected, client = await connect(token=alice_token)
        assert connected
        await client.receive_until("session.updated")
        await client.send(BOOM)
        events, code = await client.receive_close()
        assert code == CloseCode.SERVER_ERROR
        assert events[-1]["error"]["code"] == "server_error"
    await assert_ended_by_our_error(alice, fake_upstream, HOLD_AT_MOST + 1)
    connected, client = await connect(token=alice_token)  # not refused with 4012
    assert (await client.receive())["type"] == "session.created"


async def test_a_failing_frame_through_the_production_server(
    broken_policy, fake_upstream, gateway_server, alice, alice_token
):
    """uvicorn with the gateway's protocol: the frame fails in the shortcut, then in receive()."""
    url = f"ws://{gateway_server}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {alice_token}"}
    for _ in range(HOLD_AT_MOST + 1):
        async with ws_connect(url, additional_headers=headers) as ws:
            events = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        events.append(json.loads(await ws.recv()))
                        if events[-1]["type"] == "session.updated":
                            await ws.send(json.dumps(BOOM))
        assert closed.value.rcvd.code == CloseCode.SERVER_ERROR  # not 1006
        assert events[-1]["error"]["code"] == "server_error"
    await assert_ended_by_our_error(alice, fake_upstream, HOLD_AT_MOST + 1)
    async with ws_connect(url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
