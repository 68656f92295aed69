"""The policy's side doors (issue 13, finding 5): what session.update refuses, the other client
events that carry the same thing are refused too.

- A response.create's voice is one of the allowed voices, as session.update's is.
- Audio inside conversation items (conversation.item.create, response.create's `input`) is
  paced with input_audio_buffer.append's: 30 items of 4 s each went upstream in 3.2 s.
- A system message, a second set of instructions, needs the instructions scope wherever it is.
"""

import asyncio
import base64
import json

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect

from voicechat.access.scopes import full, site_default
from voicechat.gateway.policy import ClientEventPolicy

pytestmark = pytest.mark.django_db(transaction=True)

# Four seconds of PCM16 at 24 kHz: the most audio one frame under the 256 KiB limit holds.
FOUR_SECONDS = base64.b64encode(bytes(4 * 24_000 * 2)).decode()
TWO_SECONDS = FOUR_SECONDS[: len(FOUR_SECONDS) // 2]


def audio_item(audio: object = FOUR_SECONDS, *, role: str = "user") -> dict:
    return {"type": "message", "role": role, "content": [{"type": "input_audio", "audio": audio}]}


SYSTEM = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}

# Hostile frames, and the error code and param each is answered with (nothing forwarded).
HOSTILE = [
    (
        {"type": "response.create", "response": {"audio": {"output": {"voice": "darth"}}}},
        "voice_not_allowed",
        "response.audio.output.voice",
    ),
    (
        {"type": "response.create", "response": {"audio": {"output": {"voice": {"id": "v_1"}}}}},
        "voice_not_allowed",
        "response.audio.output.voice",
    ),
    (
        {"type": "response.create", "response": {"audio": {"output": {"voice": ["marin"]}}}},
        "invalid_type",
        "response.audio.output.voice",
    ),
    # The beta API's place for it; GA has none there.
    (
        {"type": "response.create", "response": {"voice": "darth"}},
        "field_not_allowed",
        "response.voice",
    ),
    (
        {"type": "response.create", "response": {"conversation": "none", "input": [SYSTEM]}},
        "field_not_allowed",
        "response.input[0].role",
    ),
    ({"type": "conversation.item.create", "item": SYSTEM}, "field_not_allowed", "item.role"),
    (
        {"type": "conversation.item.create", "item": audio_item(["AAAA"])},
        "invalid_type",
        "item.content[0].audio",
    ),
    (
        {"type": "conversation.item.create", "item": audio_item({"b64": "AAAA"})},
        "invalid_type",
        "item.content[0].audio",
    ),
    (
        {"type": "response.create", "response": {"input": ["x", audio_item(7)]}},
        "invalid_type",
        "response.input[1].content[0].audio",
    ),
]


@pytest.fixture
async def client(fake_upstream, alice_token, connect):
    connected, client = await connect(token=alice_token)
    assert connected
    await client.receive_until("session.updated")
    return client


@pytest.mark.parametrize(("event", "code", "param"), HOSTILE)
async def test_a_hostile_event_is_answered_and_not_forwarded(
    client, fake_upstream, event, code, param
):
    await client.send({**event, "event_id": "evt_h"})
    error = (await client.receive())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_h")
    await client.send({"type": "input_audio_buffer.commit"})
    await client.receive_until("input_audio_buffer.committed")
    # Only the server's own defaults and the commit reached the upstream.
    assert [e["type"] for e in fake_upstream.received] == [
        "session.update",
        "input_audio_buffer.commit",
    ]


async def test_hostile_events_through_the_production_server(
    fake_upstream, gateway_server, alice_token
):
    """uvicorn with the gateway's protocol, whose shortcut sees every frame first."""
    url = f"ws://{gateway_server}/v1/realtime?model=gpt-realtime"
    async with (
        asyncio.timeout(60),
        ws_connect(url, additional_headers={"Authorization": f"Bearer {alice_token}"}) as ws,
    ):

        async def receive(etype: str) -> dict:
            while (event := json.loads(await ws.recv()))["type"] != etype:
                pass
            return event

        await receive("session.updated")
        for n, (event, code, param) in enumerate(HOSTILE):
            await ws.send(json.dumps({**event, "event_id": f"e{n}"}))
            error = (await receive("error"))["error"]
            assert (error["code"], error["param"], error["event_id"]) == (code, param, f"e{n}")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await receive("input_audio_buffer.committed")
    assert [e["type"] for e in fake_upstream.received] == [
        "session.update",
        "input_audio_buffer.commit",
    ]


async def test_an_allowed_response_voice_is_forwarded(client, fake_upstream):
    voice = {"audio": {"output": {"voice": "cedar"}}}
    await client.send({"type": "response.create", "response": voice})
    await client.receive_until("response.done")
    assert fake_upstream.received[-1]["response"] == voice


@pytest.fixture
def slow_refill(settings):
    """A 5 s burst that refills too slowly to matter: the test counts, it does not time."""
    settings.REALTIME_AUDIO_BURST_MS = 5000
    settings.REALTIME_AUDIO_RATE = 0.001


async def test_audio_in_created_items_is_paced(slow_refill, client, fake_upstream):
    for n in range(30):
        await client.send(
            {"type": "conversation.item.create", "event_id": f"i{n}", "item": audio_item()}
        )
    await client.send({"type": "input_audio_buffer.commit"})
    events = await client.receive_until("input_audio_buffer.committed")
    refused = [e["error"] for e in events if e["type"] == "error"]
    assert len(refused) == 29  # 4 s fit in the 5 s burst; no second 4 s ever does
    assert {(e["code"], e["param"]) for e in refused} == {
        ("audio_rate_exceeded", "item.content[0].audio")
    }
    created = [e for e in fake_upstream.received if e["type"] == "conversation.item.create"]
    assert len(created) == 1


async def test_items_and_appends_share_one_pacer(slow_refill, client, fake_upstream):
    """Audio is audio however it comes: an item spends what an append may then not."""
    await client.send({"type": "conversation.item.create", "item": audio_item()})
    await client.receive_until("conversation.item.done")
    # 1 s of the burst is left: 2 s in any form is too much, in a response's input too.
    for event in (
        {"type": "input_audio_buffer.append", "audio": TWO_SECONDS},
        {"type": "conversation.item.create", "item": audio_item(TWO_SECONDS)},
        {"type": "response.create", "response": {"input": [audio_item(TWO_SECONDS)]}},
    ):
        await client.send(event)
        assert (await client.receive())["error"]["code"] == "audio_rate_exceeded"
    assert [e["type"] for e in fake_upstream.received] == [
        "session.update",
        "conversation.item.create",
    ]


async def test_paced_items_through_the_production_server(
    slow_refill, fake_upstream, gateway_server, alice_token
):
    url = f"ws://{gateway_server}/v1/realtime?model=gpt-realtime"
    async with (
        asyncio.timeout(60),
        ws_connect(url, additional_headers={"Authorization": f"Bearer {alice_token}"}) as ws,
    ):
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        for _ in range(30):
            await ws.send(json.dumps({"type": "conversation.item.create", "item": audio_item()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        codes = []
        while (event := json.loads(await ws.recv()))["type"] != "input_audio_buffer.committed":
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    assert codes == ["audio_rate_exceeded"] * 29
    assert sum(e["type"] == "conversation.item.create" for e in fake_upstream.received) == 1


async def test_the_instructions_scope_allows_system_messages_in_both_places(
    settings, fake_upstream, alice_token, connect
):
    settings.REALTIME_CLIENT_MAY_SET_INSTRUCTIONS = True
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.send({"type": "conversation.item.create", "item": SYSTEM})
    await client.receive_until("conversation.item.done")
    await client.send(
        {"type": "response.create", "response": {"conversation": "none", "input": [SYSTEM]}}
    )
    await client.receive_until("response.done")
    assert [e["type"] for e in fake_upstream.received][1:] == [
        "conversation.item.create",
        "response.create",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
# Items shaped enough like messages with audio to reach every check, with any value anywhere.
items = (
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.just("message") | json_values,
            "role": st.sampled_from(["user", "system", "assistant"]) | json_values,
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.just("input_audio") | json_values},
                    optional={"audio": st.just("AAAA") | json_values},
                )
                | json_values,
                max_size=3,
            )
            | json_values,
        },
    )
    | json_values
)


@hypothesis_settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    item=items,
    where=st.sampled_from(["item.create", "response.input"]),
    scope=st.sampled_from([site_default, full]),
)
def test_any_item_is_forwarded_or_answered(item, where, scope, settings):
    settings.REALTIME_MAX_REFUSED_PER_MINUTE = 100_000
    if where == "item.create":
        event = {"type": "conversation.item.create", "item": item}
    else:
        event = {"type": "response.create", "response": {"input": [item]}}
    verdict = ClientEventPolicy(scope(), model=settings.REALTIME_MODEL).check(json.dumps(event))
    assert (verdict.frame is None) != (verdict.error is None)
    if verdict.error is not None:
        error = orjson.loads(verdict.error)["error"]
        assert error["type"] == "invalid_request_error" and error["code"]
    else:
        assert orjson.loads(verdict.frame) == event
