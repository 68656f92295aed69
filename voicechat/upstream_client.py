"""The WebSocket client the gateway opens to the provider: one per conversation.

A protocol on the event loop's transport, with no task or queue per frame: received frames go
through voicechat.websocket_frames and wait in a bounded list for the relay loop; sent frames
are built there and written at once. `websockets`' asyncio client cost about twice as much CPU
per frame (docs/benchmarks.md), on the path every audio frame takes.

What it does: ws:// and wss:// (system trust store), an HTTP proxy from the environment
(HTTPS_PROXY / HTTP_PROXY with NO_PROXY, through CONNECT), the HTTP/1.1 upgrade with a Bearer
key, refusals reported with their HTTP status, ping/pong both ways with a keepalive that ends a
silent upstream, fragmented messages, the close handshake, bounded buffers both ways. What it
does not: SOCKS proxies, TLS to the proxy itself (an https:// proxy URL is refused, see
proxy_problem()), redirects, compression.
"""

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import socket
import ssl
import urllib.request
from collections.abc import Callable
from urllib.parse import SplitResult, unquote, urlsplit

from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from voicechat.inbox import Inbox
from voicechat.websocket_frames import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
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

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_RESPONSE_HEAD = 64 * 1024


class HandshakeError(Exception):
    """The server did not accept the upgrade properly."""


class HandshakeRefused(HandshakeError):
    """The server answered the upgrade with an HTTP error (401 bad key, 429 quota, ...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class UpstreamConnection(asyncio.Protocol):
    """An open client WebSocket. Use `connect()`; iterate it for text messages."""

    def __init__(
        self,
        *,
        host: str,
        target: str,
        headers: dict[str, str],
        max_size: int,
        max_queue: int,
        ping_interval: float,
        ping_timeout: float,
        close_timeout: float,
    ) -> None:
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = _upgrade_request(host, target, self._key, headers)
        self._reader = FrameReader(masked=False, max_size=max_size)
        self._max_queue = max_queue
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._handshake = self._loop.create_future()
        # Received messages for the relay loop; None after the last one: the connection ended.
        self._messages = Inbox("upstream text")
        self._read_paused = False
        self._senders_waiting = 0  # send() calls waiting for the socket to drain
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = self._loop.create_future()  # set when the TCP connection is gone
        self._close_sent = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._handshake.done():
            data = self._read_response_head(data)
            if not data:
                return
        try:
            messages = self._reader.feed(data)
        except FrameError as error:
            self._fail(error.code, error.reason)
            return
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                self._deliver(payload)
            elif opcode == OP_BINARY:
                self._deliver(payload.decode(errors="replace"))  # the protocol has none
            elif opcode == OP_PING:
                self._write(build_frame(OP_PONG, payload, mask=True))
            elif opcode == OP_PONG:
                self._pong_received()
            elif opcode == OP_CLOSE:
                self._server_closed(payload)
                return

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_keepalive()
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL  # no close frame: the connection just dropped
        if not self._handshake.done():
            self._handshake.set_exception(
                exc or HandshakeError("the connection closed during the handshake")
            )
        if not self._closed.done():
            self._closed.set_result(None)
        self._writable.set()  # wake a sender waiting for room: it will find the socket closed
        self._messages.put_nowait(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- handshake -------------------------------------------------------------------------

    def _read_response_head(self, data: bytes) -> bytes:
        """Collect the HTTP response head; return the bytes after it (frames), if any."""
        self._head += data
        head, separator, rest = self._head.partition(b"\r\n\r\n")
        if not separator:
            if len(self._head) > _MAX_RESPONSE_HEAD:
                self._refuse_handshake(HandshakeError("response head too large"))
            return b""
        self._head = b""
        try:
            self._check_response(head)
        except HandshakeError as error:
            self._refuse_handshake(error)
            return b""
        self._handshake.set_result(None)
        self._start_keepalive()
        return rest

    def _check_response(self, head: bytes) -> None:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = _http_status(status_line)
        if status is None:
            raise HandshakeError(f"not an HTTP response: {status_line[:80]!r}")
        if status != 101:
            raise HandshakeRefused(status)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(
            hashlib.sha1(self._key.encode() + _ACCEPT_GUID).digest()  # noqa: S324 (RFC 6455)
        ).decode()
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("the response does not upgrade to websocket")
        if headers.get("sec-websocket-accept") != expected:
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions"):
            raise HandshakeError("the server chose an extension we did not offer")

    def _refuse_handshake(self, error: HandshakeError) -> None:
        self._handshake.set_exception(error)
        self._transport.close()

    # --- receiving -------------------------------------------------------------------------

    def on_text(self, handler: Callable[[str], bool] | None) -> None:
        """Offer later text messages to handler(text) as they are read, before iteration.

        It returns True when it took the message, False to leave it to iteration. A message is
        offered only while none waits for iteration, so order is kept. A handler that raises
        is logged and dropped; that message and all later ones go to iteration.
        """
        self._messages.direct_handler = handler

    def _deliver(self, message: str) -> None:
        if self._messages.offer(message):
            return
        self._messages.put_nowait(message)
        if not self._read_paused and self._messages.qsize() >= self._max_queue:
            # The relay is behind (a slow client): stop reading, and TCP slows the provider.
            self._read_paused = True
            self._transport.pause_reading()

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        """The next message; StopAsyncIteration once the connection is closed and drained."""
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)  # the end stays the end for any later call
            raise StopAsyncIteration
        if self._read_paused and self._messages.empty():
            self._read_paused = False
            self._transport.resume_reading()
        return message

    # --- sending ---------------------------------------------------------------------------

    async def send(self, message: str) -> None:
        """Send a text message; waits while the socket's write buffer is full."""
        if not self._writable.is_set():
            self._senders_waiting += 1
            try:
                await self._writable.wait()
            finally:
                self._senders_waiting -= 1
        if self._close_sent or self._closed.done():
            raise self._closed_error()
        self.send_now(message)

    def can_send_now(self) -> bool:
        """True when send_now() may write: open, room in the buffer, no send() waiting."""
        return (
            self._writable.is_set()
            and not self._senders_waiting
            and not self._close_sent
            and not self._closed.done()
        )

    def send_now(self, message: str) -> None:
        """Send a text message at once; only after can_send_now() said yes (nothing between)."""
        self._transport.write(build_frame(OP_TEXT, message.encode(), mask=True))

    def _write(self, frame: bytes) -> None:
        if not self._closed.done() and not self._transport.is_closing():
            self._transport.write(frame)

    def _closed_error(self) -> Exception:
        code = self.close_code if self.close_code is not None else CLOSE_ABNORMAL
        received = Close(code, self.close_reason) if code != CLOSE_ABNORMAL else None
        if code in (CLOSE_NORMAL, 1001):
            return ConnectionClosedOK(received, None)
        return ConnectionClosedError(received, None)

    # --- closing ---------------------------------------------------------------------------

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close handshake: send our close, wait close_timeout for the server's, hang up."""
        if self._closed.done():
            return
        if not self._close_sent:
            self._close_sent = True
            self._write(build_frame(OP_CLOSE, close_payload(code, reason), mask=True))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout)
        if not self._closed.done():
            self._transport.abort()
            await self._closed

    def _server_closed(self, payload: bytes) -> None:
        try:
            self.close_code, self.close_reason = parse_close(payload)
        except FrameError as error:
            self._fail(error.code, error.reason)
            return
        if not self._close_sent:  # the server began the close: answer it
            self._close_sent = True
            self._write(build_frame(OP_CLOSE, close_payload(self.close_code), mask=True))
        self._transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """The server broke the protocol (or went silent): close with `code` and hang up."""
        self.close_code, self.close_reason = code, reason
        if not self._close_sent:
            self._close_sent = True
            self._write(build_frame(OP_CLOSE, close_payload(code, reason), mask=True))
        self._transport.close()

    # --- keepalive -------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self._ping_interval > 0:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._write(build_frame(OP_PING, b"keepalive", mask=True))
        self._pong_deadline = self._loop.call_later(
            self._ping_timeout, self._fail, CLOSE_INTERNAL_ERROR, "keepalive ping timeout"
        )

    def _pong_received(self) -> None:
        if self._pong_deadline is not None:
            self._pong_deadline.cancel()
            self._pong_deadline = None
            self._start_keepalive()

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._pong_deadline):
            if timer is not None:
                timer.cancel()


def _http_status(status_line: str) -> int | None:
    """The status code of an HTTP/1.x response's first line; None if it is not one."""
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return None
    return int(parts[1])


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once (loading it costs milliseconds per connection)."""
    return ssl.create_default_context()


def _upgrade_request(host: str, target: str, key: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: voicechat-gateway",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(
    url: str,
    *,
    headers: dict[str, str],
    open_timeout: float,
    max_size: int,
    max_queue: int,
    close_timeout: float,
    ping_interval: float = 20.0,
    ping_timeout: float = 20.0,
    tls: ssl.SSLContext | None = None,
) -> UpstreamConnection:
    """Open a WebSocket to `url` (ws:// or wss://, verified against `tls` or else the system's
    trust store). Raises OSError or TimeoutError when the server cannot be reached,
    HandshakeRefused or HandshakeError when it will not upgrade."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    default_port = port == (443 if secure else 80)
    host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # an IPv6 literal
        host_header = f"[{parts.hostname}]" + ("" if default_port else f":{port}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    def protocol() -> UpstreamConnection:
        return UpstreamConnection(
            host=host_header,
            target=target,
            headers=headers,
            max_size=max_size,
            max_queue=max_queue,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )

    async def open_and_upgrade() -> UpstreamConnection:
        tls_context = (tls or _tls_context()) if secure else None
        proxy = _proxy_for(parts.scheme, parts.hostname)
        if proxy is None:
            _transport, connection = await loop.create_connection(
                protocol, parts.hostname, port, ssl=tls_context
            )
        else:
            tunnel = await _connect_tunnel(proxy, parts.hostname, port)
            _transport, connection = await loop.create_connection(
                protocol,
                sock=tunnel,
                ssl=tls_context,
                server_hostname=parts.hostname if secure else None,
            )
        try:
            await connection._handshake
        except BaseException:
            connection._transport.abort()
            raise
        return connection

    return await asyncio.wait_for(open_and_upgrade(), open_timeout)


def _proxy_for(scheme: str, hostname: str) -> str | None:
    """The proxy URL the environment asks for, as `websockets` and `requests` read it."""
    if urllib.request.proxy_bypass(hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get("https" if scheme == "wss" else "http")


def proxy_problem(url: str) -> str | None:
    """Why the proxy the environment names for `url` cannot be used; None when it can, or
    when there is none. For a start-up check: connect() refuses the same proxies."""
    parts = urlsplit(url)
    proxy_url = _proxy_for(parts.scheme, parts.hostname) if parts.hostname else None
    if proxy_url is None:
        return None
    try:
        _http_proxy(proxy_url)
    except OSError as error:
        return str(error)
    return None


def _http_proxy(proxy_url: str) -> SplitResult:
    """The parts of a proxy URL (no scheme means http://), or OSError unless it is http://.

    An https:// proxy wants TLS to the proxy itself, which this client does not speak: it was
    reached over plain TCP on port 80 instead. Refused rather than built, since the tunnel
    already carries the provider's own TLS (wss://) end to end.
    """
    proxy = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise OSError(
            f"unsupported proxy {proxy.scheme}://{proxy.hostname or ''}: only http:// proxies "
            "(HTTP CONNECT) work, TLS to the proxy is not supported; give the proxy's http:// "
            "address in HTTPS_PROXY / HTTP_PROXY (a wss:// provider stays TLS end to end)"
        )
    return proxy


async def _connect_tunnel(proxy_url: str, host: str, port: int) -> socket.socket:
    """A TCP socket to host:port through an HTTP proxy's CONNECT; OSError if it will not."""
    proxy = _http_proxy(proxy_url)
    loop = asyncio.get_running_loop()
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.username:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        request += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
    family, kind, proto, _name, address = (
        await loop.getaddrinfo(proxy.hostname, proxy.port or 80, type=socket.SOCK_STREAM)
    )[0]
    tunnel = socket.socket(family, kind, proto)
    tunnel.setblocking(False)
    try:
        await loop.sock_connect(tunnel, address)
        await loop.sock_sendall(tunnel, (request + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:  # the proxy says nothing more until we do
            chunk = await loop.sock_recv(tunnel, 4096)
            if not chunk or len(head) > _MAX_RESPONSE_HEAD:
                raise OSError("the proxy closed the connection during CONNECT")
            head += chunk
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if _http_status(status_line) != 200:
            raise OSError(f"the proxy refused CONNECT: {status_line[:80]}")
    except BaseException:
        tunnel.close()
        raise
    return tunnel
