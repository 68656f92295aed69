"""LOCAL_LLM_URL: the engine streams replies from an OpenAI-compatible chat-completions server.

The server here is a real HTTP server on 127.0.0.1 (stdlib, in a thread) that streams SSE
chunks the way Ollama / llama.cpp / vLLM do, and records every request it receives.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from voicechat.local_engine.assistant import VOICE_PREAMBLE, WITH_TOOLS
from voicechat.tests.conftest import free_port
from voicechat.tests.local_engine_client import (
    TEXT_ONLY,
    EngineClient,
    reply_text,
    text_turn,
    user_text,
)


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "tiny",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def text_reply(*pieces: str) -> list[bytes]:
    return (
        [_chunk({"role": "assistant", "content": ""})]
        + [_chunk({"content": p}) for p in pieces]
        + [_chunk({}, "stop")]
    )


def tool_reply(name: str, *argument_pieces: str) -> list[bytes]:
    first = {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return (
        [_chunk({"role": "assistant", "tool_calls": [first]})]
        + [
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
            for p in argument_pieces
        ]
        + [_chunk({}, "tool_calls")]
    )


class FakeChatServer:
    """Streams the next scripted reply for each POST /v1/chat/completions."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.replies: list[list[bytes] | int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers["Content-Length"])
                server.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                reply = server.replies.pop(0) if server.replies else text_reply("OK.")
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "model crashed"}}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in reply:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def llm(settings):
    with FakeChatServer() as server:
        settings.LOCAL_LLM_URL = server.url
        settings.LOCAL_LLM_MODEL = "tiny"
        settings.LOCAL_LLM_API_KEY = "llm-key"
        yield server


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}


async def test_instructions_history_and_tools_reach_the_llm(llm):
    llm.replies = [text_reply("Hello", " Ada", "!"), text_reply("You are ", "Ada.")]
    async with EngineClient() as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "instructions": "You are terse.",
                    "tools": [WEATHER_TOOL],
                },
            }
        )
        first = await text_turn(client, "I am Ada.")
        assert reply_text(first) == "Hello Ada!"
        deltas = [e["delta"] for e in client.log.of("response.output_text.delta")]
        assert deltas == ["Hello", " Ada!"]  # streamed a word at a time, as speech needs
        # (Phrased so that the rules, which answer "who am I?" themselves, pass it on.)
        assert reply_text(await text_turn(client, "Say my name back to me.")) == "You are Ada."

    request = llm.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer llm-key"
    body = request["body"]
    assert body["model"] == "tiny" and body["stream"] is True
    assert body["messages"] == [
        # The voice preamble, the session's own instructions, what the user said of themselves.
        {
            "role": "system",
            "content": f"{VOICE_PREAMBLE} {WITH_TOOLS}\n\nYou are terse.\n\n"
            "What the user has told you: their name is Ada.",
        },
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "Say my name back to me."},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    assert body["tool_choice"] == "auto"


async def test_llm_tool_calls_become_function_call_items(llm):
    llm.replies = [
        tool_reply("get_weather", '{"loca', 'tion": "Oslo"}'),
        text_reply("It is 3 degrees in Oslo."),
    ]
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
        done = await text_turn(client, "Weather in Oslo?")
        (call,) = done["response"]["output"]
        assert call["type"] == "function_call"
        assert (call["name"], call["arguments"]) == ("get_weather", '{"location": "Oslo"}')
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": '{"celsius": 3}',
                },
            }
        )
        await client.send({"type": "response.create"})
        assert reply_text(await client.wait("response.done")) == "It is 3 degrees in Oslo."

    messages = llm.requests[-1]["body"]["messages"]
    assert messages[-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call["call_id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
            }
        ],
    }
    assert messages[-1] == {
        "role": "tool",
        "tool_call_id": call["call_id"],
        "content": '{"celsius": 3}',
    }


async def test_llm_errors_fail_the_response_and_the_session_continues(llm, settings):
    llm.replies = [500, text_reply("Back again.")]
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        failed = await text_turn(client, "hello")
        assert failed["response"]["status"] == "failed"
        error = failed["response"]["status_details"]["error"]
        assert error["code"] == "local_llm_error" and "500" in error["message"]
        assert reply_text(await text_turn(client, "hello?")) == "Back again."

    settings.LOCAL_LLM_URL = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    async with EngineClient() as client:
        await client.send(TEXT_ONLY)
        failed = await text_turn(client, "hello")
        assert failed["response"]["status"] == "failed"
        assert "could not be reached" in failed["response"]["status_details"]["error"]["message"]


@pytest.mark.slow
async def test_llm_text_is_spoken_sentence_by_sentence_as_it_streams(llm):
    llm.replies = [text_reply("Hello the", "re. I am a", " local model", ". Nice to meet you.")]
    async with EngineClient() as client:
        await client.send(user_text("hi"))
        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        spoken = [e["delta"] for e in client.log.of("response.output_audio_transcript.delta")]
        assert spoken == ["Hello there.", " I am a local model.", " Nice to meet you."]
        assert reply_text(done) == "Hello there. I am a local model. Nice to meet you."
        # Each sentence's audio follows its transcript delta.
        kinds = [e["type"] for e in client.log.events]
        first_text = kinds.index("response.output_audio_transcript.delta")
        assert kinds[first_text + 1] == "response.output_audio.delta"
