"""POST /v1/realtime/calls and POST /v1/realtime/calls/{call_id}/hangup, OpenAI's contract.

Everything that refuses a call does so before anything is started, with OpenAI's error shape:
not signed in or a bad token (401), cross-origin or no CSRF token (403), too many calls from the
address (429), a body that is not an offer (400, 415); the conversation's own admission (the
user's rate and concurrency limits, draining, models, budget) answers with its status (call.py).
A hangup finds the caller's call on whichever process holds it (directory.py).
"""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from voicechat.access import ratelimit
from voicechat.calls import call as calls
from voicechat.calls import directory, ephemeral, openai_call
from voicechat.calls.access import NotAllowed, caller
from voicechat.calls.offer import BadOffer, read_offer, read_secret_request
from voicechat.enums import Backend
from voicechat.gateway.backends import resolve_backend

audit = logging.getLogger("voicechat.audit")


def error(
    status: int,
    message: str,
    *,
    code: str,
    type: str = "invalid_request_error",
    param: str | None = None,
) -> JsonResponse:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JsonResponse(body, status=status)


def _client_ip(request: HttpRequest) -> str:
    return (request.scope.get("client") or ["unknown"])[0]


@csrf_exempt  # a token needs none; the session cookie is checked in access.caller()
@require_POST
async def create_call(request: HttpRequest) -> HttpResponse:
    client_ip = _client_ip(request)
    if not await ratelimit.allow(
        f"ip:{client_ip}", limit=settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP
    ):
        audit.warning("call refused: too many connections from %s", client_ip)
        return error(
            429,
            "Too many connections from this address. Wait a moment.",
            code="rate_limited",
            type="rate_limit_error",
        )
    try:
        who = await caller(request, client_secrets=True)
    except NotAllowed as refused:
        audit.warning("call refused: %s, from %s", refused.code, client_ip)
        return error(refused.status, str(refused), code=refused.code)
    try:
        offer = read_offer(request)
    except BadOffer as bad:
        return error(bad.status, str(bad), code=bad.code)
    # The offer's own session configuration, else the one its client secret was issued with.
    session = offer.session if offer.session is not None else who.session
    query = request.GET.copy()
    if session and session.get("model"):
        query["model"] = session["model"]
    # With OpenAI the call is made there (the media go to OpenAI directly, the server follows
    # it on the sideband); with the offline engine this server terminates it.
    direct = resolve_backend() == Backend.OPENAI
    call = (openai_call.OpenAIWebRTCCall if direct else calls.Call)(
        who.identity,
        client_ip=client_ip,
        user_agent=request.headers.get("User-Agent", "")[:300],
        query_string=query.urlencode(),
        session=session,
    )
    try:
        answer = await (openai_call.start if direct else calls.start)(call, offer.sdp)
    except calls.CallRefused as refused:
        return JsonResponse({"error": refused.error}, status=refused.status)
    except Exception:  # logged, and the conversation ended as server_error, by the call
        return error(
            500, "The gateway hit an internal error.", code="server_error", type="server_error"
        )
    try:
        await directory.publish(call)  # a hangup reaches it from any process
    except Exception:  # the call goes on; only a hangup on another process misses it
        audit.exception("call %s: where it lives could not be recorded", call.id)
    response = HttpResponse(answer, status=201, content_type="application/sdp")
    response["Location"] = f"/v1/realtime/calls/{call.id}"
    return response


@csrf_exempt
@require_POST
async def hang_up(request: HttpRequest, call_id: str) -> HttpResponse:
    try:
        who = await caller(request, client_secrets=True)
    except NotAllowed as refused:
        return error(refused.status, str(refused), code=refused.code)
    user_id = who.identity.user.pk
    call = calls.find(call_id)
    # Someone else's call is as unknown as one that never was.
    if call is not None and call.user_id == user_id:
        await call.hang_up()
        return HttpResponse(status=200)
    # Held by another process (voicechat/calls/directory.py): asked to hang up, and stored.
    if call is None and await directory.hang_up_elsewhere(call_id, user_id):
        return HttpResponse(status=200)
    return error(404, f"Call '{call_id}' not found.", code="call_not_found")


@csrf_exempt
@require_POST
async def client_secrets(request: HttpRequest) -> HttpResponse:
    """An `ek_` secret for the caller's calls (voicechat/calls/ephemeral.py), in OpenAI's shape."""
    client_ip = _client_ip(request)
    if not await ratelimit.allow(
        f"ip:{client_ip}", limit=settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP
    ):
        return error(
            429,
            "Too many connections from this address. Wait a moment.",
            code="rate_limited",
            type="rate_limit_error",
        )
    try:
        # A secret is not a credential to issue secrets with: it would outlive itself.
        who = await caller(request)
    except NotAllowed as refused:
        return error(refused.status, str(refused), code=refused.code)
    try:
        seconds, session = read_secret_request(request)
    except BadOffer as bad:
        return error(bad.status, str(bad), code=bad.code)
    secret, expires_at = await ephemeral.issue(who.identity, seconds=seconds, session=session)
    audit.info("client secret issued to %s, for %s s", who.identity.user, seconds)
    session = {"type": "realtime", "model": settings.REALTIME_MODEL, **(session or {})}
    return JsonResponse({"value": secret, "expires_at": expires_at, "session": session})
