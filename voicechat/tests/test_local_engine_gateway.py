"""OpenAI's own SDK talks to the local engine through the real gateway (uvicorn, a token)."""

import asyncio
import base64
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from openai import AsyncOpenAI

from voicechat.enums import Backend
from voicechat.tests.conftest import db, finished_conversation
from voicechat.tests.realtime_validation import EventLog, validate_server_event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""


def sdk_for(gateway_server: str, token: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=token,
        base_url=f"http://{gateway_server}/v1",
        websocket_base_url=f"ws://{gateway_server}/v1",
    )


async def collect_until(connection, kind: str, log: EventLog, timeout: float = 60) -> list[dict]:
    events = []
    async with asyncio.timeout(timeout):
        async for event in connection:
            raw = event.to_dict()
            validate_server_event(raw)
            events.append(log.add(raw))
            if raw["type"] == kind:
                return events
    raise AssertionError(f"connection ended before {kind}")


async def test_sdk_text_turns_with_the_local_engine(
    local_backend, gateway_server, alice, alice_token
):
    log = EventLog()
    async with sdk_for(gateway_server, alice_token).realtime.connect(
        model="gpt-realtime"
    ) as connection:
        created = await collect_until(connection, "session.created", log)
        assert created[-1]["session"]["model"] == "gpt-realtime"
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for question, expected in [
            ("My name is Ada.", "Ada"),
            ("What is twelve times seven?", "84"),
            ("What is my name?", "Your name is Ada"),
        ]:
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": question}],
                }
            )
            await connection.response.create()
            events = await collect_until(connection, "response.done", log)
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert expected in text
            assert events[-1]["response"]["status"] == "completed"
        # Bad input gets an error and the session stays open.
        await connection.send({"type": "conversation.item.delete", "item_id": "item_nope"})
        error = (await collect_until(connection, "error", log))[-1]
        assert error["error"]["code"] == "item_delete_invalid_item_id"

    conversation = await finished_conversation(alice)
    assert conversation.backend == Backend.LOCAL
    items = await db(lambda: [(i.role, i.text) for i in conversation.ordered_items()])
    assert items[0] == ("user", "My name is Ada.")
    assert items[-1][0] == "assistant" and "Ada" in items[-1][1]


@pytest.mark.slow
async def test_sdk_voice_turn_with_the_local_engine(
    local_backend, gateway_server, alice, alice_token
):
    from voicechat.tests.speech import spoken

    speech = await asyncio.to_thread(spoken, "What time is it?")
    audio = b"\0" * 48 * 400 + speech + b"\0" * 48 * 900
    log = EventLog()
    async with sdk_for(gateway_server, alice_token).realtime.connect(
        model="gpt-realtime"
    ) as connection:
        await collect_until(connection, "session.updated", log)  # the gateway's defaults
        for i in range(0, len(audio), 1920):
            await connection.input_audio_buffer.append(
                audio=base64.b64encode(audio[i : i + 1920]).decode()
            )
            await asyncio.sleep(0.005)
        events = await collect_until(connection, "response.done", log)
        kinds = [e["type"] for e in events]
        assert "input_audio_buffer.speech_started" in kinds
        assert "input_audio_buffer.committed" in kinds
        heard = [
            e["transcript"]
            for e in log.events
            if e["type"] == "conversation.item.input_audio_transcription.completed"
        ]
        assert heard and "time" in heard[0]
        assert events[-1]["response"]["status"] == "completed"
        reply = events[-1]["response"]["output"][0]["content"][0]["transcript"]
        assert reply.startswith("It's")
        assert sum(1 for k in kinds if k == "response.output_audio.delta") > 3


def spoken_times(zone: str) -> set[str]:
    """The clock as the rules say it in `zone`, now and a minute ago (a minute may turn)."""
    now = datetime.now(ZoneInfo(zone))
    return {t.strftime("%I:%M %p").lstrip("0") for t in (now, now - timedelta(minutes=1))}


@pytest.mark.parametrize(
    ("tz", "zone"),
    [("Pacific/Kiritimati", "Pacific/Kiritimati"), ("Mars/Olympus_Mons", "UTC"), ("", "UTC")],
)
async def test_the_time_is_told_in_the_time_zone_the_page_gives(
    local_backend, gateway_server, alice_token, settings, tz, zone
):
    assert settings.TIME_ZONE == "UTC"  # the server's own, for clients that give none or nonsense
    log = EventLog()
    async with sdk_for(gateway_server, alice_token).realtime.connect(
        model="gpt-realtime", extra_query={"tz": tz}
    ) as connection:
        await collect_until(connection, "session.created", log)
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What time is it?"}],
            }
        )
        await connection.response.create()
        events = await collect_until(connection, "response.done", log)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert any(f"It's {t}." == text for t in spoken_times(zone)), (text, spoken_times(zone))


async def test_offline_sessions_keep_the_engines_semantic_turn_detection(
    local_backend, gateway_server, alice_token, settings
):
    """The gateway's defaults set OpenAI's server_vad for OpenAI only; offline, the engine's
    own LOCAL_TURN_DETECTION (semantic_vad) stays, and the client sees it."""
    assert settings.LOCAL_TURN_DETECTION == "semantic_vad"
    log = EventLog()
    async with sdk_for(gateway_server, alice_token).realtime.connect(
        model="gpt-realtime"
    ) as connection:
        updated = (await collect_until(connection, "session.updated", log))[-1]
    turn_detection = updated["session"]["audio"]["input"]["turn_detection"]
    assert turn_detection["type"] == "semantic_vad"
    # The rest of the gateway's defaults still apply (transcription for the transcript).
    assert updated["session"]["audio"]["input"]["transcription"]["model"]
