"""Property-based fuzzing: whatever a client sends, the gateway answers or forwards, never breaks."""

import base64
import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from voicechat.gateway.policy import CLIENT_EVENTS
from voicechat.models import Conversation, TranscriptItem
from voicechat.tests.conftest import PROVIDER_KEY, Client, db, gateway_communicator
from voicechat.tests.fake_upstream import FakeRealtimeServer

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 20
FRAMES_PER_EXAMPLE = (50, 60)  # at least 20 x 50 = 1,000 frames per run

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
event_types = (
    st.sampled_from(sorted(CLIENT_EVENTS))
    | st.text(max_size=30)
    | st.sampled_from(
        ["response.audio.delta", "transcription_session.update", "session.created", "error"]
    )
)
events = st.fixed_dictionaries(
    {"type": event_types},
    optional={
        "event_id": st.text(max_size=20) | st.integers(),
        "audio": st.text(max_size=64)
        | st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
        "session": json_values,
        "response": json_values,
        "item": json_values,
        "item_id": st.text(max_size=12),
        "audio_end_ms": st.integers(),
    },
)
text_frames = st.one_of(
    events.map(json.dumps),
    json_values.map(json.dumps),
    st.text(min_size=1, max_size=200),  # mostly invalid JSON
    st.integers(min_value=500, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=300_000, max_value=400_000).map(
        lambda n: json.dumps({"type": "input_audio_buffer.append", "audio": "A" * n})
    ),
    st.builds(
        lambda t: json.dumps({"type": "input_audio_buffer.append", "audio": t}),
        st.text(max_size=50),
    ),
)
frames = st.one_of(
    text_frames.map(lambda t: ("text", t)),
    st.binary(min_size=1, max_size=64).map(lambda b: ("bytes", b)),
)


@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(frames, min_size=FRAMES_PER_EXAMPLE[0], max_size=FRAMES_PER_EXAMPLE[1]))
async def test_every_frame_is_answered_or_forwarded(batch, settings, alice, alice_token):
    settings.REALTIME_MAX_REFUSED_PER_MINUTE = 100_000  # the abuse close has its own test
    settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP = (
        settings.REALTIME_CONNECTS_PER_MINUTE_PER_USER
    ) = 0
    async with FakeRealtimeServer() as upstream:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL = PROVIDER_KEY, upstream.url
        settings.REALTIME_BACKEND = "openai"
        communicator = gateway_communicator(token=alice_token)
        connected, _ = await communicator.connect()
        assert connected
        client = Client(communicator)
        try:
            await client.receive_until("session.updated")
            await upstream.push(
                [
                    {
                        "type": "conversation.item.input_audio_transcription.completed",
                        "item_id": "item_keep",
                        "content_index": 0,
                        "transcript": "Keep me",
                        "usage": {"type": "duration", "seconds": 1},
                    }
                ]
            )
            await client.receive_until("conversation.item.input_audio_transcription.completed")
            for n, (kind, frame) in enumerate(batch):
                forwarded_before = len(upstream.received)
                if kind == "text":
                    await communicator.send_to(text_data=frame)
                else:
                    await communicator.send_to(bytes_data=frame)
                sentinel = f"sentinel_{n}"
                await client.send({"type": "input_audio_buffer.clear", "event_id": sentinel})
                answered = []
                while True:
                    event = await client.receive()
                    if (
                        event["type"] == "input_audio_buffer.cleared"
                        and upstream.received[-1].get("event_id") == sentinel
                    ):
                        break
                    answered.append(event)
                gateway_errors = [
                    e
                    for e in answered
                    if e["type"] == "error" and e["event_id"].startswith("event_gw")
                ]
                forwarded = len(upstream.received) - forwarded_before - 1  # minus the sentinel
                assert (len(gateway_errors), forwarded) in ((1, 0), (0, 1)), (frame, answered)
            assert {e["type"] for e in upstream.received} <= CLIENT_EVENTS
            assert upstream.request_headers[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
        finally:
            await communicator.disconnect()
    conversation = await db(lambda: Conversation.objects.filter(user=alice).latest("started"))
    kept = await db(TranscriptItem.objects.get, conversation=conversation, item_id="item_keep")
    assert kept.text == "Keep me"
