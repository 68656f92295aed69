"""Transcripts and usage are stored in conversation order, whatever order the events came in."""

from decimal import Decimal

import pytest

from voicechat.enums import EndReason, ItemStatus
from voicechat.models import Conversation, TranscriptItem, UsageRecord
from voicechat.services import TokenCounts
from voicechat.tests.conftest import db
from voicechat.tests.fake_upstream import USAGE, load_fixture

pytestmark = pytest.mark.django_db(transaction=True)

# USAGE priced at gpt-realtime rates: (300*4 + 100*0.4 + 400*32 + 200*0.4 + 50*16 + 150*64) / 1e6
USAGE_COST = Decimal("0.024520")


async def _conversation(alice) -> Conversation:
    return await db(Conversation.objects.get, user=alice)


async def test_voice_turns_are_stored_in_conversation_order(
    fake_upstream, alice, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    events = load_fixture("two_voice_turns_late_transcripts_barge_in")
    await fake_upstream.push(events)
    received = [await client.receive() for _ in events]
    assert [e["type"] for e in received] == [e["type"] for e in events]
    await client.communicator.disconnect()

    conversation = await _conversation(alice)
    items = await db(conversation.ordered_items)
    assert [(i.item_id, i.role) for i in items] == [
        ("item_u1", "user"),
        ("item_a1", "assistant"),
        ("item_u2", "user"),
        ("item_a2", "assistant"),
    ]
    assert [i.text for i in items] == [
        "Hello, who are you?",
        "Hi there! I am your assistant. How can I help?",
        "What's the weather tomorrow?",
        "Tomorrow will be sunny",
    ]
    assert [i.status for i in items] == ["completed", "completed", "completed", "truncated"]
    assert items[3].audio_end_ms == 640
    # The late transcription did not change where the first line sits.
    first_arrived = await db(
        lambda: list(TranscriptItem.objects.order_by("updated").values_list("item_id", flat=True))
    )
    assert first_arrived[-1] in ("item_u2", "item_a2")


async def test_usage_and_cost_per_response(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push(load_fixture("two_voice_turns_late_transcripts_barge_in"))
    await client.receive_until("conversation.item.input_audio_transcription.completed")
    await client.receive_until("conversation.item.input_audio_transcription.completed")
    await client.communicator.disconnect()

    conversation = await _conversation(alice)
    records = await db(
        lambda: list(UsageRecord.objects.filter(conversation=conversation).order_by("pk"))
    )
    # Each input transcription is billed too, at its own model's prices (its own record).
    transcriptions = [r for r in records if r.status == "transcription"]
    records = [r for r in records if r.status != "transcription"]
    assert [(r.response_id, r.status) for r in records] == [
        ("resp_1", "completed"),
        ("resp_2", "cancelled"),
    ]
    assert len(transcriptions) == 2 and all(r.cost_usd > 0 for r in transcriptions)
    first = records[0]
    assert (first.input_text_tokens, first.input_audio_tokens, first.input_cached_tokens) == (
        400,
        600,
        300,
    )
    assert (first.output_text_tokens, first.output_audio_tokens) == (50, 150)
    assert first.cost_usd == USAGE_COST
    transcribed_in = sum(r.input_tokens for r in transcriptions)
    transcribed_out = sum(r.output_tokens for r in transcriptions)
    assert (conversation.input_tokens, conversation.output_tokens, conversation.cached_tokens) == (
        2000 + transcribed_in,
        400 + transcribed_out,
        600,
    )
    assert conversation.cost_usd == 2 * USAGE_COST + sum(r.cost_usd for r in transcriptions)


def test_mini_is_cheaper():
    # An unpriced model is never billed as free: test_prices.py.
    counts = TokenCounts.from_usage(USAGE)
    assert 0 < counts.cost("gpt-realtime-mini") < counts.cost("gpt-realtime") == USAGE_COST


async def test_text_turn_through_the_fake_upstream_is_stored(
    fake_upstream, alice, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Tell me a joke"}],
            },
        }
    )
    await client.send({"type": "response.create"})
    await client.receive_until("response.done")
    await client.communicator.disconnect()
    items = await db((await _conversation(alice)).ordered_items)
    assert [(i.role, i.text, i.status) for i in items] == [
        ("user", "Tell me a joke", "completed"),
        ("assistant", "Hello from the fake upstream.", "completed"),
    ]


async def test_a_line_is_stored_even_if_the_client_drops_right_after(
    fake_upstream, alice, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push(
        [
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": None,
                "item_id": "item_last",
            },
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_last",
                "content_index": 0,
                "transcript": "One last thing",
                "usage": {"type": "duration", "seconds": 1},
            },
        ]
    )
    await client.receive_until("conversation.item.input_audio_transcription.completed")
    await client.communicator.disconnect()
    item = await db(TranscriptItem.objects.get, item_id="item_last")
    assert item.text == "One last thing"


async def test_a_line_is_stored_even_if_the_upstream_drops_right_after(
    fake_upstream, alice, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push(
        [
            {
                "type": "response.output_text.done",
                "response_id": "r",
                "item_id": "item_t",
                "output_index": 0,
                "content_index": 0,
                "text": "Goodbye",
            }
        ]
    )
    await fake_upstream.drop()
    await client.receive_close()
    await client.communicator.disconnect()
    conversation = await _conversation(alice)
    assert conversation.end_reason == EndReason.UPSTREAM_CLOSED
    item = await db(TranscriptItem.objects.get, item_id="item_t")
    assert (item.role, item.text) == ("assistant", "Goodbye")


async def test_deleted_and_failed_items(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push(
        [
            {"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": "item_x"},
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": "item_x",
                "content_index": 0,
                "error": {
                    "type": "transcription_error",
                    "code": "audio_unintelligible",
                    "message": "?",
                    "param": None,
                },
            },
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": "item_x",
                "item_id": "item_y",
            },
            {"type": "conversation.item.deleted", "item_id": "item_y"},
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_y",
                "content_index": 0,
                "transcript": "too late",
                "usage": {"type": "duration", "seconds": 1},
            },
        ]
    )
    await client.receive_until("conversation.item.input_audio_transcription.completed")
    await client.communicator.disconnect()
    statuses = await db(lambda: dict(TranscriptItem.objects.values_list("item_id", "status")))
    assert statuses == {"item_x": ItemStatus.TRANSCRIPTION_FAILED, "item_y": ItemStatus.DELETED}


async def test_local_engine_usage_is_recorded_but_never_billed(
    settings, alice, alice_token, connect
):
    settings.REALTIME_BACKEND = "local"
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.created")
    await client.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is two plus two?"}],
            },
        }
    )
    await client.send({"type": "response.create"})
    await client.receive_until("response.done", timeout=30)
    await client.communicator.disconnect()
    conversation = await _conversation(alice)
    assert conversation.backend == "local"
    assert conversation.output_tokens > 0
    assert conversation.cost_usd == 0
