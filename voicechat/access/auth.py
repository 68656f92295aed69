"""Who is on the other end of a gateway socket.

Two ways in: a Django session cookie (the browser) or `Authorization: Bearer <token>` (scripts and
OpenAI's SDK). The same-origin check applies only to cookie-authenticated sockets: cookies are
ambient, so a foreign page could otherwise ride a logged-in user's session (cross-site WebSocket
hijacking); a bearer token is never attached by a browser on its own, and the SDK sends no Origin.
"""

import io
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.timezone import now

from voicechat.access import scopes
from voicechat.access.revocation import Access
from voicechat.models import ApiToken


@dataclass(frozen=True)
class Identity:
    user: object
    method: str  # "session" or "token"
    scope: scopes.Scope  # what this user may set in their session, by this way in
    access: Access  # what let it in, checked again while the socket is open


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def bearer_token(scope: dict) -> str | None:
    value = header(scope, b"authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def same_origin(scope: dict) -> bool:
    """True when the socket's Origin passes Django's own CSRF origin check for this handshake.

    That is: the Origin is this request's scheme, host and port (the Host header, an allowed
    host), or is listed in CSRF_TRUSTED_ORIGINS. A page on another port or scheme of the same
    host is another origin (a browser sends its cookies there all the same).
    """
    if not header(scope, b"origin"):
        return False
    # Django's check itself, not a copy of it (private, so test_origin_check.py pins it).
    csrf = CsrfViewMiddleware(get_response=lambda request: None)
    return csrf._origin_verified(_handshake_as_http_request(scope))


def _handshake_as_http_request(scope: dict) -> ASGIRequest:
    """The WebSocket handshake as the HTTP request it is: ws is http, wss is https (RFC 6455).

    Django then reads the Host header, SECURE_PROXY_SSL_HEADER and ALLOWED_HOSTS as it does for
    every page, so a socket and a form post from the same page pass or fail together.
    """
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return ASGIRequest({**scope, "type": "http", "method": "GET", "scheme": scheme}, io.BytesIO())


@database_sync_to_async
def _token_identity(token: str) -> Identity | None:
    api_token = (
        ApiToken.objects.usable()
        .select_related("user")
        .filter(digest=ApiToken.digest_of(token))
        .first()
    )
    if api_token is None:
        return None
    ApiToken.objects.filter(pk=api_token.pk).update(last_used=now())
    access = Access(api_token.user.pk, token_id=api_token.pk)
    return Identity(api_token.user, "token", scopes.for_token(api_token), access)


async def authenticate(scope: dict) -> Identity | None:
    """The identity behind a socket handshake, or None to refuse it before anything opens."""
    token = bearer_token(scope)
    if token is not None:
        # An explicit token decides alone: a wrong token is refused even with a valid cookie.
        return await _token_identity(token)
    user = scope.get("user")
    if user is not None and user.is_authenticated and same_origin(scope):
        access = Access(user.pk, session_key=scope["session"].session_key)
        return Identity(user, "session", scopes.site_default(), access)
    return None
