"""Client secrets (`ek_...`): short-lived credentials for one user's calls, as OpenAI issues them.

POST /v1/realtime/client_secrets, by a caller of the calls API (a token, or a signed-in page),
returns a random `ek_` secret that POST /v1/realtime/calls accepts as its Bearer credential until
it expires (10 s to 2 h; 10 min by default), with the issuer's scope and optional session
configuration. Only its hash is kept, in the cache with the secret's lifetime: under several
processes they share it through REDIS_URL, as the rate limits do. A secret lasts no longer than
what it was issued on: the issuer's token or browser session is checked again when it is used,
and while the call lasts (voicechat/access/revocation.py).
"""

import hashlib
import secrets
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.cache import cache

from voicechat.access.auth import Identity
from voicechat.access.revocation import Access, revoked
from voicechat.access.scopes import Scope

PREFIX = "ek_"
DEFAULT_SECONDS = 600
MIN_SECONDS, MAX_SECONDS = 10, 7200  # OpenAI's bounds for expires_after.seconds
METHOD = "client_secret"  # Conversation.auth_method of calls made with one


@dataclass(frozen=True)
class _Issued:
    user_id: int
    scope: Scope
    token_id: int | None
    session_key: str | None
    session: dict | None


def _cache_key(secret: str) -> str:
    return "voicechat:ek:" + hashlib.sha256(secret.encode()).hexdigest()


async def issue(identity: Identity, *, seconds: int, session: dict | None) -> tuple[str, int]:
    """A new secret for `identity`'s user; returns it and when it expires (Unix seconds)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    access = identity.access
    issued = _Issued(
        user_id=identity.user.pk,
        scope=identity.scope,
        token_id=access.token_id,
        session_key=access.session_key,
        session=session,
    )
    await cache.aset(_cache_key(secret), issued, timeout=seconds)
    return secret, int(time.time()) + seconds


async def identity(secret: str) -> tuple[Identity, dict | None] | None:
    """The identity a secret stands for and its session configuration; None once it has
    expired, or if it never was, or the token or browser session it came from is gone."""
    if not secret.startswith(PREFIX) or len(secret) > 100:
        return None
    issued = await cache.aget(_cache_key(secret))
    if not isinstance(issued, _Issued):
        return None
    access = Access(issued.user_id, token_id=issued.token_id, session_key=issued.session_key)
    user = await _user_if_still_allowed(access)
    if user is None:
        return None
    return Identity(user, METHOD, issued.scope, access), issued.session


@database_sync_to_async
def _user_if_still_allowed(access: Access):
    if revoked({"secret": access}):
        return None
    return get_user_model().objects.get(pk=access.user_id)
