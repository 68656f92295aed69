"""Start thinking during the pause: a reply generated while the user is silent, held back.

While the user is silent but the turn has not ended yet (server_vad's silence window, or
semantic_vad waiting for a surer verdict), the turn's final transcript is already being decoded
(speech.Transcriber.stream_pause), and the responder can start on it. What it writes is held
here, out of the conversation. If the turn then ends as it stood, the response replays it and
goes on live, much sooner than if it only started then. If the user speaks again, or the
conversation has changed by then, the generation is cancelled (the embedded model stops within
a token) and its output dropped: it never reached the conversation, so it leaves no item, audio
or usage behind. SpeculationStats counts how often that happens.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass

from voicechat.local_engine.responder import FunctionCall, Responder, TextDelta, Turn


@dataclass
class SpeculationStats:
    """Replies started during a pause, and what became of them, for one conversation."""

    started: int = 0
    used: int = 0  # the turn ended as it stood: the response began with this reply
    thrown_away: int = 0  # the user went on, or the conversation changed: the work was wasted


class Speculation:
    """The reply to the turn as heard so far; a Responder for the response that uses it."""

    def __init__(
        self,
        responder: Responder,
        turn: Coroutine[None, None, Turn],
        stats: SpeculationStats,
        *,
        spawn: Callable[[Coroutine], asyncio.Task],
    ) -> None:
        """`turn`: what the responder is asked; `spawn` runs a task the session cancels at close."""
        self._responder = responder
        self._stats = stats
        self._held: list[TextDelta | FunctionCall] = []
        self._grew = asyncio.Event()
        self._settled = False  # used or thrown away
        stats.started += 1
        self._turn = spawn(turn)
        self._task = spawn(self._generate())
        self._task.add_done_callback(self._generated)

    async def _generate(self) -> None:
        turn = await self._turn
        # aclosing: a cancelled generation closes the responder's stream now (llm.py stops).
        async with contextlib.aclosing(self._responder.respond(turn)) as stream:
            async for out in stream:
                self._held.append(out)
                self._grew.set()

    def _generated(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()  # kept for the replay to raise; not an unretrieved error
        self._grew.set()

    def drop(self) -> None:
        """The reply will not be used (more): stop generating it and forget what it said."""
        if not self._settled:
            self._settled = True
            self._stats.thrown_away += 1
        self._task.cancel()
        self._turn.cancel()

    async def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        """The held reply and the rest as it comes, if it answers `turn`; else a fresh one."""
        await asyncio.wait([self._turn])
        if (
            self._turn.cancelled()
            or self._turn.exception() is not None
            or self._turn.result() != turn
        ):
            self.drop()
            async with contextlib.aclosing(self._responder.respond(turn)) as stream:
                async for out in stream:
                    yield out
            return
        self._settled = True
        self._stats.used += 1
        try:
            sent = 0
            while True:
                while sent < len(self._held):
                    yield self._held[sent]
                    sent += 1
                if self._task.done():
                    if not self._task.cancelled() and self._task.exception() is not None:
                        raise self._task.exception()
                    return
                self._grew.clear()
                await self._grew.wait()
        finally:
            self._task.cancel()  # a response cut short stops the generation with it
