"""Graceful shutdown: clients are told, upstreams closed, every line stored, the reason recorded."""

import contextlib
import json
import signal

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from voicechat import lifecycle
from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db

pytestmark = pytest.mark.django_db(transaction=True)

LINES = [f"Line number {n} must survive the restart." for n in range(8)]


def typed(text: str) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def is_done_of(event: dict, text: str) -> bool:
    """True for the upstream's conversation.item.done of the typed message `text`."""
    return (
        event["type"] == "conversation.item.done"
        and event["item"]["content"][0].get("text") == text
    )


async def receive_until_closed(ws) -> list[dict]:
    """A real client's events until the server closes (the close code is then on `ws`)."""
    events = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            events.append(json.loads(await ws.recv()))
    return events


async def stored_lines(conversation: Conversation) -> list[str]:
    return [item.text for item in await db(conversation.ordered_items)]


async def test_shutdown_ends_live_conversations_and_refuses_new_ones(
    fake_upstream, alice, alice_token, connect
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    for text in LINES:
        await client.send(typed(text))
    # Every line reached the gateway (the upstream's echo of the last one came through it).
    while not is_done_of(await client.receive(), LINES[-1]):
        pass

    await lifecycle.shutdown_all()

    events, code = await client.receive_close()
    assert code == CloseCode.SERVER_SHUTDOWN
    assert events[-1]["error"]["code"] == "server_shutdown"
    conversation = await db(Conversation.objects.get, user=alice)
    assert conversation.end_reason == EndReason.SERVER_SHUTDOWN
    assert await stored_lines(conversation) == LINES
    await fake_upstream.closed.wait()
    await client.communicator.disconnect()

    # While draining, a new connection is told to come back, and nothing is opened.
    _, late = await connect(token=alice_token)
    events, code = await late.receive_close()
    assert code == CloseCode.SERVER_SHUTDOWN
    assert await db(Conversation.objects.count) == 1


@pytest.mark.parametrize("kind", ["uvicorn", "uvicorn-workers", "daphne"])
async def test_sigterm_to_a_real_server_loses_no_line(
    kind, fake_upstream, alice, alice_token, start_server
):
    server = await start_server(kind, upstream_url=fake_upstream.url)
    async with ws_connect(
        f"ws://{server.address}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {alice_token}"},
    ) as ws:
        for text in LINES:
            await ws.send(json.dumps(typed(text)))
        # Every line reached the server (the upstream echoed the last one back through it)...
        async for frame in ws:
            if is_done_of(json.loads(frame), LINES[-1]):
                break
        # ...and the process is told to stop right away, transcript writes still in flight.
        server.process.send_signal(signal.SIGTERM)
        events = await receive_until_closed(ws)
    assert ws.close_code == CloseCode.SERVER_SHUTDOWN
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "server_shutdown"
    await server.wait()

    conversation = await db(Conversation.objects.get, user=alice)
    assert conversation.end_reason == EndReason.SERVER_SHUTDOWN
    assert await stored_lines(conversation) == LINES
    await fake_upstream.closed.wait()
