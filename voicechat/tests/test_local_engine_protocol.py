"""The local engine speaks the GA Realtime protocol: text turns, items, responses, tools.

Every server event is validated strictly against the openai SDK's types (local_engine_client).
These tests use text output, so no speech model is loaded.
"""

import json

import pytest

from voicechat.tests.local_engine_client import (
    TEXT_ONLY,
    EngineClient,
    reply_text,
    text_turn,
    user_text,
)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture(autouse=True)
def _offline(settings):
    # The built-in responder, whatever the developer's environment says.
    settings.LOCAL_LLM_URL = ""


async def test_session_created_then_updated_with_requested_settings():
    async with EngineClient() as client:
        created = await client.wait("session.created")
        assert created["session"]["type"] == "realtime"
        # The offline engine's default (LOCAL_TURN_DETECTION); OpenAI's is server_vad.
        assert created["session"]["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
        await client.send(
            {
                "type": "session.update",
                "event_id": "evt_1",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "output_modalities": ["text"],
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": {"model": "whisper-1", "language": "en"},
                            "turn_detection": {
                                "type": "server_vad",
                                "threshold": 0.6,
                                "silence_duration_ms": 400,
                            },
                        },
                        "output": {"voice": "cedar"},
                    },
                },
            }
        )
        session = (await client.wait("session.updated"))["session"]
        assert session["instructions"] == "Be brief."
        assert session["output_modalities"] == ["text"]
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["input"]["transcription"]["language"] == "en"
        vad = session["audio"]["input"]["turn_detection"]
        assert (vad["threshold"], vad["silence_duration_ms"], vad["prefix_padding_ms"]) == (
            0.6,
            400,
            300,
        )
        assert session["audio"]["output"]["voice"] == "cedar"

        # Only the fields present change; turn_detection null is push-to-talk.
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        session = (await client.wait("session.updated"))["session"]
        assert session["audio"]["input"]["turn_detection"] is None
        assert session["instructions"] == "Be brief."

        # semantic_vad with OpenAI's fields (the turn model decides; eagerness caps the wait).
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}
                    },
                },
            }
        )
        session = (await client.wait("session.updated"))["session"]
        assert session["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": "high",
            "create_response": True,
            "interrupt_response": True,
        }


async def test_text_turn_emits_the_full_event_sequence_with_usage():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.send(user_text("What is 12 times 7?"))
        added = await client.wait("conversation.item.added")
        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        kinds = [e["type"] for e in client.since(added)]
        assert kinds[:2] == ["conversation.item.done", "response.created"]
        assert kinds[2:5] == [
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
        ]
        assert "response.output_text.delta" in kinds
        assert kinds[-5:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        deltas = "".join(e["delta"] for e in client.log.of("response.output_text.delta"))
        assert deltas == client.log.of("response.output_text.done")[0]["text"]
        assert "84" in deltas
        response = done["response"]
        assert response["status"] == "completed"
        assert response["output"][0]["content"] == [{"type": "output_text", "text": deltas}]
        usage = response["usage"]
        assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        # The assistant item follows the user item in the conversation.
        assistant_added = client.log.of("conversation.item.added")[1]
        assert assistant_added["previous_item_id"] == added["item"]["id"]


async def test_built_in_responder_is_honest_and_remembers_the_conversation():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        hello = reply_text(await text_turn(client, "Hello!"))
        assert "offline" in hello and "no AI model" in hello
        assert "Ada" in reply_text(await text_turn(client, "My name is Ada and I live in Paris."))
        assert "84" in reply_text(await text_turn(client, "what is twelve times seven"))
        assert "Today is" in reply_text(await text_turn(client, "What is the date today?"))
        assert "Your name is Ada" in reply_text(await text_turn(client, "What is my name?"))
        assert "Paris" in reply_text(await text_turn(client, "Where do I live?"))


async def test_deleting_an_item_makes_the_assistant_forget_it():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.send(user_text("My name is Grace."))
        said = await client.wait("conversation.item.added")
        await client.send({"type": "response.create"})
        await client.wait("response.done")
        await client.send({"type": "conversation.item.delete", "item_id": said["item"]["id"]})
        deleted = await client.wait("conversation.item.deleted")
        assert deleted["item_id"] == said["item"]["id"]
        answer = reply_text(await text_turn(client, "What is my name?"))
        assert "haven't told me your name" in answer


async def test_items_honour_previous_item_id_and_can_be_retrieved():
    async with EngineClient() as client:
        await client.send(user_text("first", event_id="c1"))
        first = (await client.wait("conversation.item.done"))["item"]
        await client.send(user_text("third"))
        third = await client.wait("conversation.item.done")
        assert third["previous_item_id"] == first["id"]
        await client.send(
            {
                **user_text("second"),
                "previous_item_id": first["id"],
                "item": {
                    "id": "item_mine_2",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "second"}],
                },
            }
        )
        second = await client.wait("conversation.item.added")
        assert second["item"]["id"] == "item_mine_2"
        assert second["previous_item_id"] == first["id"]
        await client.send(user_text("zeroth", previous_item_id="root"))
        zeroth = await client.wait("conversation.item.added")
        assert zeroth["previous_item_id"] is None
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_mine_2"})
        retrieved = await client.wait("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["text"] == "second"
        assert [e.id for e in client.upstream._session.conversation] == [
            zeroth["item"]["id"],
            first["id"],
            "item_mine_2",
            third["item"]["id"],
        ]


async def test_function_call_round_trip():
    async with EngineClient() as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [WEATHER_TOOL],
                },
            }
        )
        done = await text_turn(client, "What's the weather like in Paris today?")
        (call,) = done["response"]["output"]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"location": "Paris"}
        args_done = client.log.of("response.function_call_arguments.done")[-1]
        assert args_done["call_id"] == call["call_id"]
        assert args_done["arguments"] == call["arguments"]
        deltas = client.log.of("response.function_call_arguments.delta")
        assert "".join(d["delta"] for d in deltas) == call["arguments"]

        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": json.dumps({"temperature_c": 18, "conditions": "sunny"}),
                },
            }
        )
        await client.send({"type": "response.create"})
        answer = reply_text(await client.wait("response.done"))
        assert "18" in answer and "sunny" in answer


async def test_tool_choice_none_keeps_tools_unused():
    async with EngineClient() as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [WEATHER_TOOL],
                    "tool_choice": "none",
                },
            }
        )
        done = await text_turn(client, "What's the weather in Paris?")
        assert done["response"]["output"][0]["type"] == "message"


async def test_out_of_band_response_stays_out_of_the_conversation():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"purpose": "check"},
                    "input": [
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "what is 3 plus 4"}],
                        }
                    ],
                },
            }
        )
        done = await client.wait("response.done")
        assert done["response"]["conversation_id"] is None
        assert done["response"]["metadata"] == {"purpose": "check"}
        assert "7" in reply_text(done)
        assert not client.log.of("conversation.item.added")
        assert len(client.upstream._session.conversation) == 0


async def test_second_response_create_while_one_is_active_is_refused():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.send(user_text("hello"))
        await client.send({"type": "response.create"})
        await client.send({"type": "response.create", "event_id": "dup"})
        error = await client.wait("error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert error["error"]["event_id"] == "dup"
        assert (await client.wait("response.done"))["response"]["status"] == "completed"
        assert len(client.log.of("response.created")) == 1


BAD_EVENTS = [
    ("{not json", "invalid_json", None),
    ('["a list"]', "invalid_json", None),
    ({"type": "response.explode", "event_id": "e1"}, "invalid_value", "type"),
    ({"event_id": "e1"}, "missing_required_parameter", "type"),
    (
        {"type": "input_audio_buffer.append", "audio": "%%%not base64", "event_id": "e1"},
        "invalid_value",
        "audio",
    ),
    ({"type": "input_audio_buffer.append", "audio": 42, "event_id": "e1"}, "invalid_type", "audio"),
    (
        {"type": "input_audio_buffer.commit", "event_id": "e1"},
        "input_audio_buffer_commit_empty",
        None,
    ),
    (
        {"type": "conversation.item.delete", "item_id": "item_nope", "event_id": "e1"},
        "item_delete_invalid_item_id",
        "item_id",
    ),
    (
        {"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "e1"},
        "item_retrieve_invalid_item_id",
        "item_id",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "item_nope",
            "content_index": 0,
            "audio_end_ms": 10,
            "event_id": "e1",
        },
        "item_truncate_invalid_item_id",
        "item_id",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": 7,
            "content_index": 0,
            "audio_end_ms": 10,
            "event_id": "e1",
        },
        "invalid_type",
        "item_id",
    ),
    ({"type": "conversation.item.create", "event_id": "e1"}, "missing_required_parameter", "item"),
    (
        {**user_text("x"), "previous_item_id": "item_nope", "event_id": "e1"},
        "previous_item_not_found",
        "previous_item_id",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "output_modalities": "text"},
            "event_id": "e1",
        },
        "invalid_type",
        "session.output_modalities",
    ),
    (
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "high"}}},
            },
            "event_id": "e1",
        },
        "invalid_type",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "output_modalities": ["text", "audio"]},
            "event_id": "e1",
        },
        "invalid_value",
        "session.output_modalities",
    ),
    ({"type": "response.cancel", "event_id": "e1"}, "response_cancel_not_active", None),
    (
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}},
            },
            "event_id": "e1",
        },
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "voice": "marin"},
            "event_id": "e1",
        },
        "unknown_parameter",
        "session.voice",
    ),
    (
        {
            **user_text("x"),
            "event_id": "e1",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "txt": "typo"}],
            },
        },
        "unknown_parameter",
        "item.content[0].txt",
    ),
    ({"type": "output_audio_buffer.clear", "event_id": "e1"}, "invalid_value", "type"),
]


@pytest.mark.parametrize(("frame", "code", "param"), BAD_EVENTS)
async def test_bad_client_events_get_an_error_and_the_session_stays_usable(frame, code, param):
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.wait("session.updated")
        await client.upstream.send(frame if isinstance(frame, str) else json.dumps(frame))
        error = (await client.wait("error"))["error"]
        assert error["code"] == code
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"
        assert error["message"]
        expected_id = frame.get("event_id") if isinstance(frame, dict) else None
        assert error["event_id"] == expected_id
        # Still usable: a normal turn works afterwards.
        assert "7" in reply_text(await text_turn(client, "what is 3 plus 4"))


async def test_truncate_refuses_items_without_audio():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        done = await text_turn(client, "hello")
        item_id = done["response"]["output"][0]["id"]
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 100,
                "event_id": "t1",
            }
        )
        error = (await client.wait("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value",
            "item_id",
            "t1",
        )


async def test_send_after_close_raises_upstream_closed():
    from voicechat.upstream.base import UpstreamClosed

    client = EngineClient()
    async with client:
        pass
    with pytest.raises(UpstreamClosed):
        await client.upstream.send(json.dumps({"type": "response.create"}))


async def test_cancel_right_after_create_still_announces_the_response_first():
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        await client.send(user_text("hello"))
        await client.send({"type": "response.create"})
        await client.send({"type": "response.cancel"})
        created = await client.wait("response.created")
        done = await client.wait("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await client.settle(0.2)
        assert not [e for e in client.since(done) if e["type"].startswith("response.")]
        # The next response is a normal one.
        assert "7" in reply_text(await text_turn(client, "what is 3 plus 4"))
