"""A message buffer between a socket's callbacks and the one task that reads them.

Both WebSocket ends of the relay hand each received message to a single reader: uvicorn's
protocol to the consumer, the upstream client to the relay loop. asyncio.Queue serves any
number of readers and writers and does bookkeeping per message for it; this does only what one
reader needs, on the path every audio frame takes.

It also carries the relay's shortcut: a handler that may take a message instead of the reader,
right in the socket's callback, whenever nothing waits here (so nothing is overtaken).
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Inbox:
    """The part of asyncio.Queue's interface uvicorn uses, for exactly one reader."""

    def __init__(self, name: str = "inbox") -> None:
        self._messages: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._name = name  # for the log, should the handler fail
        self.direct_handler: Callable[[object], bool] | None = None

    def offer(self, item) -> bool:
        """Hand `item` to direct_handler rather than the reader; True when the handler took it.

        Nothing is offered while a message waits here, so order is kept. A handler that raises
        is logged and dropped; that item and all later ones go to the reader.
        """
        handler = self.direct_handler
        if handler is None or self._messages:
            return False
        try:
            return handler(item)
        except Exception:
            logger.exception("%s handler failed; messages now wait for the reader", self._name)
            self.direct_handler = None
            return False

    def put_nowait(self, message) -> None:
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self):
        while not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def qsize(self) -> int:
        return len(self._messages)

    def empty(self) -> bool:
        return not self._messages
