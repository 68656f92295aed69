"""A conversation outlives its upstream session (issue 17, item 1): after
REALTIME_RECYCLE_AFTER_SECONDS, at a quiet moment, the gateway moves it to a fresh upstream
session with the same configuration and its transcript replayed, and the client's socket never
notices. Tested with a short limit, on the offline engine and on the fake OpenAI upstream.
"""

import asyncio

import pytest

from voicechat.models import Conversation
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


def typed(text: str) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


@pytest.fixture
def recycle_soon(settings):
    settings.REALTIME_RECYCLE_AFTER_SECONDS = 0.5
    settings.REALTIME_RECYCLE_GRACE_SECONDS = 5


async def recycled(user, times: int = 1) -> Conversation:
    async with asyncio.timeout(30):
        while True:
            conversation = await db(Conversation.objects.filter(user=user).first)
            if conversation.recycles >= times:
                return conversation
            await asyncio.sleep(0.05)


async def test_the_offline_assistant_remembers_across_a_fresh_session(
    recycle_soon, alice, alice_token, connect, settings
):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    _, client = await connect(token=alice_token)
    seen = await client.receive_until("session.updated")
    await client.send(typed("My name is Ada."))
    await client.send({"type": "response.create"})
    seen += await client.receive_until("response.done", timeout=30)
    conversation = await recycled(alice)
    assert conversation.last_recycled is not None

    await client.send(typed("What is my name?"))
    await client.send({"type": "response.create"})
    events = await client.receive_until("response.done", timeout=30)
    [content] = events[-1]["response"]["output"][0]["content"]
    assert content["transcript"] == "Your name is Ada."
    seen += events
    # The client saw one session, and none of the replay.
    assert [e["type"] for e in seen].count("session.created") == 1
    assert not [e for e in seen if str(e.get("item", {}).get("id", "")).startswith("ctx_")]

    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    lines = await db(lambda: [(item.role, item.text) for item in conversation.ordered_items()])
    assert lines == [
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada!"),
        ("user", "What is my name?"),
        ("assistant", "Your name is Ada."),
    ]


async def test_the_fresh_session_gets_the_configuration_and_the_transcript(
    recycle_soon, fake_upstream, alice, alice_token, connect
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    voice = {"type": "session.update", "session": {"audio": {"output": {"voice": "cedar"}}}}
    await client.send(voice)
    await client.receive_until("session.updated")
    await client.send(typed("Say hello"))
    await client.send({"type": "response.create"})
    await client.receive_until("response.done")
    await recycled(alice)

    first = fake_upstream.connections[0]
    await asyncio.wait_for(first.wait_closed(), 10)
    # The first session got the defaults, the voice, the typed line and response.create: the
    # rest went to the second.
    received = fake_upstream.received[4:]
    assert [event["type"] for event in received[:2]] == ["session.update", "session.update"]
    assert received[1]["session"]["audio"]["output"]["voice"] == "cedar"  # the client's own
    replayed = [e["item"] for e in received if e["type"] == "conversation.item.create"]
    assert [(item["role"], item["content"][0]["text"]) for item in replayed] == [
        ("user", "Say hello"),
        ("assistant", "Hello from the fake upstream."),
    ]
    assert received[len(replayed) + 2]["type"] == "input_audio_buffer.clear"

    # The socket never closed: what the client sends now goes to the fresh session (the first
    # is closed).
    await client.send({"type": "input_audio_buffer.commit", "event_id": "after"})
    await client.receive_until("input_audio_buffer.committed")
    assert fake_upstream.received[-1]["event_id"] == "after"


async def test_a_recycle_waits_for_a_quiet_moment_then_goes_ahead_regardless(
    fake_upstream, alice, alice_token, connect, settings
):
    settings.REALTIME_RECYCLE_AFTER_SECONDS = 0.3
    settings.REALTIME_RECYCLE_GRACE_SECONDS = 1.5
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    # A reply that never finishes: the moment never gets quiet.
    response = {"id": "resp_long", "object": "realtime.response", "status": "in_progress"}
    await fake_upstream.push([{"type": "response.created", "response": response}])
    await client.receive_until("response.created")
    await asyncio.sleep(1.0)  # due, but the reply is still being made: not yet
    assert (await db(Conversation.objects.get, user=alice)).recycles == 0
    await recycled(alice)  # the grace period is over: moved regardless
    assert len(fake_upstream.connections) >= 2


def test_admin_shows_how_often_a_conversation_moved_to_a_fresh_session(admin_client, alice):
    from django.urls import reverse
    from django.utils.timezone import now

    from voicechat.services import conversation_start

    conversation = conversation_start(user=alice, backend="openai", model="gpt-realtime", voice="")
    Conversation.objects.filter(pk=conversation.pk).update(recycles=2, last_recycled=now())
    page = admin_client.get(reverse("admin:voicechat_conversation_change", args=[conversation.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Recycles" in html and '<div class="readonly">2</div>' in html


async def test_three_recycles_keep_one_transcript_in_order(
    recycle_soon, alice, alice_token, connect, settings
):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    said = []
    for times, text in enumerate(
        ["My name is Ada.", "What is twelve times seven?", "What is my name?"], start=1
    ):
        await client.send(typed(text))
        await client.send({"type": "response.create"})
        done = (await client.receive_until("response.done", timeout=30))[-1]["response"]
        said.append(done["output"][0])
        await recycled(alice, times)
    assert said[-1]["content"][0]["transcript"] == "Your name is Ada."

    # An item from before the first move is unknown to today's session: a clear error.
    first_reply = said[0]["id"]
    await client.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "old_item",
            "item_id": first_reply,
            "content_index": 0,
            "audio_end_ms": 100,
        }
    )
    error = (await client.receive_until("error"))[-1]["error"]
    assert (error["event_id"], error["param"]) == ("old_item", "item_id")

    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    assert conversation.recycles >= 3
    lines = await db(lambda: [item.text for item in conversation.ordered_items()])
    assert lines == [
        "My name is Ada.",
        "Nice to meet you, Ada!",
        "What is twelve times seven?",
        "12 times 7 is 84.",
        "What is my name?",
        "Your name is Ada.",
    ]


async def test_a_failed_move_keeps_the_old_session_and_is_tried_again(
    recycle_soon, fake_upstream, alice, alice_token, connect, monkeypatch
):
    monkeypatch.setattr("voicechat.gateway.conversation.RECYCLE_RETRY_SECONDS", 0.3)
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    fake_upstream.reject_status = 503  # the provider refuses new sessions for a while
    await fake_upstream.wait_for("session.update", count=1)
    async with asyncio.timeout(10):
        while len(fake_upstream.request_paths) < 3:  # tried, and tried again
            await asyncio.sleep(0.05)
    await client.send({"type": "input_audio_buffer.commit", "event_id": "meanwhile"})
    await client.receive_until("input_audio_buffer.committed")  # the old session goes on
    assert (await db(Conversation.objects.get, user=alice)).recycles == 0

    fake_upstream.reject_status = None
    await recycled(alice)
    await client.send({"type": "input_audio_buffer.commit", "event_id": "after"})
    await client.receive_until("input_audio_buffer.committed")
