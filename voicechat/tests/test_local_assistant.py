"""The offline assistant: exact answers by rules, everything else by the embedded language model.

The model tests run the real default model (Qwen2.5-Coder-1.5B from the pinned wheels) through
the local engine's protocol, the way the gateway drives it; every server event is validated
against the SDK's types by the EngineClient. Greedy decoding makes the replies repeatable, so
what is asserted is what a user would judge: the right fact, the right tool, no markup.
"""

import asyncio
import json

import pytest

from voicechat.local_engine import llm
from voicechat.local_engine.assistant import Assistant, SpokenText
from voicechat.local_engine.llm import _split_tool_call, _tool_calls
from voicechat.local_engine.responder import FunctionCall, TextDelta, Turn
from voicechat.tests.local_engine_client import EngineClient, reply_text

# --- speech-ready text, and reading a model's tool calls (no model needed) -------------------


def spoken(*deltas: str) -> str:
    text = SpokenText()
    return "".join(text.feed(d) for d in deltas) + text.flush()


def test_markdown_and_lists_become_plain_sentences():
    reply = spoken(
        "Here are **three** tips:\n",
        "1. Drink `water`\n- Sleep well\n",
        "* Read [a book](https://example.com) 📚\n## Done",
    )
    assert reply == "Here are three tips: Drink water. Sleep well. Read a book. Done"


def test_text_is_released_a_word_at_a_time_and_nothing_is_lost():
    text = SpokenText()
    assert text.feed("Par") == ""
    assert text.feed("is is") == "Paris"
    assert text.feed(" lovely.") == " is"
    assert text.flush() == " lovely."


@pytest.mark.parametrize(
    "reply",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '<tools> {"name": "get_weather", "arguments": {"city": "Paris"}} </tools>',
    ],
)
def test_tool_calls_are_read_in_every_shape_small_models_write(reply):
    # Whatever arrives first is held back: the listener must never hear the markup.
    for cut in range(1, 12):
        text, held, _calling = _split_tool_call(reply[:cut], at_start=True)
        assert text == "", reply[:cut]
    assert _split_tool_call(reply, at_start=True)[2] is True
    assert _tool_calls(reply) == [("get_weather", '{"city": "Paris"}')]


def test_ordinary_text_is_not_held_back():
    assert _split_tool_call("Paris is lovely", at_start=True) == ("Paris is lovely", "", False)
    assert _split_tool_call("Use x < y <tool", at_start=False) == ("Use x < y ", "<tool", False)


# --- the real model ---------------------------------------------------------------------------

needs_model = pytest.mark.slow


@pytest.fixture
def embedded(settings):
    settings.LOCAL_LLM = "embedded"
    settings.LOCAL_LLM_URL = ""
    return llm.shared()


async def ask(client: EngineClient, text: str, **response) -> dict:
    """A typed user message, then a text-only response; returns response.done."""
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )
    await client.send(
        {"type": "response.create", "response": {"output_modalities": ["text"], **response}}
    )
    return await client.wait("response.done", timeout=120)


@needs_model
async def test_exact_answers_come_from_rules_and_the_rest_from_the_model(embedded):
    generations = embedded.stats.generations
    async with EngineClient() as client:
        done = await ask(client, "What is twelve times seven?")
        assert "84" in reply_text(done)
        assert embedded.stats.generations == generations  # no model for arithmetic

        done = await ask(client, "What is the capital of Australia?")
        assert done["response"]["status"] == "completed"
        assert "Canberra" in reply_text(done)
        assert embedded.stats.generations > generations


@needs_model
async def test_the_model_remembers_what_the_user_said_earlier(embedded):
    async with EngineClient() as client:
        await ask(client, "I have a dog called Rex.")
        # Phrased so the rules cannot answer it: only the model can.
        done = await ask(client, "Remind me, what did I say my dog is called?")
        assert "Rex" in reply_text(done)


@needs_model
async def test_it_says_it_is_offline_only_when_asked_what_it_is(embedded):
    async with EngineClient() as client:
        hello = reply_text(await ask(client, "Hello!"))
        assert hello and "offline" not in hello.lower()
        assert "offline" in reply_text(await ask(client, "What are you?")).lower()


CURRENCY_TOOL = {
    "type": "function",
    "name": "get_exchange_rate",
    "description": "Convert an amount of money from one currency to another",
    "parameters": {
        "type": "object",
        "properties": {
            "amount": {"type": "number"},
            "from_currency": {"type": "string"},
            "to_currency": {"type": "string"},
        },
        "required": ["amount", "from_currency", "to_currency"],
    },
}


@needs_model
async def test_the_model_decides_to_call_a_tool_and_answers_from_its_result(embedded):
    async with EngineClient() as client:
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "tools": [CURRENCY_TOOL]}}
        )
        await client.wait("session.updated")
        # No word of the request names the tool: the rules pass, the model chooses.
        done = await ask(client, "How many euros would I get for 100 dollars?")
        call = done["response"]["output"][0]
        assert call["type"] == "function_call" and call["name"] == "get_exchange_rate"
        arguments = json.loads(call["arguments"])
        assert arguments["amount"] == 100
        assert {arguments["from_currency"].upper()[:3], arguments["to_currency"].upper()[:3]} >= {
            "EUR"
        }

        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": '{"amount": 100, "converted": 92.4, "to": "EUR"}',
                },
            }
        )
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        answer = reply_text(await client.wait("response.done", timeout=120))
        assert "92" in answer

        # A question the tool has nothing to do with is answered in words.
        done = await ask(client, "What is the capital of France?")
        assert done["response"]["output"][0]["type"] == "message"
        assert "Paris" in reply_text(done)


@needs_model
async def test_cancel_stops_the_model_within_a_token(embedded):
    async with EngineClient() as client:
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Tell me a long story about a dragon."}
                    ],
                },
            }
        )
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.wait("response.output_text.delta", timeout=120)
        already_stopped = embedded.stats.tokens_after_cancel
        await client.send({"type": "response.cancel"})
        done = await client.wait("response.done")
        assert done["response"]["status"] == "cancelled"
        tokens = embedded.stats.tokens
        await asyncio.sleep(1.0)  # a model still running would write ~20 tokens meanwhile
        assert embedded.stats.tokens == tokens
        assert embedded.stats.tokens_after_cancel - already_stopped <= 1


@needs_model
async def test_replies_stream_as_deltas_in_plain_words(embedded):
    assistant = Assistant(llm.EmbeddedResponder(embedded), tools_by_rules=True)
    turn = Turn(
        instructions="",
        history=[{"role": "user", "text": "Give me three tips for sleeping well."}],
    )
    deltas = [d async for d in assistant.respond(turn)]
    assert all(isinstance(d, TextDelta) for d in deltas) and len(deltas) > 3
    text = "".join(d.text for d in deltas)
    assert not any(mark in text for mark in ("**", "`", "\n-", "#", "1."))
    assert not any(isinstance(d, FunctionCall) for d in deltas)


SPOKEN_SESSION = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "audio": {
            "input": {
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        },
    },
}


@needs_model
async def test_speaking_over_a_reply_stops_the_model_and_the_new_question_is_answered(embedded):
    from voicechat.tests.speech import spoken

    silence = b"\0" * (48 * 900)
    async with EngineClient() as client:
        await client.send(SPOKEN_SESSION)
        await client.append_audio(await asyncio.to_thread(spoken, "Tell me a story about a fox."))
        await client.append_audio(silence)
        await client.wait("response.output_audio.delta", timeout=120)  # the story has begun
        already_stopped = embedded.stats.tokens_after_cancel

        await client.append_audio(
            await asyncio.to_thread(spoken, "What is the capital of Italy?") + silence
        )
        interrupted = await client.wait("response.done")
        assert interrupted["response"]["status"] == "cancelled"
        assert interrupted["response"]["status_details"]["reason"] == "turn_detected"
        answered = await client.wait("response.done", timeout=120)
        assert answered["response"]["status"] == "completed"
        assert "Rome" in reply_text(answered)
        # The interrupted story stopped within a token: no work for words nobody will hear.
        assert embedded.stats.tokens_after_cancel - already_stopped <= 1
