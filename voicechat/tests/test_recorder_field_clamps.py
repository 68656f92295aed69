"""A bad field from the upstream is stored checked and clamped; it never costs the other lines.

Each test feeds one batch (everything is observed before the writer first runs), as the attack
in issue 13 did: one field the database refuses used to lose every line of its batch.
"""

import json

import pytest

from voicechat.enums import ItemStatus
from voicechat.models import Conversation, TranscriptItem, UsageRecord
from voicechat.records import clamp
from voicechat.records.recorder import TranscriptRecorder
from voicechat.services import ItemChange, RecorderBatch, conversation_start
from voicechat.tests.conftest import db
from voicechat.tests.fake_upstream import USAGE

pytestmark = pytest.mark.django_db(transaction=True)

LONG_ID = "item_" + "x" * 95  # 100 characters; the column holds 64
HUGE = "la " * 400_000  # 1.2 million characters


def _frame(event: dict) -> tuple[str, str]:
    return event["type"], json.dumps(event)


def _user_line(item_id, transcript) -> tuple[str, str]:
    return _frame(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "transcript": transcript,
        }
    )


def _assistant_line(item_id, transcript) -> tuple[str, str]:
    return _frame(
        {
            "type": "response.output_audio_transcript.done",
            "item_id": item_id,
            "transcript": transcript,
        }
    )


async def _record(alice, frames: list[tuple[str, str]]) -> Conversation:
    conversation = await db(
        conversation_start, user=alice, backend="openai", model="gpt-realtime", voice="marin"
    )
    recorder = TranscriptRecorder(conversation_id=conversation.pk, price_model="gpt-realtime")
    recorder.start()
    for etype, frame in frames:
        recorder.observe(etype, frame)
    await recorder.close()
    return await db(Conversation.objects.get, pk=conversation.pk)


async def _lines(conversation) -> dict[str, TranscriptItem]:
    items = await db(lambda: list(TranscriptItem.objects.filter(conversation=conversation)))
    return {item.item_id: item for item in items}


async def test_bad_fields_are_clamped_and_every_other_line_is_stored(alice):
    conversation = await _record(
        alice,
        [
            _user_line("item_u1", "Hello there"),
            _user_line(LONG_ID, "A line with a long id"),
            _assistant_line("item_a1", "Hi! How can I help?"),
            _frame(
                {"type": "conversation.item.truncated", "item_id": "item_a1", "audio_end_ms": -640}
            ),
            _assistant_line("item_a2", HUGE),
            _user_line("item_u2", {"nested": ["an", "object"]}),
            _frame(
                {
                    "type": "conversation.item.done",
                    "item": {
                        "id": "item_u3",
                        "type": ["not", "a", "type"],
                        "role": {"not": "a role"},
                        "status": ["completed"],
                        "content": [{"type": "input_text", "text": "typed\x00text"}],
                    },
                }
            ),
            _assistant_line("item_a3", "Still here."),
        ],
    )
    lines = await _lines(conversation)
    assert lines["item_u1"].text == "Hello there"
    assert lines["item_a3"].text == "Still here."
    # The long id is kept recognisable and unique, within the column.
    (long_id,) = [item_id for item_id in lines if item_id.startswith("item_xxx")]
    assert len(long_id) == clamp.ITEM_ID_LENGTH
    assert lines[long_id].text == "A line with a long id"
    assert lines["item_a1"].status == ItemStatus.TRUNCATED
    assert lines["item_a1"].audio_end_ms == 0
    assert len(lines["item_a2"].text) == clamp.MAX_TEXT
    assert lines["item_a2"].text.startswith("la la")
    assert json.loads(lines["item_u2"].text) == {"nested": ["an", "object"]}
    assert lines["item_u3"].text == "typed\ufffdtext"
    assert lines["item_u3"].kind == "message"


async def test_a_later_event_about_a_long_id_updates_the_same_line(alice):
    conversation = await _record(
        alice,
        [
            _assistant_line(LONG_ID, "First words"),
            _frame({"type": "conversation.item.truncated", "item_id": LONG_ID, "audio_end_ms": 90}),
            _assistant_line(LONG_ID[:-1] + "y", "Another item"),
        ],
    )
    lines = await _lines(conversation)
    assert len(lines) == 2
    (first,) = [item for item in lines.values() if item.text == "First words"]
    assert first.status == ItemStatus.TRUNCATED and first.audio_end_ms == 90


async def test_non_numeric_token_counts_count_zero_and_keep_the_lines(alice):
    usage = {
        **USAGE,
        "input_tokens": "a thousand",
        "output_tokens": 2**40,
        "input_token_details": {**USAGE["input_token_details"], "audio_tokens": [600]},
        "output_token_details": "none",
    }
    conversation = await _record(
        alice,
        [
            _user_line("item_u1", "What's the time?"),
            _frame(
                {
                    "type": "response.done",
                    "response": {"id": "resp_" + "r" * 80, "status": 7, "usage": usage},
                }
            ),
            _assistant_line("item_a1", "Noon."),
        ],
    )
    assert set(await _lines(conversation)) == {"item_u1", "item_a1"}
    record = await db(UsageRecord.objects.get, conversation=conversation)
    assert record.input_tokens == 0
    assert record.output_tokens == clamp.MAX_WHOLE_NUMBER
    assert record.input_audio_tokens == 0
    assert record.output_audio_tokens == 0
    assert record.input_text_tokens == 400
    assert record.status == ""
    assert len(record.response_id) == clamp.RESPONSE_ID_LENGTH
    assert conversation.output_tokens == clamp.MAX_WHOLE_NUMBER


async def test_a_row_the_database_refuses_on_its_own_costs_no_other(alice, settings, tmp_path):
    """Past the checks (a field they do not know yet): row by row, the refused row set aside."""
    settings.TRANSCRIPT_SPILL_DIR = str(tmp_path)
    conversation = await db(
        conversation_start, user=alice, backend="local", model="m", voice="marin"
    )
    recorder = TranscriptRecorder(conversation_id=conversation.pk, price_model="")
    recorder.start()
    recorder.observe(*_user_line("item_u1", "Before"))
    # A negative offset, as the old recorder passed it on: the database's check refuses it.
    recorder._batch.items.append(
        ItemChange(item_id="item_bad", status=ItemStatus.TRUNCATED, audio_end_ms=-5)
    )
    recorder.observe(*_assistant_line("item_a1", "After"))
    await recorder.close()
    lines = await _lines(conversation)
    assert {item_id: item.text for item_id, item in lines.items()} == {
        "item_u1": "Before",
        "item_a1": "After",
    }
    (refused,) = tmp_path.glob("*.refused.jsonl")
    record = json.loads(refused.read_text())
    assert RecorderBatch.from_dict(record["batch"]).items[0].item_id == "item_bad"


async def test_through_the_gateway_the_client_s_two_lines_are_both_stored(
    fake_upstream, alice, alice_token, connect
):
    """The attack of issue 13: the client saw both lines, and 0 of 2 were stored."""
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    events = [
        json.loads(frame)
        for _, frame in (
            _user_line(LONG_ID, "First line"),
            _assistant_line("item_a1", "Second line"),
            _frame(
                {"type": "conversation.item.truncated", "item_id": "item_a1", "audio_end_ms": -1}
            ),
            _frame(
                {
                    "type": "response.done",
                    "response": {"id": "resp_1", "usage": {**USAGE, "input_tokens": "many"}},
                }
            ),
        )
    ]
    await fake_upstream.push(events)
    await client.receive_until("response.done")
    await client.communicator.disconnect()
    conversation = await db(Conversation.objects.get, user=alice)
    texts = sorted(item.text for item in (await _lines(conversation)).values())
    assert texts == ["First line", "Second line"]
    assert await db(UsageRecord.objects.filter(conversation=conversation).count) == 1
