"""The gateway's uvicorn WebSocket protocol, on a real uvicorn with a small echo application.

Every gateway test also runs through it (the gateway_server fixture and the server processes
use it); these tests cover what the gateway's own clients never do on purpose.
"""

import asyncio
import contextlib
import socket
import struct

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from voicechat.transport.frames import (
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    build_frame,
    close_payload,
    parse_close,
)
from voicechat.transport.server import (
    MAX_FRAGMENTS,
    MAX_PINGS_NOT_READING,
    READ_HIGH_WATER,
    TEXT_SHORTCUT,
    GatewayWebSocketProtocol,
    TextShortcut,
)


class EchoApp:
    """Echoes each message; "close" makes it close with 4007; records how the socket ended."""

    def __init__(self) -> None:
        self.disconnects: list[dict] = []
        self.reading = asyncio.Event()
        self.reading.set()

    async def __call__(self, scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            await self.reading.wait()
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4007, "reason": "bye"})
                continue
            await send({**message, "type": "websocket.send"})


@contextlib.asynccontextmanager
async def served(app, **config):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                       ws=GatewayWebSocketProtocol, **config)
    )  # fmt: skip
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield server, f"ws://127.0.0.1:{port}/"
    except BaseException:
        server.force_exit = True  # a failed test may leave the app stuck: do not wait for it
        raise
    finally:
        server.should_exit = True
        await task


async def test_text_binary_fragments_and_pings_round_trip():
    app = EchoApp()
    async with served(app) as (_, url), connect(url, compression=None) as ws:
        await ws.send("h\u00e9llo")
        assert await ws.recv() == "h\u00e9llo"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        await ws.send(["frag", "mented"])  # one message in two frames
        assert await ws.recv() == "fragmented"
        await ws.send("z" * 200_000)
        assert await ws.recv() == "z" * 200_000
        await asyncio.wait_for(await ws.ping(b"hi"), 5)  # answered with a pong
        await ws.close(1000, "done")
        await asyncio.sleep(0.1)
    assert app.disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": "done"}]


async def test_the_app_closes_with_its_code_and_reason():
    async with served(EchoApp()) as (_, url), connect(url) as ws:
        await ws.send("close")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4007, "bye")


async def test_server_keepalive_pings_are_answered_and_keep_the_socket_open():
    async with served(EchoApp(), ws_ping_interval=0.05, ws_ping_timeout=1) as (server, url):
        async with connect(url) as ws:
            await asyncio.sleep(0.3)  # several pings and pongs
            (protocol,) = server.server_state.connections
            assert protocol.last_ping_rtt > 0
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def raw_upgrade(url: str):
    host, port = url.removeprefix("ws://").strip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


def upgrade_request(*extra_headers: str) -> bytes:
    head = [
        "GET /v1/realtime HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
        "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13", *extra_headers,
    ]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode()


# Upgrade requests `websockets` will not read: they hung until the client gave up (issue 13).
UNREADABLE_REQUESTS = {
    "8 KiB header": upgrade_request("X-Big: " + "x" * 9000),
    "200 headers": upgrade_request(*(f"X-{n}: a" for n in range(200))),
}


async def answer_to(address: str, request: bytes) -> bytes:
    """All the server sends back before it hangs up (bounded: a hang fails the test)."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("request_name", sorted(UNREADABLE_REQUESTS))
@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_an_unreadable_upgrade_request_is_answered_and_closed(http, request_name):
    app = EchoApp()
    async with served(app, http=http) as (_, url):
        answer = await answer_to(
            url.removeprefix("ws://").strip("/"), UNREADABLE_REQUESTS[request_name]
        )
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert app.disconnects == []  # the app never saw it


@pytest.mark.django_db(transaction=True)
async def test_an_unreadable_upgrade_request_to_the_gateway_is_answered(
    fake_upstream, gateway_server
):
    """The real application behind the production protocol; the next request is served."""
    answer = await answer_to(gateway_server, UNREADABLE_REQUESTS["8 KiB header"])
    assert answer.startswith(b"HTTP/1.1 431 ")
    answer = await answer_to(gateway_server, upgrade_request())  # no credentials
    assert answer.startswith(b"HTTP/1.1 403 ")


def client_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x02hi", 1002),  # not masked
        (build_frame(OP_TEXT, b"\xff\xfe", mask=True), 1007),  # not UTF-8
        (b"\x81\xff" + struct.pack("!Q", 1 << 40) + b"abcd", 1009),  # a terabyte announced
        (  # each frame within REALTIME_MAX_FRAME_BYTES (256 KiB), the message over it
            client_frame(Opcode.TEXT, b"x" * 200_000, fin=False)
            + client_frame(Opcode.CONT, b"x" * 100_000, fin=False),
            1009,
        ),
        (  # a message kept open with empty frames
            client_frame(Opcode.TEXT, b"{", fin=False)
            + client_frame(Opcode.CONT, b"", fin=False) * MAX_FRAGMENTS,
            1009,
        ),
        # Close codes no peer may send (RFC 6455 section 7.4): they were echoed back.
        (build_frame(OP_CLOSE, struct.pack("!H", 1005), mask=True), 1002),
        (build_frame(OP_CLOSE, struct.pack("!H", 999) + b"why", mask=True), 1002),
        (build_frame(OP_CLOSE, struct.pack("!H", 5000), mask=True), 1002),
    ],
    ids=[
        "unmasked",
        "bad-utf8",
        "too-big",
        "fragments-too-big",
        "too-many-fragments",
        "close-1005",
        "close-999",
        "close-5000",
    ],  # fmt: skip
)
async def test_a_broken_client_frame_closes_with_its_code(frame, code):
    app = EchoApp()
    async with served(app) as (_, url):
        reader, writer = await raw_upgrade(url)
        writer.write(frame)
        answer = await asyncio.wait_for(reader.read(), 5)  # then the server hangs up
        writer.close()
        await asyncio.sleep(0.05)
    (close_frame,) = FrameReader(masked=False, max_size=1000).feed(answer)
    assert struct.unpack("!H", close_frame[1][:2])[0] == code
    assert app.disconnects[0]["code"] == code


async def test_a_consumer_that_falls_behind_stops_the_reading_and_loses_nothing():
    app = EchoApp()
    app.reading.clear()  # the consumer is busy
    count = 600
    async with served(app) as (server, url), connect(url, compression=None) as ws:

        async def send_all() -> None:
            for index in range(count):
                await ws.send(f"{index:06d}" + "a" * 10_000)

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(0.5)
        (protocol,) = server.server_state.connections
        paused, waiting = protocol.read_paused, protocol.queue.qsize()
        app.reading.set()  # before asserting: uvicorn would wait for a stuck app forever
        echoed = [int((await ws.recv())[:6]) for _ in range(count)]
        await sender
    # Reading paused at the high-water mark (plus what one socket read held).
    assert paused
    assert READ_HIGH_WATER <= waiting < count // 4
    assert echoed == list(range(count))


class ShortcutApp:
    """Echoes through the text shortcut ("now <text>"), except frames that start with "slow":
    it declines those and echoes them from its receive() loop after a pause ("got <text>").
    "boom" makes the shortcut handler raise."""

    def __init__(self) -> None:
        self.shortcut: TextShortcut | None = None
        self.taken: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.shortcut = scope["extensions"][TEXT_SHORTCUT]
        self.shortcut.on_text(self.relay_now)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["text"].startswith("slow"):
                await asyncio.sleep(0.2)
            await send({"type": "websocket.send", "text": "got " + message["text"]})

    def relay_now(self, text: str) -> bool:
        if text == "boom":
            raise RuntimeError("the handler broke")
        if text.startswith("slow") or not self.shortcut.can_send():
            return False
        self.taken.append(text)
        self.shortcut.send("now " + text)
        return True


async def test_the_shortcut_takes_frames_in_order_with_the_receive_path():
    app = ShortcutApp()
    async with served(app) as (_, url), connect(url, compression=None) as ws:
        await ws.send("a")
        assert await ws.recv() == "now a"
        # "slow" is declined and waits for receive(); "b" and "c" must not overtake it.
        for text in ("slow", "b", "c"):
            await ws.send(text)
        assert [await ws.recv() for _ in range(3)] == ["got slow", "got b", "got c"]
        await ws.send("d")  # nothing waits any more: the shortcut again
        assert await ws.recv() == "now d"
    assert app.taken == ["a", "d"]


async def test_a_failing_shortcut_handler_hands_every_later_frame_to_receive(caplog):
    app = ShortcutApp()
    async with served(app) as (_, url), connect(url, compression=None) as ws:
        await ws.send("boom")
        assert await ws.recv() == "got boom"  # nothing lost
        await ws.send("e")
        assert await ws.recv() == "got e"
    assert app.taken == []
    assert "text shortcut handler failed" in caplog.text


async def test_the_shortcut_cannot_send_while_a_send_waits_for_the_socket():
    app = ShortcutApp()
    async with served(app) as (server, url), connect(url, compression=None) as ws:
        await ws.send("a")
        assert await ws.recv() == "now a"
        (protocol,) = server.server_state.connections
        protocol.pause_writing()  # as the transport does when the client reads too slowly
        assert not app.shortcut.can_send()
        waiting = asyncio.create_task(protocol.send({"type": "websocket.send", "text": "first"}))
        await asyncio.sleep(0.05)
        protocol.resume_writing()
        # The waiting send() has not run yet: a shortcut write now would overtake it.
        assert not app.shortcut.can_send()
        await waiting
        assert app.shortcut.can_send()
        assert await ws.recv() == "first"


async def test_a_send_after_the_client_closed_raises_an_oserror():
    """As ASGI asks (uvicorn: ClientDisconnected), never RuntimeError, which broke cleanup."""
    raised = []

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except Exception as exc:
            raised.append(exc)

    async with served(app) as (_, url):
        async with connect(url):
            pass  # a clean close from the client
        async with asyncio.timeout(5):
            while not raised:
                await asyncio.sleep(0.01)
    assert isinstance(raised[0], OSError), raised


async def test_the_message_size_limit_is_the_gateways(settings):
    settings.REALTIME_MAX_FRAME_BYTES = 10_000  # not uvicorn's 16 MiB
    app = EchoApp()
    async with served(app) as (_, url), connect(url, compression=None) as ws:
        await ws.send("a" * 10_000)
        assert await ws.recv() == "a" * 10_000
        await ws.send("a" * 10_001)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009
    assert app.disconnects[0]["code"] == 1009


async def test_pings_while_the_client_does_not_read_get_one_late_pong():
    async with served(EchoApp()) as (server, url):
        reader, writer = await raw_upgrade(url)
        (protocol,) = server.server_state.connections
        protocol.pause_writing()  # as the transport does when the client reads too slowly
        for n in range(MAX_PINGS_NOT_READING):
            writer.write(client_frame(Opcode.PING, b"%d" % n))
        await writer.drain()
        await asyncio.sleep(0.1)
        nothing_yet = protocol.transport.get_write_buffer_size()
        protocol.resume_writing()  # the client reads again: the latest ping is answered
        writer.write(client_frame(Opcode.CLOSE, close_payload(1000)))
        answer = await asyncio.wait_for(reader.read(), 5)
    assert nothing_yet == 0
    pong, close = FrameReader(masked=False, max_size=1000).feed(answer)
    assert pong == (OP_PONG, b"%d" % (MAX_PINGS_NOT_READING - 1))
    assert close[0] == OP_CLOSE


async def test_a_client_that_pings_on_without_reading_is_closed():
    app = EchoApp()
    async with served(app) as (server, url):
        reader, writer = await raw_upgrade(url)
        (protocol,) = server.server_state.connections
        protocol.pause_writing()
        writer.write(client_frame(Opcode.PING, b"") * (MAX_PINGS_NOT_READING + 1))
        async with asyncio.timeout(5):
            while not app.disconnects:
                await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(reader.read(), 5)
    assert app.disconnects[0]["code"] == 1008
    ((opcode, payload),) = FrameReader(masked=False, max_size=1000).feed(answer)
    assert opcode == OP_CLOSE and parse_close(payload)[0] == 1008


def test_an_untested_uvicorn_release_refuses_the_gateway_protocol(monkeypatch):
    """It overrides uvicorn internals: on another release it fails at import, not mid-frame."""
    import importlib
    import sys

    import uvicorn

    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    monkeypatch.delitem(sys.modules, "voicechat.transport.server")
    with pytest.raises(ImportError, match="websockets-sansio"):
        importlib.import_module("voicechat.transport.server")
