"""Each assistant reply stores its latency (end of the user's turn to its first audio sent to the
client), shown in admin and History; the offline engine's stages are stored with it."""

import base64

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from voicechat.enums import Backend, Role
from voicechat.local_engine import speech, vad
from voicechat.models import TranscriptItem
from voicechat.tests.conftest import db, finished_conversation
from voicechat.tests.test_local_engine_push_to_talk import LoudnessVAD
from voicechat.tests.test_local_transcription import ScriptedRecognizer

pytestmark = pytest.mark.django_db(transaction=True)

AUDIO = base64.b64encode(b"\x01\x00" * 960).decode()  # 40 ms of 24 kHz PCM16


def reply(item_id: str, response_id: str) -> list[dict]:
    """A spoken reply as OpenAI streams it, up to its first two audio deltas."""
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"}
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
    return [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {"type": "response.output_item.added", "response_id": response_id, "item": item},
        {"type": "conversation.item.added", "previous_item_id": "u1", "item": item},
        {"type": "response.output_audio.delta", **where, "content_index": 0, "delta": AUDIO},
        {"type": "response.output_audio.delta", **where, "content_index": 0, "delta": AUDIO},
    ]


def reply_done(item_id: str, response_id: str, transcript: str) -> list[dict]:
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
    done = {"id": item_id, "type": "message", "role": "assistant", "status": "completed"}
    return [
        {
            "type": "response.output_audio_transcript.done",
            **where,
            "content_index": 0,
            "transcript": transcript,
        },
        {"type": "conversation.item.done", "item": done},
        {"type": "response.done", "response": {"id": response_id, "status": "completed"}},
    ]


def items_of(conversation) -> list[TranscriptItem]:
    return list(conversation.ordered_items())


async def test_each_spoken_reply_stores_its_latency(
    fake_upstream, alice, alice_token, connect, admin_user
):
    connected, client = await connect(token=alice_token)
    assert connected
    await client.receive_until("session.created")
    await fake_upstream.wait_for("session.update")
    # A voice turn (server VAD): measured from speech_stopped.
    await fake_upstream.push(
        [
            {"type": "input_audio_buffer.speech_stopped", "item_id": "u1"},
            {"type": "input_audio_buffer.committed", "item_id": "u1", "previous_item_id": None},
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "u1",
                "transcript": "Hello there.",
            },
            *reply("a1", "r1"),
            *reply_done("a1", "r1", "Hi! How can I help?"),
        ]
    )
    await client.receive_until("response.done")
    # A reply without audio (text only) stores no latency, and does not measure the next one
    # from its own start.
    await fake_upstream.push(
        [
            {"type": "response.created", "response": {"id": "r2", "status": "in_progress"}},
            {"type": "response.done", "response": {"id": "r2", "status": "completed"}},
        ]
    )
    await client.receive_until("response.done")
    # A typed turn: measured from response.created.
    await fake_upstream.push([*reply("a3", "r3"), *reply_done("a3", "r3", "Sure.")])
    await client.receive_until("response.done")
    await client.communicator.disconnect()

    conversation = await finished_conversation(alice)
    items = {item.item_id: item for item in await db(items_of, conversation)}
    assert items["u1"].latency_ms is None
    for item_id in ("a1", "a3"):
        assert items[item_id].role == Role.ASSISTANT
        assert items[item_id].latency_ms is not None
        assert 0 <= items[item_id].latency_ms < 10_000
        # The stages are the offline engine's only.
        assert items[item_id].transcript_ms is None
        assert items[item_id].first_token_ms is None

    # Made slow, so the pages can be checked for the exact value.
    await db(lambda: TranscriptItem.objects.filter(item_id="a1").update(latency_ms=2345))
    staff = Client()
    await db(staff.force_login, admin_user)
    change = reverse("admin:voicechat_conversation_change", args=[conversation.pk])
    page = (await db(staff.get, change)).content.decode()
    assert "2.35 s" in page
    listing = (await db(staff.get, reverse("admin:voicechat_conversation_changelist"))).content
    assert "2.35 s" in listing.decode()  # the slowest reply, in the list

    owner = Client()
    await db(owner.force_login, alice)
    history = (await db(owner.get, reverse("conversation_detail", args=[conversation.pk]))).content
    assert history.decode().count('data-testid="reply-latency"') == 2
    assert "answered in 2.35 s" in history.decode()


@pytest.fixture
def scripted_local_engine(monkeypatch, settings):
    """The offline engine with a loudness VAD and a scripted recognizer (test_local_engine_*)."""
    from voicechat.local_engine import stt

    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""
    settings.LOCAL_LLM = "none"
    monkeypatch.setattr(vad, "VoiceActivityDetector", LoudnessVAD)
    monkeypatch.setattr(speech, "warm_up", lambda: None)
    monkeypatch.setattr(stt, "get_recognizer", lambda language: ScriptedRecognizer())


async def push_to_talk_turn(connect, user, token: str):
    """One spoken push-to-talk turn and its spoken reply; returns the finished conversation."""
    connected, client = await connect(token=token)
    assert connected
    await client.receive_until("session.created")
    # Push-to-talk: the turn ends at the commit.
    await client.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {
                        "turn_detection": None,
                        "transcription": {"model": "whisper-1", "language": "en"},
                    }
                },
            },
        }
    )
    await client.receive_until("session.updated", timeout=30)
    speech_pcm = np.full(1500 * 24, 3000, dtype="<i2").tobytes()
    for start in range(0, len(speech_pcm), 4800):
        chunk = base64.b64encode(speech_pcm[start : start + 4800]).decode()
        await client.send({"type": "input_audio_buffer.append", "audio": chunk})
    await client.send({"type": "input_audio_buffer.commit"})
    await client.receive_until("conversation.item.input_audio_transcription.completed", timeout=30)
    await client.send({"type": "response.create"})
    await client.receive_until("response.output_audio.delta", timeout=60)
    await client.receive_until("response.done", timeout=60)
    await client.communicator.disconnect()
    return await finished_conversation(user)


async def test_the_offline_engine_stores_its_stages(
    scripted_local_engine, alice, alice_token, connect
):
    conversation = await push_to_talk_turn(connect, alice, alice_token)
    assert conversation.backend == Backend.LOCAL
    replies = [i for i in await db(items_of, conversation) if i.role == Role.ASSISTANT]
    assert len(replies) == 1
    (answer,) = replies
    assert answer.latency_ms is not None
    assert answer.transcript_ms is not None
    assert answer.first_token_ms is not None
    # In the order they happen: the transcript, then the first token, then the first audio.
    assert answer.transcript_ms <= answer.first_token_ms <= answer.latency_ms


def events(meter, *types: str) -> list:
    return [meter.to_client(etype, "{}") for etype in types]


def test_a_turn_ends_at_speech_stopped_else_the_commit_else_response_created():
    from voicechat.monitoring.metrics import ConversationMeter

    meter = ConversationMeter(Backend.OPENAI)
    delta = "response.output_audio.delta"
    # No turn has ended: audio (a greeting asked for earlier) is not measured.
    assert events(meter, delta) == [None]
    for start in (
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
    ):
        first, second = events(meter, start, delta, delta)[1:]
        assert first is not None and second is None  # only the first audio of the reply
    # A reply that ends without audio ends the measurement: later audio is not its latency.
    assert events(meter, "response.created", "response.done", delta)[-1] is None
    # ...but an earlier reply ending after the user spoke again does not end this turn's.
    assert events(meter, "input_audio_buffer.speech_stopped", "response.done", delta)[-1]
