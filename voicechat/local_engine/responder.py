"""What the local engine says: the responder interface and the LOCAL_LLM_URL client.

A responder turns the conversation so far into a stream of text deltas and function calls.
ChatCompletionsResponder streams from an OpenAI-compatible /v1/chat/completions server
(Ollama, llama.cpp, vLLM); llm.py runs a model in process; offline.py answers by rules; and
assistant.py chooses and combines them (make_responder).
"""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import openai

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: str  # a JSON object, as a string (what the Realtime protocol carries)


@dataclass
class Turn:
    """Everything a responder may use to produce one response."""

    instructions: str
    # Simplified history, oldest first: {"role": user|assistant|system, "text"} messages,
    # {"type": "function_call", call_id, name, arguments}, {"type": "function_call_output", ...}.
    history: list[dict]
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict = "auto"
    max_output_tokens: int | None = None
    time_zone: str | None = None  # the user's (IANA name); None: the server's TIME_ZONE


class ResponderError(Exception):
    """The responder could not answer; the message is safe to show to the user."""


class Responder(Protocol):
    def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        """Stream the reply to `turn`."""


def chat_messages(turn: Turn) -> list[dict]:
    """The turn as chat-completions messages (system prompt, history, tool calls and results)."""
    messages: list[dict] = []
    if turn.instructions:
        messages.append({"role": "system", "content": turn.instructions})
    known_calls: set[str] = set()
    for entry in turn.history:
        kind = entry.get("type", "message")
        if kind == "function_call":
            call = {
                "id": entry["call_id"],
                "type": "function",
                "function": {"name": entry["name"], "arguments": entry["arguments"] or "{}"},
            }
            known_calls.add(entry["call_id"])
            last = messages[-1] if messages else None
            # Parallel calls of one response belong to one assistant message.
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if entry["call_id"] in known_calls:
                messages.append(
                    {"role": "tool", "tool_call_id": entry["call_id"], "content": entry["output"]}
                )
            else:  # a result whose call was deleted: keep the facts, as plain context
                messages.append({"role": "user", "content": f"Tool result: {entry['output']}"})
        elif entry.get("text"):
            messages.append({"role": entry["role"], "content": entry["text"]})
    return messages


def chat_tools(turn: Turn) -> dict:
    """The `tools` / `tool_choice` arguments for chat completions (empty when none apply)."""
    tools = [t for t in turn.tools if t.get("type", "function") == "function" and t.get("name")]
    if not tools or turn.tool_choice == "none":
        return {}
    choice = turn.tool_choice
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name", "")}}
    return {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description") or "",
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
            for t in tools
        ],
        "tool_choice": choice,
    }


class ChatCompletionsResponder:
    """Streams replies from an OpenAI-compatible chat-completions server."""

    def __init__(self, *, base_url: str, model: str, api_key: str, timeout: float) -> None:
        self._model = model
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "local", timeout=timeout, max_retries=0
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        extra = chat_tools(turn)
        if turn.max_output_tokens:
            extra["max_tokens"] = turn.max_output_tokens
        try:
            stream = await self._client.chat.completions.create(
                model=self._model, messages=chat_messages(turn), stream=True, **extra
            )
        except openai.APIConnectionError:
            raise ResponderError("The local language model server could not be reached.") from None
        except openai.APIStatusError as exc:
            raise ResponderError(
                f"The local language model server answered HTTP {exc.status_code}."
            ) from None
        calls: dict[int, dict] = {}
        try:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    yield TextDelta(delta.content)
                for tc in delta.tool_calls or []:
                    call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                    if tc.function and tc.function.name:
                        call["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        call["arguments"] += tc.function.arguments
        except openai.APIError as exc:
            logger.warning("local LLM stream failed: %s", exc)
            raise ResponderError("The local language model stopped answering.") from None
        finally:
            await stream.close()
        for index in sorted(calls):
            yield FunctionCall(calls[index]["name"], calls[index]["arguments"] or "{}")
