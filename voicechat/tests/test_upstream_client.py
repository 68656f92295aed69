"""The gateway's WebSocket client to the provider (upstream/websocket.py), against real servers on loopback.

`websockets`' own server plays a well-behaved provider; small asyncio servers play the broken
ones (wrong handshake, silence, a dropped line) that a `websockets` server cannot imitate.
"""

import asyncio
import base64
import contextlib
import hashlib
import ssl
import struct
import subprocess
from http import HTTPStatus

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

from voicechat.transport.frames import OP_CLOSE, FrameReader, build_frame, parse_close
from voicechat.upstream import websocket
from voicechat.upstream.websocket import HandshakeError, HandshakeRefused

OPTIONS = {"open_timeout": 5, "max_size": 1 << 24, "max_queue": 64, "close_timeout": 2}


async def connect(url: str, **options):
    return await websocket.connect(url, headers={"Authorization": "Bearer sk-test"},
                                         **{**OPTIONS, **options})  # fmt: skip


async def provider(handler, **options):
    """A `websockets` server on a free port; returns (server, ws:// base URL)."""
    server = await serve(handler, "127.0.0.1", 0, **options)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def raw_server(script):
    """A bare TCP server running `script(reader, writer)` per connection; returns (server, URL)."""
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def accept_upgrade(reader, writer) -> None:
    """Answer a WebSocket upgrade correctly, as far as the handshake goes."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def ignore_everything(reader, writer) -> None:
    await accept_upgrade(reader, writer)
    while await reader.read(65536):
        pass
    writer.close()


async def test_messages_flow_both_ways_with_fragments_pings_and_a_clean_close():
    seen = {}

    async def handler(ws):
        seen["path"] = ws.request.path
        seen["authorization"] = ws.request.headers["Authorization"]
        seen["beta"] = ws.request.headers.get("OpenAI-Beta")
        await ws.send('{"type":"session.created"}')
        await ws.send(["frag", "mented \u00e9v\u00e9nement"])  # one message in three frames
        await asyncio.wait_for(await ws.ping(b"still there?"), 5)  # the client answers
        async for message in ws:
            await ws.send(f"echo: {message}")

    server, url = await provider(handler)
    async with server:
        connection = await connect(f"{url}/v1/realtime?model=gpt-realtime")
        assert await anext(connection) == '{"type":"session.created"}'
        assert await anext(connection) == "fragmented \u00e9v\u00e9nement"
        await connection.send("x" * 100_000)  # a 64-bit length
        assert await anext(connection) == "echo: " + "x" * 100_000
        await connection.close()
    assert connection.close_code == 1000
    assert seen == {
        "path": "/v1/realtime?model=gpt-realtime",
        "authorization": "Bearer sk-test",
        "beta": None,  # GA protocol: never the retired beta header
    }
    with pytest.raises(ConnectionClosedOK):
        await connection.send("too late")


async def test_the_key_stays_out_of_the_log_at_any_level(caplog):
    """picows logs the upgrade request, Authorization header included, below DEBUG (the test
    provider, a `websockets` server, logs it too: its lines are not ours)."""
    caplog.set_level(1)
    server, url = await provider(echo)
    async with server:
        connection = await connect(url)
        await connection.send("hello")
        assert await anext(connection) == "hello"
        await connection.close()
    theirs = [r for r in caplog.records if r.name.startswith("websockets")]
    assert any("sk-test" in r.getMessage() for r in theirs)  # so every level was captured
    ours = [r.getMessage() for r in caplog.records if r not in theirs]
    assert not [message for message in ours if "sk-test" in message]


async def test_the_providers_close_code_and_reason_end_the_stream():
    async def handler(ws):
        await ws.send("last words")
        await ws.close(1000, "Your session hit the maximum duration of 60 minutes.")

    server, url = await provider(handler)
    async with server:
        connection = await connect(url)
        assert [message async for message in connection] == ["last words"]
    assert connection.close_code == 1000
    assert connection.close_reason == "Your session hit the maximum duration of 60 minutes."


async def test_a_dropped_line_ends_the_stream_as_abnormal():
    async def handler(ws):
        await ws.send("hello")
        ws.transport.abort()  # no close frame: the line just drops

    server, url = await provider(handler)
    async with server:
        connection = await connect(url)
        assert [message async for message in connection] == ["hello"]
        assert connection.close_code == 1006
        with pytest.raises(ConnectionClosedError):
            await connection.send("anyone?")


async def test_a_refused_upgrade_reports_its_http_status():
    def refuse(connection, request):
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided\n")

    server, url = await provider(lambda ws: ws.close(), process_request=refuse)
    async with server:
        with pytest.raises(HandshakeRefused) as refused:
            await connect(url)
    assert refused.value.status == 401


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["wrong-accept-key", "not-http", "no-upgrade"],
)
async def test_a_server_that_does_not_upgrade_properly_is_refused(answer):
    async def answer_badly(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    server, url = await raw_server(answer_badly)
    async with server:
        with pytest.raises(HandshakeError):
            await connect(url)


async def test_unreachable_and_silent_servers_fail_in_time():
    server, url = await raw_server(lambda reader, writer: reader.read())  # never answers
    async with server:
        with pytest.raises(TimeoutError):
            await connect(url, open_timeout=0.3)
    with pytest.raises(OSError):
        await connect(url)  # the port is closed now


async def test_a_provider_that_stops_answering_pings_is_given_up():
    server, url = await raw_server(ignore_everything)
    async with server:
        connection = await connect(url, ping_interval=0.1, ping_timeout=0.2)
        assert [message async for message in connection] == []
    assert (connection.close_code, connection.close_reason) == (1011, "keepalive ping timeout")


async def test_closing_does_not_wait_forever_for_a_silent_provider():
    server, url = await raw_server(ignore_everything)
    async with server:
        connection = await connect(url, close_timeout=0.2)
        await asyncio.wait_for(connection.close(), 5)
    assert connection.close_code == 1006  # it never answered our close


async def test_a_protocol_error_from_the_provider_closes_with_its_code():
    async def send_masked(reader, writer):
        await accept_upgrade(reader, writer)
        writer.write(b"\x81\x81abcd\x00")  # a masked frame: servers must not mask
        await reader.read()

    server, url = await raw_server(send_masked)
    async with server:
        connection = await connect(url)
        assert [message async for message in connection] == []
    assert connection.close_code == 1002


def fragment(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """One unmasked frame with a short payload, final or not."""
    return bytes(((0x80 if fin else 0) | opcode, len(payload))) + payload


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # 100 fragments of 100 bytes: each frame is small, the message is not.
        ([fragment(0x1, b"a" * 100, fin=False)] + [fragment(0x0, b"a" * 100, fin=False)] * 99,
         1009),
        ([fragment(0x0, b"stray", fin=True)], 1002),  # a continuation of nothing
        ([fragment(0x1, b"half", fin=False), fragment(0x1, b"new", fin=True)], 1002),
        ([fragment(0x1, b"\xc3", fin=False), fragment(0x0, b"(", fin=True)], 1007),
    ],
    ids=["fragments-beyond-max-size", "stray-continuation", "interrupted", "invalid-utf8"],
)  # fmt: skip
async def test_a_badly_fragmented_message_closes_with_its_code(frames, code):
    async def send_frames(reader, writer):
        await accept_upgrade(reader, writer)
        writer.write(b"".join(frames))
        await reader.read()

    server, url = await raw_server(send_frames)
    async with server:
        connection = await connect(url, max_size=5000)
        assert [message async for message in connection] == []
    assert connection.close_code == code


async def test_a_close_code_no_server_may_send_is_a_protocol_error():
    """RFC 6455 section 7.4: answered with 1002, not echoed back as it came."""
    answers = []

    async def close_with_1005(reader, writer):
        await accept_upgrade(reader, writer)
        writer.write(build_frame(OP_CLOSE, struct.pack("!H", 1005), mask=False))
        answers.append(await reader.read())

    server, url = await raw_server(close_with_1005)
    async with server:
        connection = await connect(url)
        assert [message async for message in connection] == []
        async with asyncio.timeout(5):
            while not answers:
                await asyncio.sleep(0.01)
    assert connection.close_code == 1002
    ((opcode, payload),) = FrameReader(masked=True, max_size=1000).feed(answers[0])
    assert opcode == OP_CLOSE and parse_close(payload)[0] == 1002


async def test_a_long_close_reason_reaches_the_provider_as_valid_utf8():
    closed = {}

    async def handler(ws):
        await ws.wait_closed()
        closed["code"], closed["reason"] = ws.close_code, ws.close_reason

    server, url = await provider(handler)
    async with server:
        connection = await connect(url)
        await connection.close(4000, "\u00e9" * 100)  # 200 bytes: cut, between two characters
        async with asyncio.timeout(5):
            while not closed:
                await asyncio.sleep(0.01)
    assert closed == {"code": 4000, "reason": "\u00e9" * 61}


async def test_a_slow_reader_pauses_the_provider_and_loses_nothing():
    count, size = 400, 16_000  # 6.4 MB: more than the socket buffers hold

    async def flood(ws):
        for index in range(count):
            await ws.send(f"{index:06d}" + "a" * size)
        await ws.wait_closed()

    server, url = await provider(flood)
    async with server:
        connection = await connect(url, max_queue=16)
        await asyncio.sleep(0.5)  # the relay is busy; the provider keeps sending
        assert connection._messages.qsize() < count  # reading paused well before the end
        received = [int((await anext(connection))[:6]) for _ in range(count)]
        await connection.close()
    assert received == list(range(count))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_wss_verifies_the_providers_certificate(tls_files):
    cert, key = tls_files
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    async def greet(ws):
        await ws.send("over TLS")
        await ws.wait_closed()

    server = await serve(greet, "127.0.0.1", 0, ssl=server_tls)
    url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    async with server:
        trusted = ssl.create_default_context(cafile=str(cert))
        connection = await connect(url, tls=trusted)
        assert await anext(connection) == "over TLS"
        await connection.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(url)  # the system's trust store has never heard of it


async def test_only_websocket_urls_are_accepted():
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        await connect("https://api.openai.com/v1/realtime")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def connect_proxy(requests: list[bytes], *, answer: bytes = b"200 Connection established"):
    """An HTTP CONNECT proxy on loopback that records each request head."""

    async def pipe(reader, writer):
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head)
        writer.write(b"HTTP/1.1 " + answer + b"\r\n\r\n")
        if not answer.startswith(b"200"):
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def test_the_environments_http_proxy_is_used_through_connect(no_proxy_env):
    requests: list[bytes] = []
    proxy, proxy_address = await connect_proxy(requests)
    server, url = await provider(echo)
    no_proxy_env.setenv("http_proxy", f"http://gate%40keeper:s3cret@{proxy_address}")
    async with proxy, server:
        connection = await connect(url)
        await connection.send("through the tunnel")
        assert await anext(connection) == "through the tunnel"
        await connection.close()
    (head,) = requests
    assert head.startswith(f"CONNECT {url.removeprefix('ws://')} HTTP/1.1\r\n".encode())
    credentials = base64.b64encode(b"gate@keeper:s3cret")
    assert b"Proxy-Authorization: Basic " + credentials + b"\r\n" in head


async def test_no_proxy_hosts_are_reached_directly(no_proxy_env):
    requests: list[bytes] = []
    proxy, proxy_address = await connect_proxy(requests)
    server, url = await provider(echo)
    no_proxy_env.setenv("http_proxy", f"http://{proxy_address}")
    no_proxy_env.setenv("no_proxy", "127.0.0.1")
    async with proxy, server:
        connection = await connect(url)
        await connection.close()
    assert requests == []


async def test_a_proxy_that_refuses_the_tunnel_is_an_unreachable_provider(no_proxy_env):
    requests: list[bytes] = []
    proxy, proxy_address = await connect_proxy(
        requests, answer=b"407 Proxy Authentication Required"
    )
    no_proxy_env.setenv("http_proxy", f"http://{proxy_address}")
    async with proxy:
        with pytest.raises(OSError, match="407"):
            await connect("ws://provider.invalid/v1/realtime")
    assert len(requests) == 1


async def test_an_https_proxy_url_is_refused_before_any_connection(no_proxy_env):
    """TLS to the proxy is not spoken: such a proxy was reached over plain TCP on port 80."""
    connections = []

    async def record(reader, writer):
        connections.append(await reader.read(100))
        writer.close()

    listener = await asyncio.start_server(record, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    no_proxy_env.setenv("https_proxy", f"https://user:s3cret@127.0.0.1:{port}")
    url = "wss://provider.invalid/v1/realtime"
    async with listener:
        with pytest.raises(OSError, match="only http:// proxies") as refused:
            await connect(url)
    assert connections == []
    assert "s3cret" not in str(refused.value)
    # The same words, for a start-up check.
    assert websocket.proxy_problem(url) == str(refused.value)
    no_proxy_env.setenv("https_proxy", f"http://127.0.0.1:{port}")
    assert websocket.proxy_problem(url) is None
    assert websocket.proxy_problem("ws://provider.invalid/") is None  # no proxy for ws


async def test_a_text_handler_takes_messages_in_order_with_iteration(caplog):
    async def provider_side(ws):
        async for message in ws:
            if message == "go":
                for text in ("a", "slow", "b"):
                    await ws.send(text)
            elif message == "go on":
                for text in ("boom", "c", "d"):
                    await ws.send(text)
            else:
                await ws.send(message)

    taken: list[str] = []

    def handle(text: str) -> bool:
        if text == "boom":
            raise RuntimeError("the handler broke")
        if text == "slow":
            return False  # left to iteration
        taken.append(text)
        return True

    server, url = await provider(provider_side)
    async with server:
        connection = await connect(url)
        connection.on_text(handle)
        await connection.send("go")
        # "slow" waits for iteration, so "b" must wait behind it.
        assert [await anext(connection) for _ in range(2)] == ["slow", "b"]
        await connection.send("go on")
        # The handler raises at "boom": it is dropped, and nothing is lost.
        assert [await anext(connection) for _ in range(3)] == ["boom", "c", "d"]
        await connection.close()
    assert taken == ["a"]
    assert "upstream text handler failed" in caplog.text


async def test_send_now_waits_its_turn_behind_a_waiting_send():
    received: list[str] = []

    async def provider_side(ws):
        async for message in ws:
            received.append(message)

    server, url = await provider(provider_side)
    async with server:
        connection = await connect(url)
        assert connection.can_send_now()
        connection.send_now("one")
        connection.pause_writing()  # as the transport does when the provider reads slowly
        assert not connection.can_send_now()
        waiting = asyncio.create_task(connection.send("two"))
        await asyncio.sleep(0.05)
        connection.resume_writing()
        assert not connection.can_send_now()  # "two" has not been written yet
        await waiting
        assert connection.can_send_now()
        connection.send_now("three")
        await connection.close()
        assert not connection.can_send_now()
    assert received == ["one", "two", "three"]


def test_an_https_proxy_is_refused_at_start_up(no_proxy_env, monkeypatch, settings):
    from voicechat.checks import upstream_proxy_usable

    settings.OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
    assert upstream_proxy_usable() == []
    monkeypatch.setenv("https_proxy", "https://user:secret@proxy.example:3128")
    [error] = upstream_proxy_usable()
    assert error.id == "voicechat.E401"
    assert "proxy.example" in error.msg and "secret" not in error.msg
