"""Access withdrawn while a socket is open: a revoked token, a deactivated or demoted user, a
session signed out (or its password changed).

Authentication happens once, at the handshake; without this, a socket opened before the
revocation kept talking (still answered 40 s later, issue 13) and a demoted staff member kept
the monitor's live transcripts. Every open socket of this process is checked again in one pass
every REALTIME_ACCESS_CHECK_SECONDS: a few queries per pass whatever the number of sockets
(users, tokens; sessions one by one, as Django's session engines only load by key), off the
relay path. A socket whose access is gone is told why and closed (close code 4401).
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from voicechat.models import ApiToken

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    """What a socket was let in on, to be checked again while it is open."""

    user_id: int
    token_id: int | None = None  # the API token it presented
    session_key: str | None = None  # the browser session it came with
    staff: bool = False  # it needs the staff flag (the monitor)


OnRevoked = Callable[[str], Awaitable[None]]


def revoked(accesses: dict[object, Access]) -> dict[object, str]:
    """The sockets among `accesses` whose access is gone, each with the reason to show."""
    users = {
        user.pk: user
        for user in get_user_model().objects.filter(
            pk__in={access.user_id for access in accesses.values()}, is_active=True
        )
    }
    token_ids = {access.token_id for access in accesses.values() if access.token_id is not None}
    usable_tokens = set(
        ApiToken.objects.usable().filter(pk__in=token_ids).values_list("pk", flat=True)
    )
    sessions = import_module(settings.SESSION_ENGINE).SessionStore
    found: dict[object, str] = {}
    for key, access in accesses.items():
        user = users.get(access.user_id)
        if user is None:
            found[key] = "Your account has been deactivated."
        elif access.staff and not user.is_staff:
            found[key] = "Your staff access has been withdrawn."
        elif access.token_id is not None and access.token_id not in usable_tokens:
            found[key] = "The API token of this connection was revoked or has expired."
        elif access.session_key is not None and not _session_holds(
            sessions(access.session_key).load(), user
        ):
            found[key] = "You have signed out, so this connection was closed."
    return found


def _session_holds(session: dict, user) -> bool:
    """True while the session still signs in `user` (as django.contrib.auth.get_user checks)."""
    return session.get(SESSION_KEY) == str(user.pk) and constant_time_compare(
        session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()
    )


class AccessWatch:
    """The open sockets of one event loop, and the task that checks their access."""

    def __init__(self) -> None:
        self._sockets: dict[object, tuple[Access, OnRevoked]] = {}
        self._checker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # on_revoked calls, kept from the GC

    def watch(self, key: object, access: Access, on_revoked: OnRevoked) -> None:
        """Check `access` until forget(key); on_revoked(message) runs once if it is withdrawn."""
        self._sockets[key] = (access, on_revoked)
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_forever())

    def forget(self, key: object) -> None:
        self._sockets.pop(key, None)
        if not self._sockets and self._checker is not None:
            self._checker.cancel()  # a sleep or a database call: it stops at once
            self._checker = None

    async def _check_forever(self) -> None:
        while self._sockets:
            await asyncio.sleep(settings.REALTIME_ACCESS_CHECK_SECONDS)
            accesses = {key: access for key, (access, _) in self._sockets.items()}
            try:
                gone = await database_sync_to_async(revoked)(accesses)
            except Exception:
                logger.warning("could not check access of open sockets", exc_info=True)
                continue
            for key, message in gone.items():
                watched = self._sockets.pop(key, None)
                if watched is not None:
                    task = asyncio.create_task(watched[1](message))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)


_watches: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessWatch]" = (
    weakref.WeakKeyDictionary()
)


def access_watch() -> AccessWatch:
    """This event loop's AccessWatch."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = AccessWatch()
    return watch
