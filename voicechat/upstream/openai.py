"""The upstream side of a gateway connection: one Realtime session per browser socket.

`OpenAIUpstream` is the only code that talks to OpenAI (it alone knows the URL, headers and key),
with `OpenAICall`, its form for a WebRTC call made at OpenAI (the offer posted to OpenAI's calls
endpoint, the call's sideband WebSocket, its hangup); the local engine implements the same
interface (voicechat/upstream/base.py) in-process, and open_upstream() (and open_openai_call(),
voicechat/gateway/backends.py) chooses between them. Frames are JSON text in
both directions and are passed through untouched, so audio is never decoded here.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import openai
from websockets.exceptions import ConnectionClosed

from voicechat.enums import Backend, EndReason
from voicechat.protocol import EndConversation
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


# --- WebRTC calls: the offer made at OpenAI, its sideband, its hangup -------------------------


class CallRefusedByProvider(UpstreamError):
    """OpenAI refused a call's offer: `status` and `error` (OpenAI's shape) answer the caller."""

    def __init__(self, message: str, *, code: str, status: int, error: dict) -> None:
        super().__init__(EndReason.UPSTREAM_REFUSED, message, code=code)
        self.status, self.error = status, error


def calls_url(realtime_url: str) -> str:
    """OpenAI's calls endpoint beside its Realtime WebSocket: https://api.openai.com/v1/realtime/calls
    for wss://api.openai.com/v1/realtime (ws:// gives http://)."""
    parts = urlsplit(realtime_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/calls", "", ""))


def _sdk_client(calls_endpoint: str, api_key: str, timeout: float) -> openai.AsyncOpenAI:
    """OpenAI's SDK for the calls endpoint (its multipart request, errors and proxies from the
    environment); one per request, so no pooled connection outlives the event loop it was made
    on. No retries: a caller waits for the answer, and an offer is not worth sending twice."""
    base_url = calls_endpoint.rstrip("/").removesuffix("/realtime/calls")
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)


# OpenAI's answers about the request's content (the offer, the session): the caller's to fix.
_CALLERS_TO_FIX = frozenset({400, 413, 415, 422})


def _refusal(exc: openai.APIStatusError) -> CallRefusedByProvider:
    """What the caller is told when OpenAI refuses the offer.

    A bad offer or session (400, 413, 415, 422) is the caller's to fix: OpenAI's own status and
    error pass through (redacted). Anything else is none of the caller's doing (the server's key
    refused, a wrong OPENAI_REALTIME_CALLS_URL's 404, OpenAI failing): 502 in words of our own,
    or 429 for the server's rate limit or quota.
    """
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    said = redact(str(body.get("message") or ""))[:500]
    logger.warning("OpenAI refused a call's offer: HTTP %s %s", status, said)
    if status not in _CALLERS_TO_FIX and status != 429:
        hint = {
            401: "the server's API key was rejected",
            403: "the server's API key may not use this model",
        }.get(status, "the provider answered with an error")
        message = f"The AI service refused the call (HTTP {status}: {hint})."
        error = {
            "message": message,
            "type": "server_error",
            "param": None,
            "code": "upstream_refused",
        }
        return CallRefusedByProvider(message, code="upstream_refused", status=502, error=error)
    if status == 429:
        message = f"The AI service refused the call (HTTP {status}: its rate limit or quota)."
        error = {
            "message": "The AI service's rate limit or quota was reached. Try again later.",
            "type": "rate_limit_error",
            "param": None,
            "code": "upstream_rate_limited",
        }
        return CallRefusedByProvider(message, code="upstream_rate_limited", status=429, error=error)
    code = str(body.get("code") or "invalid_request")[:64]
    error = {
        "message": said or f"The AI service refused the call (HTTP {status}).",
        "type": str(body.get("type") or "invalid_request_error")[:64],
        "param": body.get("param") if isinstance(body.get("param"), str) else None,
        "code": code,
    }
    message = f"The AI service refused the call (HTTP {status}: {error['message']})"
    return CallRefusedByProvider(message, code=code, status=status, error=error)


class OpenAICall(OpenAIUpstream):
    """A WebRTC call made at OpenAI for a client's SDP offer, seen through its sideband.

    connect() posts the offer to OpenAI's calls endpoint (multipart `sdp` + `session`, with the
    server's key: the client never holds one), keeps the SDP answer and OpenAI's call id, then
    opens the sideband WebSocket (`?call_id=`), through which the conversation relays as with any
    upstream: every server event of the call comes in on it, and what it sends goes into the
    call. The client's media and data channel go to OpenAI directly. Closing it hangs the call
    up: a call never goes on without its sideband, where it is recorded and policed.
    """

    def __init__(
        self,
        *,
        url: str,
        calls_endpoint: str,
        api_key: str,
        model: str,
        connect_timeout: float,
        offer_sdp: str,
        session: dict,
    ) -> None:
        super().__init__(url=url, api_key=api_key, model=model, connect_timeout=connect_timeout)
        self._sideband_url = url
        self._calls_endpoint = calls_endpoint.rstrip("/")
        self._offer_sdp = offer_sdp
        self._session = session
        self.call_id: str | None = None  # OpenAI's, once it has answered
        self.answer_sdp: str | None = None
        self._hangup: asyncio.Future | None = None
        self.refused: CallRefusedByProvider | None = None  # OpenAI's answer, if it said no

    async def connect(self) -> None:
        self.call_id, self.answer_sdp = await self._create_call()
        self._url = f"{self._sideband_url}?{urlencode({'call_id': self.call_id})}"
        try:
            await super().connect()
        except BaseException:
            await self.hang_up()  # no sideband, no call
            raise

    async def _create_call(self) -> tuple[str, str]:
        try:
            async with _sdk_client(
                self._calls_endpoint, self._api_key, self._connect_timeout
            ) as client:
                response = await client.realtime.calls.with_raw_response.create(
                    sdp=self._offer_sdp, session=self._session
                )
                answer = response.http_response.text
        except openai.APIStatusError as exc:
            self.refused = _refusal(exc)
            raise self.refused from None
        except openai.APIError as exc:  # no answer at all: unreachable, timed out
            logger.warning("OpenAI's calls endpoint unreachable: %s", redact(repr(exc)))
            raise UpstreamError(
                EndReason.UPSTREAM_UNREACHABLE,
                "The AI service could not be reached. Please try again in a moment.",
                code="upstream_unreachable",
            ) from None
        location = response.headers.get("location") or ""
        call_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not call_id or not answer.lstrip().startswith("v=0"):
            logger.warning(
                "OpenAI's calls endpoint answered without a call (Location %r)", location
            )
            raise UpstreamError(
                EndReason.UPSTREAM_ERROR,
                "The AI service did not answer the call properly.",
                code="upstream_error",
            )
        return call_id, answer

    async def hang_up(self) -> None:
        """POST .../calls/{call_id}/hangup, once (later calls wait for that one); a failure
        is logged, never raised: the call ends at OpenAI anyway once its peer goes."""
        if self.call_id is None:
            return
        if self._hangup is None:
            self._hangup = asyncio.ensure_future(self._post_hangup())
        await asyncio.shield(self._hangup)

    async def _post_hangup(self) -> None:
        try:
            async with _sdk_client(
                self._calls_endpoint, self._api_key, self._connect_timeout
            ) as client:
                await client.realtime.calls.hangup(self.call_id)
        except openai.NotFoundError:
            logger.info("call %s had already ended at OpenAI", self.call_id)
        except openai.APIError as exc:
            logger.warning(
                "could not hang up call %s at OpenAI: %s", self.call_id, redact(repr(exc))
            )

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        async for frame in self._ws:
            yield frame
        code, reason = self.close_code, self.close_reason or ""
        if code == 1000 and "maximum duration" not in reason.lower():
            # OpenAI closes the sideband normally when the call ends there: the caller left.
            raise EndConversation(
                EndReason.CLIENT_CLOSED,
                f"The call ended at OpenAI (its sideband closed: {code} {redact(reason)})".strip()
                + ".",
                code="call_ended",
            )
        # Any other close: the sideband dropped. The conversation ends (upstream_closed, or
        # OpenAI's time limit) and closing this hangs the call up.

    async def close(self) -> None:
        await self.hang_up()
        await super().close()
