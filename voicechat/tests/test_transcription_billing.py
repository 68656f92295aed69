"""Input transcriptions are billed at their own model's prices (issue 14: budgets count every
model), by tokens or by the minute; a transcription model without a price stops the start."""

from decimal import Decimal

import pytest
from django.core.checks import run_checks

from voicechat.models import UsageRecord
from voicechat.services import transcription_cost
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)

TOKENS = {
    "type": "tokens",
    "input_tokens": 400,
    "output_tokens": 20,
    "total_tokens": 420,
    "input_token_details": {"text_tokens": 0, "audio_tokens": 400},
}


def test_costs_by_tokens_and_by_the_minute():
    # 400 audio tokens at $1.25/M and 20 text tokens at $5.00/M.
    assert transcription_cost("gpt-4o-mini-transcribe", TOKENS) == Decimal("0.000600")
    # 90 s at $0.006 a minute.
    assert transcription_cost("whisper-1", {"type": "duration", "seconds": 90}) == Decimal(
        "0.009000"
    )
    # A usage of the wrong shape costs nothing rather than breaking the recorder.
    assert transcription_cost("whisper-1", {"type": "duration", "seconds": "lots"}) == 0


async def test_a_conversation_counts_its_transcriptions(fake_upstream, alice, alice_token, connect):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")  # the gateway's: gpt-4o-mini-transcribe
    await fake_upstream.push(
        [
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_u",
                "content_index": 0,
                "transcript": "Hello.",
                "usage": TOKENS,
            },
            {"type": "input_audio_buffer.cleared"},
        ]
    )
    await client.receive_until("input_audio_buffer.cleared")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    record = await db(UsageRecord.objects.get, conversation=conversation)
    assert (record.response_id, record.status) == ("transcription:item_u", "transcription")
    assert record.cost_usd == Decimal("0.000600")
    assert conversation.cost_usd == Decimal("0.000600")


async def test_the_offline_engine_is_never_billed(alice, alice_token, connect, settings):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    assert conversation.cost_usd == 0


def test_an_unpriced_transcription_model_stops_the_start(settings):
    settings.REALTIME_TRANSCRIPTION_MODELS = [*settings.REALTIME_TRANSCRIPTION_MODELS, "gpt-new"]
    errors = [e for e in run_checks() if e.id == "voicechat.E202"]
    assert len(errors) == 1 and "'gpt-new'" in errors[0].msg


def test_a_token_priced_model_that_reports_seconds_is_estimated_not_free():
    # 12 s of audio at about 10 tokens a second, at $1.25 per million.
    cost = transcription_cost("gpt-4o-mini-transcribe", {"type": "duration", "seconds": 12})
    assert cost == Decimal("0.000150")
