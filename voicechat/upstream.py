"""The upstream side of a gateway connection: one Realtime session per browser socket.

`OpenAIUpstream` is the only code that talks to OpenAI (it alone knows the URL, headers and key);
the local engine implements the same interface (voicechat/upstream_base.py) in-process, and
open_upstream() chooses between them. Frames are JSON text in both directions and are passed
through untouched, so audio is never decoded here.
"""

import logging
import zoneinfo
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode

from django.conf import settings
from websockets.exceptions import ConnectionClosed

from voicechat import upstream_ws
from voicechat.models import Backend, EndReason
from voicechat.redaction import redact
from voicechat.upstream_base import Upstream, UpstreamClosed, UpstreamError

logger = logging.getLogger(__name__)


class OpenAIUpstream(Upstream):
    backend = Backend.OPENAI

    def __init__(self, *, url: str, api_key: str, model: str, connect_timeout: float) -> None:
        self._url = f"{url}?{urlencode({'model': model})}"
        self._api_key = api_key
        self._connect_timeout = connect_timeout
        self._ws: upstream_ws.UpstreamConnection | None = None

    async def connect(self) -> None:
        try:
            self._ws = await upstream_ws.connect(
                self._url,
                # GA protocol: no OpenAI-Beta header, ever (it selects the retired beta shape).
                headers={"Authorization": f"Bearer {self._api_key}"},
                open_timeout=self._connect_timeout,
                max_size=16 * 1024 * 1024,
                max_queue=64,
                # A dead provider must not hold a closing conversation for long.
                close_timeout=2,
            )
        except upstream_ws.HandshakeRefused as exc:
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
        except (OSError, TimeoutError, ValueError, upstream_ws.HandshakeError) as exc:
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


def resolve_backend() -> Backend:
    """The backend new conversations use: REALTIME_BACKEND, with auto = OpenAI iff a key is set."""
    if settings.REALTIME_BACKEND == "auto":
        return Backend.OPENAI if settings.OPENAI_API_KEY else Backend.LOCAL
    return Backend(settings.REALTIME_BACKEND)


def time_zone_or_none(name: str) -> str | None:
    """`name` if it is a time zone this machine knows (IANA, e.g. "Europe/Paris"), else None."""
    if not name or len(name) > 64:
        return None
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    return name


def open_upstream(model: str, *, time_zone: str | None = None) -> Upstream:
    """The upstream for a new conversation (not yet connected); `time_zone` is the user's, for
    the offline engine's answers about the time (OpenAI's models are not told it)."""
    if resolve_backend() == Backend.LOCAL:
        try:
            from voicechat.local_engine import LocalUpstream
        except ImportError:
            raise UpstreamError(
                EndReason.NOT_CONFIGURED,
                "No AI backend is configured: set OPENAI_API_KEY on the server "
                "(the offline local engine is not installed).",
                code="backend_not_configured",
            ) from None
        return LocalUpstream(model=model, time_zone=time_zone)
    if not settings.OPENAI_API_KEY:
        raise UpstreamError(
            EndReason.NOT_CONFIGURED,
            "REALTIME_BACKEND is openai but OPENAI_API_KEY is not set on the server.",
            code="backend_not_configured",
        )
    return OpenAIUpstream(
        url=settings.OPENAI_REALTIME_URL,
        api_key=settings.OPENAI_API_KEY,
        model=model,
        connect_timeout=settings.REALTIME_CONNECT_TIMEOUT,
    )
