"""Which Realtime session a new conversation opens: OpenAI's, or the offline engine's.

REALTIME_BACKEND chooses (auto: OpenAI when the server has a key). This is the one place that
knows both implementations of the Upstream interface, so neither of them imports the other.
"""

import zoneinfo

from django.conf import settings

from voicechat.enums import Backend, EndReason
from voicechat.upstream.base import Upstream, UpstreamError
from voicechat.upstream.openai import OpenAICall, OpenAIUpstream, calls_url


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


def open_openai_call(model: str, *, offer_sdp: str, session: dict) -> OpenAICall:
    """The upstream of a WebRTC call made at OpenAI (not yet connected): connecting posts the
    client's offer with `session` (the server's configuration) and attaches the sideband."""
    if not settings.OPENAI_API_KEY:
        raise UpstreamError(
            EndReason.NOT_CONFIGURED,
            "REALTIME_BACKEND is openai but OPENAI_API_KEY is not set on the server.",
            code="backend_not_configured",
        )
    endpoint = settings.OPENAI_REALTIME_CALLS_URL or calls_url(settings.OPENAI_REALTIME_URL)
    if not endpoint.startswith(("https://", "http://")) or not endpoint.rstrip("/").endswith(
        "/realtime/calls"
    ):
        raise UpstreamError(
            EndReason.NOT_CONFIGURED,
            "OPENAI_REALTIME_CALLS_URL must be an http(s) URL ending in /realtime/calls.",
            code="backend_not_configured",
        )
    return OpenAICall(
        url=settings.OPENAI_REALTIME_URL,
        calls_endpoint=endpoint,
        api_key=settings.OPENAI_API_KEY,
        model=model,
        connect_timeout=settings.REALTIME_CONNECT_TIMEOUT,
        offer_sdp=offer_sdp,
        session=session,
    )
