"""uvicorn's sans-I/O WebSocket server with the relay's frame path made flat.

`manage.py serve` runs uvicorn with this protocol (`ws=` takes a class). uvicorn's own
implementation, with `websockets` doing the HTTP upgrade, stays in charge of everything but
the frames of an open connection:

- Incoming frames are parsed by voicechat.websocket_frames instead of `websockets`' generator
  chain, and outgoing `websocket.send` messages are framed there too.
- Reading pauses only when the consumer falls READ_HIGH_WATER messages behind. uvicorn pauses
  the socket after every message and resumes it when the app takes it: two event-loop watcher
  changes (system calls) per audio frame.
- Received messages wait in a one-reader Inbox (voicechat/inbox.py), not an asyncio.Queue.
- The `voicechat.text_shortcut` scope extension (TextShortcut) lets the app take text frames
  right in data_received and write text frames at once, with no task switch, whenever nothing
  waits ahead of them; the ASGI receive()/send() path stays for everything else.

Measured in BENCHMARKS.md ("The flat frame path", "The synchronous shortcut"). Written
against uvicorn 0.54 (pinned); the tests run every gateway test through it.
"""

from collections.abc import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from voicechat.inbox import Inbox
from voicechat.websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    build_frame,
    close_payload,
    parse_close,
)

# Messages a consumer may leave waiting before the socket stops being read. The gateway takes
# each frame as it arrives; one this far behind is stalled, and TCP then pushes back on the
# client, as it would under uvicorn's own pause-per-message.
READ_HIGH_WATER = 16

# The scope extension under which the app finds a TextShortcut (absent under other servers).
TEXT_SHORTCUT = "voicechat.text_shortcut"


class TextShortcut:
    """Text frames of one socket without a task switch: for the relay's common case.

    ASGI passes every frame through the app's receive() and send() coroutines, which wakes the
    app's task once per frame. A relay that can forward a frame synchronously needs none of
    that. `on_text(handler)`: later text frames are offered to handler(text) as they are read;
    it returns True when it took the frame, False to have it queued for receive() as usual.
    `can_send()` / `send(text)`: write a text frame at once when nothing waits for the socket.

    Order is kept: a frame is offered only while no message waits for receive(), and
    can_send() is False while a send() waits for the socket to drain. A handler that raises is
    logged and dropped; that frame and all later ones take the ordinary path.
    """

    def __init__(self, protocol: "GatewayWebSocketProtocol") -> None:
        self._protocol = protocol

    def on_text(self, handler: Callable[[str], bool] | None) -> None:
        self._protocol.queue.direct_handler = handler

    def can_send(self) -> bool:
        protocol = self._protocol
        return (
            protocol.writable.is_set()
            and not protocol.senders_waiting
            and not protocol.close_sent
            and not protocol.disconnected
        )

    def send(self, text: str) -> None:
        """Write one text frame; only after can_send() said yes (nothing in between)."""
        self._protocol.write_text(text)


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox("text shortcut")
        # No per-message deflate whatever the config says: base64 audio barely compresses, and
        # the flat frame reader does not inflate.
        self.conn = ServerProtocol(max_size=self.config.ws_max_size, logger=self.logger)
        self.frame_reader = FrameReader(masked=True, max_size=self.config.ws_max_size)
        self.senders_waiting = 0  # send() calls waiting for the socket to drain

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][TEXT_SHORTCUT] = TextShortcut(self)

    def data_received(self, data: bytes) -> None:
        if not self.handshake_complete:
            # The HTTP upgrade request: `websockets` parses it. A client sends no frame before
            # it has our 101 answer, so every later byte is a frame.
            super().data_received(data)
            return
        try:
            messages = self.frame_reader.feed(data)
        except FrameError as error:
            self._fail(error.code, error.reason)
            return
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                if self.close_sent or not self.queue.offer(payload):
                    self._to_app({"type": "websocket.receive", "text": payload})
            elif opcode == OP_BINARY:
                self._to_app({"type": "websocket.receive", "bytes": payload})
            elif opcode == OP_PING:
                if not self.transport.is_closing():
                    self.transport.write(build_frame(OP_PONG, payload, mask=False))
            elif opcode == OP_PONG:
                self.handle_pong(Frame(Opcode.PONG, payload))
            elif opcode == OP_CLOSE:
                self._peer_closed(payload)
                return

    def _to_app(self, message: dict) -> None:
        if self.close_sent:
            return  # past our close: read on only to see the peer's answer, as uvicorn does
        self.queue.put_nowait(message)
        if not self.read_paused and self.queue.qsize() >= READ_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()  # receive() resumes once the queue is empty

    def _peer_closed(self, payload: bytes) -> None:
        if self.close_sent:  # the peer answered our close: the handshake is complete
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        try:
            code, reason = parse_close(payload)
        except FrameError as error:
            self._fail(error.code, error.reason)
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(build_frame(OP_CLOSE, close_payload(code), mask=False))
        self.close_sent = True
        self._client_gone()

    def _client_gone(self) -> None:
        """Close the transport; the app's later sends raise ClientDisconnected, an OSError.

        That is what ASGI asks for a send to a closed socket. Before connection_lost, uvicorn
        would otherwise answer it with RuntimeError ("after sending 'websocket.close'"), as if
        the app had closed the socket itself (issue 13).
        """
        self.disconnected = True
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: tell the app and the client why, and hang up."""
        self.logger.info("WebSocket protocol error from %s: %s", self.client, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if not self.close_sent:
            self.transport.write(build_frame(OP_CLOSE, close_payload(code, reason), mask=False))
            self.close_sent = True
        self._client_gone()

    async def send(self, message) -> None:
        if not self.writable.is_set():  # the client reads slower than we write: wait for it
            self.senders_waiting += 1
            try:
                await self.writable.wait()
            finally:
                self.senders_waiting -= 1
        if (
            message["type"] == "websocket.send"
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
        ):
            data = message.get("bytes")
            if data is not None:
                self.transport.write(build_frame(OP_BINARY, data, mask=False))
            else:
                self.write_text(message["text"])
            return
        await super().send(message)  # handshake, close, HTTP responses: uvicorn's own path

    def write_text(self, text: str) -> None:
        self.transport.write(build_frame(OP_TEXT, text.encode(), mask=False))
