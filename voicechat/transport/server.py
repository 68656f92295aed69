"""uvicorn's sans-I/O WebSocket server with the relay's frame path made flat.

`manage.py serve` runs uvicorn with this protocol (`ws=` takes a class). uvicorn's own
implementation, with `websockets` doing the HTTP upgrade, stays in charge of everything but
the frames of an open connection:

- Incoming frames are parsed by voicechat.transport.frames instead of `websockets`' generator
  chain, and outgoing `websocket.send` messages are framed there too.
- Reading pauses only when the consumer falls READ_HIGH_WATER messages behind. uvicorn pauses
  the socket after every message and resumes it when the app takes it: two event-loop watcher
  changes (system calls) per audio frame.
- Received messages wait in a one-reader Inbox (voicechat/transport/inbox.py), not an asyncio.Queue.
- A message may be at most REALTIME_MAX_FRAME_BYTES (uvicorn's --ws-max-size if smaller),
  counted as it is reassembled, in at most MAX_FRAGMENTS frames; pongs wait while the client
  does not read (see _pong).
- The `voicechat.text_shortcut` scope extension (TextShortcut) lets the app take text frames
  right in data_received and write text frames at once, with no task switch, whenever nothing
  waits ahead of them; the ASGI receive()/send() path stays for everything else.
- An upgrade request `websockets` cannot read (a header line over 8 KiB, over 128 headers) is
  answered with 431 (400 if otherwise malformed) and closed; uvicorn's own leaves it hanging.

Measured in BENCHMARKS.md ("The flat frame path", "The synchronous shortcut"). Written
against uvicorn 0.54 (pinned); the tests run every gateway test through it.
"""

from collections.abc import Callable

import uvicorn
from django.conf import settings
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import SecurityError
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from voicechat.transport.frames import (
    CLOSE_POLICY_VIOLATION,
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
from voicechat.transport.inbox import Inbox

# The uvicorn releases this protocol was written and tested against. It overrides uvicorn's
# internals (its send, its connection state), which a new release may change without notice: a
# server on any other release refuses to start, rather than relay with subtly broken framing.
TESTED_UVICORN = ("0.54.",)
if not uvicorn.__version__.startswith(TESTED_UVICORN):
    raise ImportError(
        f"voicechat.transport.server was tested with uvicorn {', '.join(TESTED_UVICORN)}x, not "
        f"{uvicorn.__version__}: pin uvicorn as requirements.txt does, or run uvicorn with its "
        "own --ws websockets-sansio (the general path, slower)."
    )

# Messages a consumer may leave waiting before the socket stops being read. The gateway takes
# each frame as it arrives; one this far behind is stalled, and TCP then pushes back on the
# client, as it would under uvicorn's own pause-per-message.
READ_HIGH_WATER = 16

# Frames one message may arrive in. Browsers and the SDKs send each message as one frame; a
# client that fragments has room, and one that keeps a message open with empty frames is closed.
MAX_FRAGMENTS = 1024

# Pings a client may send while it does not read what we send (a pong waits for it): keepalives
# come every few seconds, so this many within one such stall is a flood.
MAX_PINGS_NOT_READING = 100

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
        # The gateway's frame limit rather than uvicorn's 16 MiB default: it bounds a message as
        # it is reassembled, and so the READ_HIGH_WATER messages that may wait for the app.
        max_size = min(self.config.ws_max_size, settings.REALTIME_MAX_FRAME_BYTES)
        # No per-message deflate whatever the config says: base64 audio barely compresses, and
        # the flat frame reader does not inflate.
        self.conn = ServerProtocol(max_size=max_size, logger=self.logger)
        self.frame_reader = FrameReader(masked=True, max_size=max_size, max_fragments=MAX_FRAGMENTS)
        self.senders_waiting = 0  # send() calls waiting for the socket to drain
        self.unsent_pong: bytes | None = None  # the latest ping's, while the client is not reading
        self.pings_not_reading = 0

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][TEXT_SHORTCUT] = TextShortcut(self)

    def data_received(self, data: bytes) -> None:
        if self.disconnected:
            return  # after our close: discarded until the client closes its end (_hang_up)
        if not self.handshake_complete:
            # The HTTP upgrade request: `websockets` parses it. A client sends no frame before
            # it has our 101 answer, so every later byte is a frame.
            super().data_received(data)
            if self.conn.handshake_exc is not None and not self.handshake_initiated:
                self._refuse_unreadable_request(self.conn.handshake_exc.__cause__)
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
                if not self._pong(payload):
                    return
            elif opcode == OP_PONG:
                self.handle_pong(Frame(Opcode.PONG, payload))
            elif opcode == OP_CLOSE:
                self._peer_closed(payload)
                return

    def _refuse_unreadable_request(self, cause: BaseException | None) -> None:
        """Answer an upgrade request `websockets` could not read, and hang up.

        Its parser gives up on a header line over 8 KiB or more than 128 headers and waits for
        an answer that uvicorn never writes: the client hung until it gave up (issue 13).
        """
        status = 431 if isinstance(cause, SecurityError) else 400
        self.logger.info("Unreadable WebSocket request from %s: %s", self.client, cause)
        response = self.conn.reject(status, f"Unreadable WebSocket request: {cause}\n")
        self.transport.write(response.serialize())
        self.handshake_complete = self.close_sent = True  # as uvicorn marks a refused upgrade
        self.transport.close()

    def _pong(self, payload: bytes) -> bool:
        """Answer a ping; False when the client has been closed for flooding them.

        While the client does not read what we send (writing is paused), only its latest ping
        is answered, once it reads again, as RFC 6455 section 5.5.3 allows: answering each at
        once let a client that pings without reading grow the write buffer by 110 MB in 10 s.
        """
        if self.writable.is_set():
            self.transport.write(build_frame(OP_PONG, payload, mask=False))
            return True
        self.unsent_pong = payload
        self.pings_not_reading += 1
        if self.pings_not_reading <= MAX_PINGS_NOT_READING:
            return True
        self._fail(CLOSE_POLICY_VIOLATION, "pings sent while not reading")
        return False

    def resume_writing(self) -> None:
        super().resume_writing()
        pong, self.unsent_pong, self.pings_not_reading = self.unsent_pong, None, 0
        if pong is not None and not self.disconnected:
            self.transport.write(build_frame(OP_PONG, pong, mask=False))

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
        self._hang_up()

    def _hang_up(self) -> None:
        """End the connection once our close frame is out; nothing more reaches the app.

        The app's later sends raise ClientDisconnected, an OSError, as ASGI asks for a closed
        socket; before connection_lost, uvicorn would answer them with RuntimeError ("after
        sending 'websocket.close'"), as if the app had closed the socket itself (issue 13).

        A socket closed with unread input is reset, and the reset drops what the client has not
        read yet, our close frame included: so we half-close after the write buffer and discard
        what still arrives (data_received) until the client closes its end, or close_timeout
        has passed (a client that does not read would otherwise hold the socket for good).
        """
        self.disconnected = True
        if self.transport.can_write_eof():  # not over TLS
            self.transport.write_eof()
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
        else:
            self.transport.close()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: tell the app and the client why, and hang up."""
        self.logger.info("WebSocket protocol error from %s: %s", self.client, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if not self.close_sent:
            self.transport.write(build_frame(OP_CLOSE, close_payload(code, reason), mask=False))
            self.close_sent = True
        self._hang_up()

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
