"""OpenAI's own SDK, pointed at the gateway with one of our tokens, holds a conversation."""

import logging

import pytest
from openai import AsyncOpenAI

from voicechat.tests.conftest import PROVIDER_KEY, db, finished_conversation
from voicechat.tests.realtime_validation import validate_server_event

pytestmark = pytest.mark.django_db(transaction=True)


async def test_sdk_text_turn_through_the_gateway(
    fake_upstream, gateway_server, alice, alice_token, caplog
):
    caplog.set_level(logging.DEBUG)
    sdk = AsyncOpenAI(
        api_key=alice_token,
        base_url=f"http://{gateway_server}/v1",
        websocket_base_url=f"ws://{gateway_server}/v1",
    )
    frames = []
    async with sdk.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say hello"}],
            }
        )
        await connection.response.create()
        text = ""
        async for event in connection:
            frames.append(event.to_dict())
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                break
    assert text == "Hello from the fake upstream."
    for frame in frames:
        validate_server_event(frame)

    conversation = await finished_conversation(alice)
    items = await db(conversation.ordered_items)
    assert [(i.role, i.text) for i in items] == [("user", "Say hello"), ("assistant", text)]
    assert conversation.output_tokens == 200
    # The provider key went upstream, and nowhere else.
    assert fake_upstream.request_headers[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert all(PROVIDER_KEY not in str(frame) for frame in frames)
    assert PROVIDER_KEY not in caplog.text


async def test_sdk_with_a_wrong_token_is_refused(fake_upstream, gateway_server):
    from websockets.exceptions import InvalidStatus

    sdk = AsyncOpenAI(
        api_key="vc_wrong",
        base_url=f"http://{gateway_server}/v1",
        websocket_base_url=f"ws://{gateway_server}/v1",
    )
    with pytest.raises(InvalidStatus) as refused:
        async with sdk.realtime.connect(model="gpt-realtime"):
            pass
    assert refused.value.response.status_code == 403
    assert fake_upstream.request_headers == []
