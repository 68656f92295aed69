"""The session fields the SDK knows since the first GA release pass the gateway, well typed,
and the offline engine reports them back in a session.updated that validates strictly."""

import pytest

from voicechat.tests.local_engine_client import EngineClient
from voicechat.tests.realtime_validation import validate_server_event

pytestmark = pytest.mark.django_db(transaction=True)

CURRENT_FIELDS = {
    "type": "realtime",
    "reasoning": {"effort": "low"},
    "parallel_tool_calls": False,
    "include": ["item.input_audio_transcription.logprobs"],
    "truncation": {
        "type": "retention_ratio",
        "retention_ratio": 0.8,
        "token_limits": {"post_instructions": 8000},
    },
    "audio": {
        "input": {
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": 600,
                "idle_timeout_ms": 15000,
            }
        }
    },
}


@pytest.fixture
async def client(fake_upstream, alice_token, connect):
    connected, client = await connect(token=alice_token)
    assert connected
    await client.receive_until("session.updated")  # the server's defaults
    return client


async def test_current_fields_reach_the_upstream(client, fake_upstream):
    await client.send({"type": "session.update", "session": CURRENT_FIELDS})
    session = validate_server_event(await client.receive()).session
    assert fake_upstream.received[-1]["session"] == CURRENT_FIELDS
    assert session.reasoning.effort == "low" and session.parallel_tool_calls is False
    assert session.truncation.retention_ratio == 0.8
    assert session.audio.input.turn_detection.idle_timeout_ms == 15000


async def test_semantic_vad_replaces_server_vad(client):
    semantic = {"type": "semantic_vad", "eagerness": "high", "create_response": True}
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": semantic}}},
        }
    )
    session = validate_server_event(await client.receive()).session
    assert session.audio.input.turn_detection.model_dump(exclude_none=True) == semantic


async def test_response_create_may_set_reasoning(client, fake_upstream):
    response = {"reasoning": {"effort": "minimal"}, "parallel_tool_calls": True}
    await client.send({"type": "response.create", "response": response})
    await client.receive_until("response.done")
    assert fake_upstream.received[-1]["response"] == response


@pytest.mark.parametrize(
    ("session", "param", "code"),
    [
        ({"parallel_tool_calls": "yes"}, "session.parallel_tool_calls", "invalid_type"),
        ({"reasoning": {"effort": 3}}, "session.reasoning.effort", "invalid_type"),
        ({"reasoning": "high"}, "session.reasoning", "invalid_type"),
        ({"reasoning": {"budget": 100}}, "session.reasoning.budget", "field_not_allowed"),
        ({"include": "logprobs"}, "session.include", "invalid_type"),
        (
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": "5s"}}
                }
            },
            "session.audio.input.turn_detection.idle_timeout_ms",
            "invalid_type",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "model": "x"}}}},
            "session.audio.input.turn_detection.model",
            "field_not_allowed",
        ),
    ],
)
async def test_current_fields_of_the_wrong_type_are_refused(
    client, fake_upstream, session, param, code
):
    await client.send({"type": "session.update", "event_id": "evt_c", "session": session})
    error = (await client.receive())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_c")
    assert [e["type"] for e in fake_upstream.received] == ["session.update"]  # the defaults


@pytest.fixture
def _offline(settings):
    settings.LOCAL_LLM_URL = ""


@pytest.mark.usefixtures("_offline")
async def test_the_offline_engine_reports_the_current_fields_back():
    async with EngineClient() as engine:
        await engine.wait("session.created")
        await engine.send({"type": "session.update", "session": CURRENT_FIELDS})
        session = (await engine.wait("session.updated"))["session"]  # validated strictly
        for field in ("reasoning", "parallel_tool_calls", "include", "truncation"):
            assert session[field] == CURRENT_FIELDS[field]
        assert session["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 15000
        await engine.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
                    },
                },
            }
        )
        session = (await engine.wait("session.updated"))["session"]
        assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        assert session["reasoning"] == {"effort": "low"}  # fields not sent stay as they were
