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
import contextlib
import email
import email.policy
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
        self.calls_endpoint: FakeCallsEndpoint | None = None  # serve_calls() starts it

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
        if self.calls_endpoint is not None:
            await self.calls_endpoint.close()
        self._server.close()
        await self._server.wait_closed()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids)}"

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.request_headers.append(request.headers)
        self.request_paths.append(request.path)
        if self.calls_endpoint is not None and "call_id=" in request.path:
            # A sideband: OpenAI's key, and a call it made (else 404 call_id_not_found).
            call_id = request.path.split("call_id=", 1)[1].split("&")[0]
            key = self.calls_endpoint.api_key
            if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                return connection.respond(401, "invalid_api_key")
            if call_id not in self.calls_endpoint.calls:
                return connection.respond(404, "call_id_not_found")
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
        if self.calls_endpoint is not None and "call_id=" in ws.request.path:
            call_id = ws.request.path.split("call_id=", 1)[1].split("&")[0]
            await self.calls_endpoint.calls[call_id].sideband(ws)
            self.closed.set()
            return
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
        if etype == "conversation.item.delete":
            return [{"type": "conversation.item.deleted", "item_id": event["item_id"]}]
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


# --- WebRTC calls: OpenAI's calls endpoint and the sideband ------------------------------------
# serve_calls() starts an HTTP listener on loopback for POST /v1/realtime/calls (the multipart
# offer, answered by a real aiortc peer that carries the call's events on `oai-events`) and
# .../hangup; a WebSocket to the fake with ?call_id= is that call's sideband. A call's events go
# to its data channel and to every sideband, whichever side caused them, as OpenAI's do.


class FakeCall:
    """One call the fake OpenAI made: its peer connection, its session, its sidebands."""

    def __init__(self, server: "FakeRealtimeServer", call_id: str, session: dict) -> None:
        self.server = server
        self.id = call_id
        self.session = new_session()
        merge(self.session, {k: v for k, v in session.items() if k != "type"})
        self.state = {"last_item": None, "last_user_text": "", "audio_bytes": 0}
        self.pc = None
        self.channel = None
        self.sidebands: list[ServerConnection] = []
        self.data_channel_events: list[dict] = []  # client events from the caller, directly
        self.sideband_events: list[dict] = []  # client events from the sideband
        self.audio_frames = 0  # microphone frames that reached the fake directly
        self.hung_up = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    async def answer(self, offer_sdp: str) -> str:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            self.channel = channel

            @channel.on("message")
            def on_message(message: str) -> None:
                event = json.loads(message)
                self.data_channel_events.append(event)
                self._spawn(self.handle(event))

            self._spawn(
                self._send_to(channel, {"type": "session.created", "session": self.session})
            )

        @pc.on("track")
        def on_track(track) -> None:
            async def read() -> None:
                while True:
                    try:
                        await track.recv()
                    except MediaStreamError:
                        return
                    self.audio_frames += 1

            self._spawn(read())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        pc.addTrack(AudioStreamTrack())  # the reply's track (silent here)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_to(self, target, event: dict) -> None:
        text = json.dumps({"event_id": self.server._id("event"), **event})
        if target is self.channel:
            if self.channel is not None and self.channel.readyState == "open":
                self.channel.send(text)
        else:
            with contextlib.suppress(Exception):
                await target.send(text)

    async def emit(self, event: dict) -> None:
        """A server event of the call: to the caller's data channel and to every sideband."""
        event = {"type": event.pop("type"), **event}
        await self._send_to(self.channel, event)
        for ws in list(self.sidebands):
            await self._send_to(ws, event)

    async def handle(self, event: dict) -> None:
        for reply in self.server._reply(event, self.session, self.state):
            await self.emit(reply)

    async def sideband(self, ws: ServerConnection) -> None:
        self.sidebands.append(ws)
        await self._send_to(ws, {"type": "session.created", "session": self.session})
        try:
            async for frame in ws:
                event = json.loads(frame)
                self.server.received.append(event)
                self.sideband_events.append(event)
                await self.handle(event)
        except Exception:
            pass
        finally:
            if ws in self.sidebands:
                self.sidebands.remove(ws)

    async def hang_up(self) -> None:
        self.hung_up.set()
        for ws in list(self.sidebands):
            with contextlib.suppress(Exception):
                await ws.close(1000)
        if self.pc is not None:
            await self.pc.close()
        for task in list(self._tasks):
            task.cancel()


class _HttpRequest:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def parts(self) -> dict[str, bytes]:
        """A multipart/form-data body's fields, by name."""
        message = email.message_from_bytes(
            b"Content-Type: "
            + self.headers.get("content-type", "").encode()
            + b"\r\n\r\n"
            + self.body,
            policy=email.policy.HTTP,
        )
        return {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()
        }


async def _read_http_request(reader: asyncio.StreamReader) -> _HttpRequest:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *lines = head.split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    return _HttpRequest(method, path, headers, body)


class FakeCallsEndpoint:
    """What FakeRealtimeServer.serve_calls() adds: OpenAI's calls endpoint over HTTP."""

    def __init__(self, server: "FakeRealtimeServer", api_key: str | None) -> None:
        self.server = server
        self.api_key = api_key  # the Bearer key every request must carry (None: any)
        self.calls: dict[str, FakeCall] = {}
        self.requests: list[dict] = []  # each POST: method, path, headers, sdp, session
        self.hangups: list[str] = []  # call ids hung up, in order
        # (status, error object): the next offers are refused so, as OpenAI refuses them.
        self.refuse: tuple[int, dict] | None = None
        self.port = 0
        self._listener: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/realtime/calls"

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await call.hang_up()
        if self._listener is not None:
            self._listener.close()

    def newest(self) -> FakeCall:
        return list(self.calls.values())[-1]

    async def wait_for_call(self, timeout: float = 10) -> FakeCall:
        async with asyncio.timeout(timeout):
            while not self.calls:
                await asyncio.sleep(0.01)
        return self.newest()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_http_request(reader)
            status, headers, body = await self._respond(request)
        except Exception as exc:  # a broken request: the fake says so, as a 400
            status, headers, body = 400, {"Content-Type": "text/plain"}, repr(exc).encode()
        reason = {200: "OK", 201: "Created"}.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()

    @staticmethod
    def _error(status: int, error: dict) -> tuple[int, dict, bytes]:
        body = json.dumps({"error": {"type": "invalid_request_error", "param": None, **error}})
        return status, {"Content-Type": "application/json"}, body.encode()

    async def _respond(self, request: _HttpRequest) -> tuple[int, dict, bytes]:
        record = {"method": request.method, "path": request.path, "headers": request.headers}
        self.requests.append(record)
        authorization = request.headers.get("authorization", "")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return self._error(
                401,
                {
                    "message": f"Incorrect API key provided: {authorization[7:]}",
                    "code": "invalid_api_key",
                },
            )
        path = request.path.split("?", 1)[0]
        if request.method == "POST" and path == "/v1/realtime/calls":
            parts = request.parts()
            record["sdp"] = parts["sdp"].decode()
            record["session"] = json.loads(parts["session"]) if "session" in parts else None
            if self.refuse is not None:
                return self._error(*self.refuse)
            call = FakeCall(self.server, self.server._id("rtc"), record["session"] or {})
            self.calls[call.id] = call
            answer = await call.answer(record["sdp"])
            headers = {
                "Content-Type": "application/sdp",
                "Location": f"/v1/realtime/calls/{call.id}",
            }
            return 201, headers, answer.encode()
        if request.method == "POST" and path.endswith("/hangup"):
            call_id = path.split("/")[-2]
            self.hangups.append(call_id)
            call = self.calls.get(call_id)
            if call is None:
                return self._error(404, {"message": "Call not found.", "code": "call_not_found"})
            await call.hang_up()
            return 200, {}, b""
        return self._error(404, {"message": f"No route {path}.", "code": "not_found"})


async def serve_calls(
    server: "FakeRealtimeServer", api_key: str | None = None
) -> FakeCallsEndpoint:
    """Give `server` OpenAI's calls endpoint (server.calls_endpoint); its WebSocket then takes
    sidebands (?call_id=). Closed with the server."""
    endpoint = FakeCallsEndpoint(server, api_key)
    await endpoint.start()
    server.calls_endpoint = endpoint
    return endpoint
