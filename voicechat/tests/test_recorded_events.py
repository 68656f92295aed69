"""The whole GA event set recorded (issue 14, item 5): transcription deltas and diarized
segments, idle timeouts, MCP items, images, out-of-band responses kept apart, and usage with
cached tokens per modality. The fake upstream pushes each event as the provider would."""

import pytest

from voicechat.models import TranscriptItem, UsageRecord
from voicechat.records.recorder import IMAGE_SENT
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


def user_item(item_id: str) -> dict:
    return {"id": item_id, "type": "message", "role": "user", "status": "completed", "content": []}


async def record(fake_upstream, alice, alice_token, connect, events: list[dict]):
    """Push `events` through the gateway; the conversation once it is stored."""
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push([*events, {"type": "input_audio_buffer.cleared"}])
    await client.receive_until("input_audio_buffer.cleared")
    await client.communicator.disconnect()
    return await finished_conversation(alice)


async def items(conversation) -> dict[str, TranscriptItem]:
    return await db(lambda: {item.item_id: item for item in conversation.items.all()})


async def test_partial_transcripts_stand_in_until_the_final_one(
    fake_upstream, alice, alice_token, connect
):
    delta = {"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_u"}
    conversation = await record(
        fake_upstream,
        alice,
        alice_token,
        connect,
        [
            {
                "type": "conversation.item.added",
                "previous_item_id": None,
                "item": user_item("item_u"),
            },
            {**delta, "content_index": 0, "delta": "Hello"},
            {**delta, "content_index": 0, "delta": " there"},
            {
                "type": "conversation.item.added",
                "previous_item_id": None,
                "item": user_item("item_v"),
            },
            {**delta, "item_id": "item_v", "content_index": 0, "delta": "Still talk"},
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_u",
                "content_index": 0,
                "transcript": "Hello there.",
            },
        ],
    )
    stored = await items(conversation)
    assert (stored["item_u"].text, stored["item_u"].status) == ("Hello there.", "completed")
    assert stored["item_v"].text == "Still talk"  # the words so far, never completed


async def test_diarized_segments_are_kept_in_order(fake_upstream, alice, alice_token, connect):
    segment = {"type": "conversation.item.input_audio_transcription.segment", "item_id": "item_d"}
    conversation = await record(
        fake_upstream,
        alice,
        alice_token,
        connect,
        [
            {
                "type": "conversation.item.added",
                "previous_item_id": None,
                "item": user_item("item_d"),
            },
            {**segment, "id": "seg_1", "speaker": "A", "text": "Hi.", "start": 0.0, "end": 0.8},
            {**segment, "id": "seg_2", "speaker": "B", "text": "Hello!", "start": 0.9, "end": 1.5},
            {
                **segment,
                "id": "seg_3",
                "speaker": ["x"],
                "text": {"no": 1},
                "start": -4,
                "end": "x",
            },
        ],
    )
    segments = (await items(conversation))["item_d"].segments
    assert segments[:2] == [
        {"id": "seg_1", "speaker": "A", "text": "Hi.", "start": 0.0, "end": 0.8},
        {"id": "seg_2", "speaker": "B", "text": "Hello!", "start": 0.9, "end": 1.5},
    ]
    # A malformed segment is kept as far as it is usable, never refused whole.
    assert segments[2]["id"] == "seg_3" and segments[2]["start"] == 0.0
    assert segments[2]["end"] is None and segments[2]["speaker"] == ""


async def test_idle_timeouts_mcp_items_and_images(fake_upstream, alice, alice_token, connect):
    mcp_call = {
        "id": "item_m",
        "type": "mcp_call",
        "server_label": "docs",
        "name": "search",
        "arguments": '{"q":"refunds"}',
        "output": "3 pages",
    }
    image = {
        "id": "item_i",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}],
    }
    conversation = await record(
        fake_upstream,
        alice,
        alice_token,
        connect,
        [
            {
                "type": "input_audio_buffer.timeout_triggered",
                "item_id": "item_t",
                "audio_start_ms": 0,
                "audio_end_ms": 6000,
            },
            {"type": "conversation.item.done", "previous_item_id": None, "item": mcp_call},
            {"type": "conversation.item.done", "previous_item_id": "item_m", "item": image},
        ],
    )
    stored = await items(conversation)
    assert (stored["item_t"].kind, stored["item_t"].role) == ("idle_timeout", "user")
    assert stored["item_m"].text == 'docs.search({"q":"refunds"}) -> 3 pages'
    assert stored["item_m"].role == "assistant"
    assert stored["item_i"].text == IMAGE_SENT


async def test_out_of_band_responses_are_kept_apart(fake_upstream, alice, alice_token, connect):
    response = {"id": "resp_oob", "object": "realtime.response", "status": "in_progress"}
    conversation = await record(
        fake_upstream,
        alice,
        alice_token,
        connect,
        [
            {
                "type": "conversation.item.added",
                "previous_item_id": None,
                "item": user_item("item_u"),
            },
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_u",
                "content_index": 0,
                "transcript": "What did we talk about?",
            },
            {"type": "response.created", "response": {**response, "conversation_id": None}},
            {
                "type": "response.output_text.done",
                "response_id": "resp_oob",
                "item_id": "item_summary",
                "output_index": 0,
                "content_index": 0,
                "text": "Topic: weekend plans.",
            },
        ],
    )
    main = await db(lambda: [item.item_id for item in conversation.ordered_items()])
    apart = await db(lambda: [item.text for item in conversation.out_of_band_items()])
    assert main == ["item_u"]
    assert apart == ["Topic: weekend plans."]


async def test_usage_keeps_cached_tokens_per_modality(fake_upstream, alice, alice_token, connect):
    usage = {
        "total_tokens": 260,
        "input_tokens": 200,
        "output_tokens": 60,
        "input_token_details": {
            "text_tokens": 100,
            "audio_tokens": 60,
            "image_tokens": 40,
            "cached_tokens": 70,
            "cached_tokens_details": {"text_tokens": 30, "audio_tokens": 20, "image_tokens": 20},
        },
        "output_token_details": {"text_tokens": 10, "audio_tokens": 50},
    }
    response = {"id": "resp_u", "object": "realtime.response", "status": "completed"}
    conversation = await record(
        fake_upstream,
        alice,
        alice_token,
        connect,
        [{"type": "response.done", "response": {**response, "output": [], "usage": usage}}],
    )
    record_ = await db(UsageRecord.objects.get, conversation=conversation)
    assert (record_.input_image_tokens, record_.input_cached_image_tokens) == (40, 20)
    assert (record_.input_cached_tokens, record_.input_cached_audio_tokens) == (70, 20)


async def test_an_image_the_client_sends_is_stored_as_a_mention(
    fake_upstream, alice, alice_token, connect
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    text = {"type": "input_text", "text": "What is in this picture?"}
    item = {"type": "message", "role": "user", "content": [text, image]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.receive_until("conversation.item.done")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    [stored] = await db(lambda: list(conversation.items.all()))
    assert stored.text == f"What is in this picture? {IMAGE_SENT}"
