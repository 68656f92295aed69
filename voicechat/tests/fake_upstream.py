"""A fake OpenAI Realtime server: a real WebSocket server on loopback speaking GA events.

It answers the common client events the way the real API does (session.updated, committed,
item added/done, a text or audio response with usage) and records everything it receives, so
tests see exactly what the gateway forwarded. Tests can also push any event sequence (the
fixtures in fixtures/*.json are recorded GA sequences), refuse handshakes, start slowly or drop,
and make the next responses call functions (call_function_next), as a model does with tools.
"""

import asyncio
import base64
import collections
import itertools
import json
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

FIXTURES = Path(__file__).parent / "fixtures"

USAGE = {
    "total_tokens": 1200,
    "input_tokens": 1000,
    "output_tokens": 200,
    "input_token_details": {
        "text_tokens": 400,
        "audio_tokens": 600,
        "image_tokens": 0,
        "cached_tokens": 300,
        "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 200, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 50, "audio_tokens": 150},
}


def load_fixture(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def new_session() -> dict:
    """A GA session as session.created describes it (the gateway then applies its defaults)."""
    return {
        # Shaped like the SDK's RealtimeSessionCreateRequest, which is what session.created
        # declares (the live API adds id/object/expires_at, which the GA types do not list).
        "type": "realtime",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": None,
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
        "truncation": "auto",
    }


def merge(target: dict, update: dict) -> None:
    """session.update semantics: only the fields present change; an object given another
    `type` (server_vad to semantic_vad) is replaced whole, since the two share few fields."""
    for key, value in update.items():
        current = target.get(key)
        if (
            isinstance(value, dict)
            and isinstance(current, dict)
            and value.get("type", current.get("type")) == current.get("type")
        ):
            merge(current, value)
        else:
            target[key] = value


class FakeRealtimeServer:
    def __init__(
        self,
        *,
        reject_status: int | None = None,
        accept_delay: float = 0.0,
        reply_text: str = "Hello from the fake upstream.",
    ) -> None:
        self.reject_status = reject_status
        self.accept_delay = accept_delay
        self.reply_text = reply_text
        self.received: list[dict] = []
        self.received_frames: list[str] = []
        self.request_headers: list[Headers] = []
        self.request_paths: list[str] = []
        self.connections: list[ServerConnection] = []
        self.closed = asyncio.Event()
        # (name, arguments) of the function each next response.create calls, in order.
        self.planned_calls: collections.deque[tuple[str, dict]] = collections.deque()
        self._ids = itertools.count(1)
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def __aenter__(self) -> "FakeRealtimeServer":
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request, compression=None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids)}"

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.request_headers.append(request.headers)
        self.request_paths.append(request.path)
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        if self.reject_status:
            body = json.dumps(
                {
                    "error": {
                        "message": "Incorrect API key provided: "
                        + (request.headers.get("Authorization") or "")[7:],
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
            ).encode()
            return connection.respond(self.reject_status, body.decode())
        return None

    # --- helpers for tests -------------------------------------------------------------

    async def push(self, events: list[dict], connection: int = -1) -> None:
        """Send server events on a connection (the newest by default)."""
        ws = self.connections[connection]
        for event in events:
            await ws.send(json.dumps({"event_id": self._id("event"), **event}))

    def call_function_next(self, name: str, arguments: dict | None = None) -> None:
        """Make the next response call function `name` instead of answering in text."""
        self.planned_calls.append((name, arguments or {}))

    async def drop(self, connection: int = -1, code: int = 1011, reason: str = "") -> None:
        await self.connections[connection].close(code, reason)

    async def wait_for(self, etype: str, count: int = 1, timeout: float = 5.0) -> list[dict]:
        """The client events of type `etype` received so far, once there are `count` of them."""
        async with asyncio.timeout(timeout):
            while True:
                found = [event for event in self.received if event.get("type") == etype]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.01)

    # --- the fake protocol -------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        session = new_session()
        state = {"last_item": None, "last_user_text": "", "audio_bytes": 0}
        await self._send(ws, {"type": "session.created", "session": session})
        try:
            async for frame in ws:
                self.received_frames.append(frame)
                event = json.loads(frame)
                self.received.append(event)
                try:
                    replies = self._reply(event, session, state)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    # Like the real API: a malformed event gets an error, the session stays.
                    replies = [
                        {
                            "type": "error",
                            "error": {
                                "type": "invalid_request_error",
                                "code": "invalid_value",
                                "message": f"Invalid event: {exc}",
                                "param": None,
                                "event_id": event.get("event_id")
                                if isinstance(event, dict)
                                else None,
                            },
                        }
                    ]
                for reply in replies:
                    await self._send(ws, reply)
        except Exception:
            pass
        finally:
            self.closed.set()

    async def _send(self, ws: ServerConnection, event: dict) -> None:
        await ws.send(
            json.dumps({"type": event.pop("type"), "event_id": self._id("event"), **event})
        )

    def _reply(self, event: dict, session: dict, state: dict) -> list[dict]:
        etype = event.get("type")
        if etype == "session.update":
            merge(session, event.get("session") or {})
            return [{"type": "session.updated", "session": session}]
        if etype == "input_audio_buffer.append":
            state["audio_bytes"] += len(base64.b64decode(event["audio"]))
            return []
        if etype == "input_audio_buffer.commit":
            item_id = self._id("item")
            previous, state["last_item"] = state["last_item"], item_id
            return [
                {
                    "type": "input_audio_buffer.committed",
                    "item_id": item_id,
                    "previous_item_id": previous,
                }
            ]
        if etype == "conversation.item.create":
            item = dict(
                event["item"], id=event["item"].get("id") or self._id("item"), status="completed"
            )
            item.setdefault("object", "realtime.item")
            previous, state["last_item"] = state["last_item"], item["id"]
            texts = [
                p.get("text", "")
                for p in item.get("content") or ()
                if p.get("type") == "input_text"
            ]
            if texts:
                state["last_user_text"] = " ".join(texts)
            return [
                {"type": "conversation.item.added", "previous_item_id": previous, "item": item},
                {"type": "conversation.item.done", "previous_item_id": previous, "item": item},
            ]
        if etype == "response.create":
            if self.planned_calls:
                return self._function_call(state, *self.planned_calls.popleft())
            return self._response(state)
        if etype == "input_audio_buffer.clear":
            return [{"type": "input_audio_buffer.cleared"}]
        if etype == "response.cancel":
            return []
        return [
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "unknown_event",
                    "message": f"The fake upstream does not handle {etype!r}.",
                    "param": None,
                    "event_id": event.get("event_id"),
                },
            }
        ]

    def _response(self, state: dict) -> list[dict]:
        response_id, item_id = self._id("resp"), self._id("item")
        previous, state["last_item"] = state["last_item"], item_id
        text = self.reply_text
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
        done_item = dict(item, status="completed", content=[{"type": "output_text", "text": text}])
        base = {"object": "realtime.response", "id": response_id, "conversation_id": "conv_fake"}
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        part_ids = {**ids, "content_index": 0}
        return [
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "output": []},
            },
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": dict(item, status="in_progress", content=[]),
            },
            {
                "type": "conversation.item.added",
                "previous_item_id": previous,
                "item": dict(item, status="in_progress", content=[]),
            },
            {
                "type": "response.content_part.added",
                **part_ids,
                "part": {"type": "text", "text": ""},
            },
            {"type": "response.output_text.delta", **part_ids, "delta": text},
            {"type": "response.output_text.done", **part_ids, "text": text},
            {
                "type": "response.content_part.done",
                **part_ids,
                "part": {"type": "text", "text": text},
            },
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": 0,
                "item": done_item,
            },
            {"type": "conversation.item.done", "previous_item_id": previous, "item": done_item},
            {
                "type": "response.done",
                "response": {**base, "status": "completed", "output": [done_item], "usage": USAGE},
            },
        ]

    def _function_call(self, state: dict, name: str, arguments: dict) -> list[dict]:
        """A response whose one output is a call of function `name` (GA event order)."""
        response_id, item_id, call_id = self._id("resp"), self._id("item"), self._id("call")
        previous, state["last_item"] = state["last_item"], item_id
        args = json.dumps(arguments)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "call_id": call_id,
            "name": name,
        }
        started = dict(item, status="in_progress", arguments="")
        done_item = dict(item, status="completed", arguments=args)
        base = {"object": "realtime.response", "id": response_id, "conversation_id": "conv_fake"}
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        return [
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "output": []},
            },
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": started,
            },
            {"type": "conversation.item.added", "previous_item_id": previous, "item": started},
            {
                "type": "response.function_call_arguments.delta",
                **ids,
                "call_id": call_id,
                "delta": args,
            },
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "call_id": call_id,
                "name": name,
                "arguments": args,
            },
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": 0,
                "item": done_item,
            },
            {"type": "conversation.item.done", "previous_item_id": previous, "item": done_item},
            {
                "type": "response.done",
                "response": {**base, "status": "completed", "output": [done_item], "usage": USAGE},
            },
        ]
