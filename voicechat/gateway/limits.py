"""Limits on conversations that hold however many server processes run.

The per-user concurrency limit is counted in the shared database when a conversation starts
(services.conversation_start, under a lock; rows of crashed processes are recognised by their
stale heartbeat and do not count). The length limit is a timer on the consumer's event loop.
"""

import asyncio
from collections.abc import Awaitable, Callable

from django.conf import settings

from voicechat.enums import EndReason

TOO_MANY_CODE = "too_many_conversations"
DURATION_MESSAGE = (
    "This conversation reached the server's length limit ({minutes} minutes). "
    "Start a new one to go on."
)


class DurationLimit:
    """Calls `on_expiry` once REALTIME_MAX_DURATION seconds have passed, unless cancelled."""

    reason = EndReason.DURATION_LIMIT
    code = "conversation_too_long"

    def __init__(self, on_expiry: Callable[[], Awaitable[None]]) -> None:
        self.seconds = settings.REALTIME_MAX_DURATION
        self._on_expiry = on_expiry
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    @property
    def message(self) -> str:
        return DURATION_MESSAGE.format(minutes=round(self.seconds / 60, 1))

    def start(self) -> None:
        if self.seconds > 0:
            self._handle = asyncio.get_running_loop().call_later(self.seconds, self._expire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _expire(self) -> None:
        self._task = asyncio.create_task(self._on_expiry())
