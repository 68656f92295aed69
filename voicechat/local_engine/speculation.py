"""Start thinking during the pause: a reply generated while the user is silent, held back.

While the user is silent but the turn has not ended yet (server_vad's silence window, or
semantic_vad waiting for a surer verdict), the turn's final transcript is already being decoded
(speech.Transcriber.stream_pause), and the responder can start on it. What it writes is held
here, out of the conversation. If the turn then ends as it stood, the response replays it and
goes on live, much sooner than if it only started then. If the user speaks again, or the
conversation has changed by then, the generation is cancelled (the embedded model stops within
a token) and its output dropped: it never reached the conversation, so it leaves no item, audio
or usage behind. SpeculationStats counts how often that happens.

The first piece the response will speak is synthesized here too, as soon as its text is written:
the response then plays it at once instead of synthesizing it after the turn has ended. `ready`
says when the reply could start playing; semantic_vad ends a turn it judges finished only then
(session.py), so a pause the user breaks before that is no end of the turn.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass

from voicechat.local_engine import speech
from voicechat.local_engine.responder import FunctionCall, Responder, TextDelta, Turn
from voicechat.local_engine.response import first_piece


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
        voice: str | None = None,
        speech_stats: speech.SpeechStats | None = None,
    ) -> None:
        """`turn`: what the responder is asked; `spawn` runs a task the session cancels at close;
        `voice`: the session voice its first piece is synthesized in (None: a text reply)."""
        self._responder = responder
        self._stats = stats
        self._spawn = spawn
        self._voice = voice
        self._speech_stats = speech_stats
        self._held: list[TextDelta | FunctionCall] = []
        self._grew = asyncio.Event()
        self._ready = asyncio.Event()
        self._first_audio: tuple[str, asyncio.Task] | None = None  # (text, its synthesis)
        self._settled = False  # used or thrown away
        stats.started += 1
        self._turn = spawn(turn)
        self._task = spawn(self._generate())
        self._task.add_done_callback(self._generated)

    @property
    def ready(self) -> bool:
        """Whether the reply could start now: its first piece is synthesized (a text reply: its
        first words are written), or the generation is over (a tool call, nothing, an error)."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Until `ready` (or the reply is dropped)."""
        await self._ready.wait()

    async def _generate(self) -> None:
        turn = await self._turn
        splitter = speech.sentence_splitter() if self._voice is not None else None
        # aclosing: a cancelled generation closes the responder's stream now (llm.py stops).
        async with contextlib.aclosing(self._responder.respond(turn)) as stream:
            async for out in stream:
                self._held.append(out)
                self._grew.set()
                if splitter is None or not isinstance(out, TextDelta):
                    self._ready.set()  # a text reply has begun; a tool call has nothing to say
                elif self._first_audio is None and not self._ready.is_set():
                    self._prepare(splitter.feed(out.text))
        if splitter is not None and self._first_audio is None and not self._ready.is_set():
            self._prepare(splitter.flush())

    def _prepare(self, sentences: list[str]) -> None:
        """Synthesize the piece of the first sentence the response will speak first."""
        if not sentences:
            return
        text = first_piece(sentences[0])
        synthesis = self._spawn(speech.synthesize(text, self._voice, self._speech_stats))
        synthesis.add_done_callback(lambda _task: self._ready.set())
        self._first_audio = (text, synthesis)

    def _generated(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()  # kept for the replay to raise; not an unretrieved error
        self._grew.set()
        if self._first_audio is None:
            self._ready.set()

    def audio_for(self, text: str, voice: str) -> asyncio.Task | None:
        """The synthesis of `text` begun here, if it is the piece the response speaks first."""
        if self._first_audio is None or (text, voice) != (self._first_audio[0], self._voice):
            return None
        synthesis = self._first_audio[1]
        if synthesis.cancelled() or (synthesis.done() and synthesis.exception() is not None):
            return None
        return synthesis

    def drop(self) -> None:
        """The reply will not be used (more): stop generating it and forget what it said."""
        if not self._settled:
            self._settled = True
            self._stats.thrown_away += 1
        self._task.cancel()
        self._turn.cancel()
        if self._first_audio is not None:
            self._first_audio[1].cancel()
        self._ready.set()  # nothing more to wait for

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
