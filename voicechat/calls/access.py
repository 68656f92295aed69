"""Who is calling: the WebSocket's two ways in, over HTTP, and client secrets.

A Bearer API token (as the WebSocket accepts it), or the Django session cookie from a page of
this site: same origin (the Origin header, as for the WebSocket) and Django's CSRF token, since a
cookie is ambient and a foreign page could otherwise start a call as the user. Where a client
secret is accepted (making a call), a Bearer `ek_...` secret stands for the user it was issued to.
"""

from dataclasses import dataclass

from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from voicechat.access import scopes
from voicechat.access.auth import Identity, authenticate, bearer_token
from voicechat.access.revocation import Access
from voicechat.calls import ephemeral


class NotAllowed(Exception):
    def __init__(self, status: int, message: str, *, code: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Caller:
    identity: Identity
    session: dict | None = None  # the session configuration a client secret was issued with


async def caller(request: HttpRequest, *, client_secrets: bool = False) -> Caller:
    """Who makes an HTTP request to the calls API; raises NotAllowed."""
    scope = request.scope
    token = bearer_token(scope)
    if token is not None and token.startswith(ephemeral.PREFIX):
        found = await ephemeral.identity(token) if client_secrets else None
        if found is None:
            raise NotAllowed(
                401, "The client secret is invalid or has expired.", code="invalid_api_key"
            )
        return Caller(*found)
    if token is not None:
        identity = await authenticate(scope)
        if identity is None:
            raise NotAllowed(401, "Incorrect API key provided.", code="invalid_api_key")
        return Caller(identity)
    user = await request.auser()
    if not user.is_authenticated:
        raise NotAllowed(
            401,
            "Sign in, or send an API token as 'Authorization: Bearer <token>'.",
            code="missing_api_key",
        )
    # Django's own checks, as for a form on the site (the view itself is CSRF-exempt, so a
    # token needs no CSRF token): the Origin must be this site's, then the CSRF token must match.
    csrf = CsrfViewMiddleware(get_response=lambda request: None)
    if not request.headers.get("Origin") or not csrf._origin_verified(request):
        raise NotAllowed(403, "Cross-origin requests are not allowed.", code="cross_origin")
    if csrf.process_view(request, None, (), {}) is not None:
        raise NotAllowed(403, "CSRF verification failed.", code="csrf_failed")
    access = Access(user.pk, session_key=request.session.session_key)
    return Caller(Identity(user, "session", scopes.site_default(), access))
