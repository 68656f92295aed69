"""The body of POST /v1/realtime/calls, as OpenAI takes it: the SDP offer alone
(`Content-Type: application/sdp`), or multipart with an `sdp` part and a `session` part (JSON)."""

from dataclasses import dataclass

import orjson
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from voicechat.calls import ephemeral

# An SDP offer from a browser is a few kilobytes; anything far larger is not one.
MAX_SDP_BYTES = 64 * 1024
MAX_SESSION_BYTES = 64 * 1024


class BadOffer(Exception):
    """The request carries no usable offer: an HTTP status, an error code and a message."""

    def __init__(self, status: int, message: str, *, code: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Offer:
    sdp: str
    session: dict | None  # the session configuration to start with, if the client gave one


def read_offer(request: HttpRequest) -> Offer:
    try:
        return _read_offer(request)
    except (RequestDataTooBig, TooManyFieldsSent, MultiPartParserError):
        raise BadOffer(
            400, "The request body is too large or malformed.", code="invalid_offer"
        ) from None


def _read_offer(request: HttpRequest) -> Offer:
    content_type = request.content_type or ""
    if content_type == "application/sdp":
        return Offer(sdp=_sdp(request.body), session=None)
    if content_type == "multipart/form-data":
        sdp = _part(request, "sdp")
        if sdp is None:
            raise BadOffer(
                400, "Missing required parameter: 'sdp'.", code="missing_required_parameter"
            )
        session = _part(request, "session")
        return Offer(sdp=_sdp(sdp), session=_session(session) if session is not None else None)
    raise BadOffer(
        415,
        "Send the SDP offer as application/sdp, or as multipart/form-data with 'sdp' and "
        "'session' parts.",
        code="unsupported_content_type",
    )


def _part(request: HttpRequest, name: str) -> bytes | None:
    """A multipart field, whether sent as a plain field or as a file part (OpenAI's SDK sends
    the SDP as a part with a content type of its own)."""
    if name in request.FILES:
        upload = request.FILES[name]
        if upload.size > MAX_SDP_BYTES:
            raise BadOffer(400, f"The '{name}' part is too large.", code="invalid_value")
        return upload.read()
    if name in request.POST:
        return request.POST[name].encode()
    return None


def _sdp(body: bytes) -> str:
    if len(body) > MAX_SDP_BYTES:
        raise BadOffer(400, "The SDP offer is too large.", code="invalid_offer")
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadOffer(400, "The SDP offer is not UTF-8 text.", code="invalid_offer") from None
    if not sdp.lstrip().startswith("v=0"):
        raise BadOffer(400, "The body is not an SDP offer.", code="invalid_offer")
    return sdp


def _session(raw: bytes) -> dict:
    if len(raw) > MAX_SESSION_BYTES:
        raise BadOffer(400, "The 'session' part is too large.", code="invalid_value")
    try:
        session = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadOffer(400, "The 'session' part is not JSON.", code="invalid_json") from None
    if not isinstance(session, dict):
        raise BadOffer(400, "The 'session' part must be a JSON object.", code="invalid_type")
    if "model" in session and not isinstance(session["model"], str):
        raise BadOffer(400, "'session.model' must be a string.", code="invalid_type")
    return session


def read_secret_request(request: HttpRequest) -> tuple[int, dict | None]:
    """POST /v1/realtime/client_secrets' JSON body (may be empty): the secret's lifetime in
    seconds (`expires_after`, anchored at its creation) and the session configuration."""
    try:
        request.body  # noqa: B018 - read once here, where its size is checked
    except RequestDataTooBig:
        raise BadOffer(400, "The request body is too large.", code="invalid_value") from None
    if not request.body:
        return ephemeral.DEFAULT_SECONDS, None
    if len(request.body) > MAX_SESSION_BYTES:
        raise BadOffer(400, "The request body is too large.", code="invalid_value")
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise BadOffer(400, "The request body is not JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadOffer(400, "The request body must be a JSON object.", code="invalid_type")
    expires = body.get("expires_after") or {}
    seconds = (
        expires.get("seconds", ephemeral.DEFAULT_SECONDS) if isinstance(expires, dict) else None
    )
    if (
        not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not ephemeral.MIN_SECONDS <= seconds <= ephemeral.MAX_SECONDS
        or expires.get("anchor", "created_at") != "created_at"
    ):
        raise BadOffer(
            400,
            f"'expires_after' must be {{'anchor': 'created_at', 'seconds': "
            f"{ephemeral.MIN_SECONDS}-{ephemeral.MAX_SECONDS}}}.",
            code="invalid_value",
        )
    session = body.get("session")
    if session is None:
        return seconds, None
    return seconds, _session(orjson.dumps(session))
