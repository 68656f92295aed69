"""The upstream side of a gateway connection: one Realtime session per browser socket.

`OpenAIUpstream` is the only code that talks to OpenAI (it alone knows the URL, headers and key);
the local engine implements the same interface (voicechat/upstream/base.py) in-process, and
open_upstream() (voicechat/gateway/backends.py) chooses between them. Frames are JSON text in
both directions and are passed through untouched, so audio is never decoded here.
"""

import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed

from voicechat.enums import Backend, EndReason
from voicechat.redaction import redact
from voicechat.upstream import websocket
from voicechat.upstream.base import Upstream, UpstreamClosed, UpstreamError

logger = logging.getLogger(__name__)


class OpenAIUpstream(Upstream):
    backend = Backend.OPENAI

    def __init__(self, *, url: str, api_key: str, model: str, connect_timeout: float) -> None:
        self._url = f"{url}?{urlencode({'model': model})}"
        self._api_key = api_key
        self._connect_timeout = connect_timeout
        self._ws: websocket.UpstreamConnection | None = None

    async def connect(self) -> None:
        try:
            self._ws = await websocket.connect(
                self._url,
                # GA protocol: no OpenAI-Beta header, ever (it selects the retired beta shape).
                headers={"Authorization": f"Bearer {self._api_key}"},
                open_timeout=self._connect_timeout,
                max_size=16 * 1024 * 1024,
                max_queue=64,
                # A dead provider must not hold a closing conversation for long.
                close_timeout=2,
            )
        except websocket.HandshakeRefused as exc:
            status = exc.status
            logger.warning("upstream refused the handshake: HTTP %s", status)
            hint = {
                401: "the server's API key was rejected",
                403: "the server's API key may not use this model",
                429: "the provider's rate limit or quota was reached",
            }.get(status, "the provider answered the handshake with an error")
            raise UpstreamError(
                EndReason.UPSTREAM_REFUSED,
                f"The AI service refused the connection (HTTP {status}: {hint}).",
                code="upstream_refused",
            ) from None
        except (OSError, TimeoutError, ValueError, websocket.HandshakeError) as exc:
            logger.warning("upstream unreachable: %s", redact(repr(exc)))
            raise UpstreamError(
                EndReason.UPSTREAM_UNREACHABLE,
                "The AI service could not be reached. Please try again in a moment.",
                code="upstream_unreachable",
            ) from None

    async def send(self, frame: str) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as closed:
            raise UpstreamClosed() from closed

    def __aiter__(self) -> AsyncIterator[str]:
        # Every server frame passes here: the connection itself is the iterator, with no async
        # generator around it.
        return self._ws

    def on_text(self, handler: Callable[[str], bool]) -> None:
        self._ws.on_text(handler)

    def can_send_now(self) -> bool:
        return self._ws.can_send_now()

    def send_now(self, frame: str) -> None:
        self._ws.send_now(frame)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code if self._ws is not None else None

    @property
    def close_reason(self) -> str:
        return self._ws.close_reason if self._ws is not None else ""

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
