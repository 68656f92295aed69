"""The interface between a gateway conversation and the Realtime session behind it.

The consumer relies on this alone; voicechat/upstream/openai.py implements it for OpenAI, and
voicechat/local_engine for the in-process engine. It has its own exceptions, so no caller
depends on the WebSocket library one implementation happens to use. This module imports no
implementation, so neither depends on the other through it (they used to import each other).
"""

import abc
from collections.abc import AsyncIterator, Callable

from voicechat.enums import Backend
from voicechat.protocol import EndConversation


class UpstreamClosed(Exception):
    """The session has ended: nothing more can be sent (see Upstream.close_code)."""


class UpstreamError(EndConversation):
    """The upstream could not be used; `message` is safe to show to the user."""


class Upstream(abc.ABC):
    """One Realtime session with a provider, speaking GA protocol JSON text frames."""

    backend: Backend
    # Set once the session has ended: how the provider closed it (None if we closed it).
    close_code: int | None = None
    close_reason: str = ""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the session; raises UpstreamError when that is impossible."""

    @abc.abstractmethod
    async def send(self, frame: str) -> None:
        """Send one client event. Raises UpstreamClosed if the session has ended."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[str]:
        """Server events, in order, until the session ends (then close_code is set)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the session from our side; safe to call more than once."""

    # The relay's synchronous shortcut (see voicechat.transport.server.TextShortcut): optional,
    # an upstream without one is used through send() and iteration only.

    def on_text(self, handler: Callable[[str], bool]) -> None:  # noqa: B027 (optional)
        """Offer later server frames to handler(frame) as they arrive, ahead of iteration;
        it returns True when it took the frame. Order is kept."""

    def can_send_now(self) -> bool:
        """True when send_now() may send a frame at once (nothing waiting before it)."""
        return False

    def send_now(self, frame: str) -> None:
        raise NotImplementedError("only after can_send_now() is True")
