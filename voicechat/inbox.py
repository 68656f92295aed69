"""A message buffer between a socket's callbacks and the one task that reads them.

Both WebSocket ends of the relay hand each received message to a single reader: uvicorn's
protocol to the consumer, the upstream client to the relay loop. asyncio.Queue serves any
number of readers and writers and does bookkeeping per message for it; this does only what one
reader needs, on the path every audio frame takes.
"""

import asyncio
from collections import deque


class Inbox:
    """The part of asyncio.Queue's interface uvicorn uses, for exactly one reader."""

    def __init__(self) -> None:
        self._messages: deque = deque()
        self._waiter: asyncio.Future | None = None

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
