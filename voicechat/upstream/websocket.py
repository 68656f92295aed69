"""The WebSocket client the gateway opens to the provider: one per conversation, on `picows`.

picows (Cython) does the transport work: the HTTP/1.1 upgrade, framing and masking, answering
pings, HTTP CONNECT proxies. This module adds what the relay needs on top, with no task or
queue per frame: whole messages (fragments joined, bounded by `max_size`) wait in a bounded
inbox for the relay loop, or go straight to an `on_text` handler; reading stops while
`max_queue` messages wait and writers wait while the socket's buffer is full; a keepalive ends a
silent upstream with 1011; refusals come back with their HTTP status; close codes a server may
not send are answered with 1002 (RFC 6455 section 7.4).

What it does not: SOCKS proxies, TLS to the proxy itself (an https:// proxy URL is refused, see
proxy_problem()), redirects (the Bearer key must not follow one), compression.

It replaced a hand-written client on asyncio.Protocol and our own framing (issue 13). Measured
side by side in one relay-benchmark run, the gateway costs the same CPU per conversation with
either (0.202 against 0.206 % of a core at N=400, Node 0.180) and holds Node's capacity, 400 on
one core, where the old client's run held 300; picows' read buffers add about 30 KB of memory
per conversation (BENCHMARKS.md, "The provider-side client on picows").
"""

import asyncio
import contextlib
import functools
import logging
import ssl
import urllib.request
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from picows import (
    WSError,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)
from python_socks import ProxyError
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from voicechat.transport.frames import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    FrameError,
    close_payload,
    parse_close,
)
from voicechat.transport.inbox import Inbox

_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PONG, _CLOSE = WSMsgType.PONG, WSMsgType.CLOSE

# Below DEBUG picows logs the upgrade request, the provider's key in it: its logger keeps to
# warnings and errors (a provider breaking the protocol), whatever the root level.
_picows_log = logging.getLogger("voicechat.upstream.websocket.picows")
_picows_log.setLevel(logging.WARNING)


class HandshakeError(Exception):
    """The server did not accept the upgrade properly."""


class HandshakeRefused(HandshakeError):
    """The server answered the upgrade with an HTTP error (401 bad key, 429 quota, ...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class UpstreamConnection(WSListener):
    """An open client WebSocket. Use `connect()`; iterate it for text messages."""

    def __init__(
        self,
        *,
        max_size: int,
        max_queue: int,
        ping_interval: float,
        ping_timeout: float,
        close_timeout: float,
    ) -> None:
        self._max_size = max_size
        self._max_queue = max_queue
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: WSTransport | None = None
        # Received messages for the relay loop; None after the last one: the connection ended.
        self._messages = Inbox("upstream text")
        self._fragments: bytearray | None = None  # a fragmented message being joined
        self._fragments_binary = False
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

    # --- picows' listener ------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._start_keepalive()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        kind = frame.msg_type
        if kind == _TEXT and frame.fin and self._fragments is None:  # nearly every frame
            try:
                self._deliver(frame.get_payload_as_utf8_text())
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
        elif kind == _TEXT or kind == _BINARY or kind == _CONTINUATION:
            self._join_fragment(kind, frame.fin, frame.get_payload_as_bytes())
        elif kind == _PONG:
            self._pong_received()
        elif kind == _CLOSE:
            self._server_closed(frame.get_payload_as_bytes())
        # Pings are answered by picows (enable_auto_pong).

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._stop_keepalive()
        if self.close_code is None:
            sent = transport.close_handshake.sent if transport.close_handshake else None
            if sent is not None and not self._close_sent:  # picows failed the connection
                self.close_code, self.close_reason = int(sent.code), sent.reason
            else:  # no close frame: the connection just dropped, or never answered ours
                self.close_code = CLOSE_ABNORMAL
        if not self._closed.done():
            self._closed.set_result(None)
        self._writable.set()  # wake a sender waiting for room: it will find the socket closed
        self._messages.put_nowait(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- receiving -------------------------------------------------------------------------

    def on_text(self, handler: Callable[[str], bool] | None) -> None:
        """Offer later text messages to handler(text) as they are read, before iteration.

        It returns True when it took the message, False to leave it to iteration. A message is
        offered only while none waits for iteration, so order is kept. A handler that raises
        is logged and dropped; that message and all later ones go to iteration.
        """
        self._messages.direct_handler = handler

    def _join_fragment(self, kind, fin: bool, payload: bytes) -> None:
        if (kind == _CONTINUATION) == (self._fragments is None):
            self._fail(CLOSE_PROTOCOL_ERROR, "unexpected continuation or interrupted fragments")
            return
        if self._fragments is None:
            self._fragments = bytearray()
            self._fragments_binary = kind == _BINARY
        self._fragments += payload
        if len(self._fragments) > self._max_size:  # bounded as it grows, not once whole
            self._fail(CLOSE_TOO_BIG, "message too big")
            return
        if not fin:
            return
        message, self._fragments = bytes(self._fragments), None
        if self._fragments_binary:
            self._deliver(message.decode(errors="replace"))  # the protocol has none
            return
        try:
            self._deliver(message.decode())
        except UnicodeDecodeError:
            self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")

    def _deliver(self, message: str) -> None:
        if self._messages.offer(message):
            return
        self._messages.put_nowait(message)
        if not self._read_paused and self._messages.qsize() >= self._max_queue:
            # The relay is behind (a slow client): stop reading, and TCP slows the provider.
            self._read_paused = True
            self._transport.underlying_transport.pause_reading()

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
            self._transport.underlying_transport.resume_reading()
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
        self._transport.send(_TEXT, message.encode())

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
        self._send_close(code, reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout)
        if not self._closed.done():
            self._transport.disconnect(graceful=False)
            await self._closed

    def _send_close(self, code: int, reason: str = "") -> None:
        if not self._close_sent:
            self._close_sent = True
            # close_payload cuts a long reason on a character boundary (half a character
            # would make the whole frame invalid UTF-8).
            self._transport.send_close(code, close_payload(code, reason)[2:])

    def _server_closed(self, payload: bytes) -> None:
        try:
            self.close_code, self.close_reason = parse_close(payload)
        except FrameError as error:  # e.g. 1005, which picows lets through
            self._fail(error.code, error.reason)
            return
        self._send_close(self.close_code)  # the server began the close: answer it
        self._transport.disconnect()

    def _fail(self, code: int, reason: str) -> None:
        """The server broke the protocol (or went silent): close with `code` and hang up."""
        self.close_code, self.close_reason = code, reason
        self._send_close(code, reason)
        self._transport.disconnect()

    # --- keepalive -------------------------------------------------------------------------
    # Ours rather than picows' auto-ping, which ends a silent server with 1001 (going away);
    # a provider that stops answering is an error (1011), as the gateway reports it.

    def _start_keepalive(self) -> None:
        if self._ping_interval > 0:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        if self._transport.is_disconnected:
            return
        self._transport.send_ping(b"keepalive")
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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once (loading it costs milliseconds per connection)."""
    return ssl.create_default_context()


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
    proxy = _proxy_for(parts.scheme, parts.hostname)
    if proxy is not None:
        proxy = _http_proxy(proxy).geturl()

    def listener() -> UpstreamConnection:
        return UpstreamConnection(
            max_size=max_size,
            max_queue=max_queue,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )

    try:
        _transport, connection = await asyncio.wait_for(
            ws_connect(
                listener,
                url,
                ssl_context=(tls or _tls_context()) if parts.scheme == "wss" else None,
                websocket_handshake_timeout=open_timeout,
                enable_auto_pong=True,
                max_frame_size=max_size,
                extra_headers={"User-Agent": "voicechat-gateway", **headers},
                max_redirects=0,
                proxy=proxy,
                use_aiofastnet=False,  # the event loop's own transports (uvloop in production)
                logger_name=_picows_log,
            ),
            open_timeout,
        )
    except WSInvalidStatusError as error:
        raise HandshakeRefused(int(error.response.status)) from None
    except WSError as error:
        raise HandshakeError(str(error)) from None
    except ProxyError as error:  # not an OSError, yet just as much an unreachable provider
        raise OSError(f"the proxy refused CONNECT: {error}") from None
    return connection


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

    An https:// proxy wants TLS to the proxy itself: refused rather than configured, since the
    tunnel already carries the provider's own TLS (wss://) end to end.
    """
    proxy = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise OSError(
            f"unsupported proxy {proxy.scheme}://{proxy.hostname or ''}: only http:// proxies "
            "(HTTP CONNECT) work, TLS to the proxy is not supported; give the proxy's http:// "
            "address in HTTPS_PROXY / HTTP_PROXY (a wss:// provider stays TLS end to end)"
        )
    return proxy
