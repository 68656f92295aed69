"""LocalUpstream: the local engine behind the gateway's Upstream interface (in-process)."""

import asyncio
import logging
from collections.abc import AsyncIterator

from voicechat.enums import Backend
from voicechat.local_engine import speech
from voicechat.local_engine.events import ClientEventError, dumps, parse_client_event
from voicechat.local_engine.responder import Responder
from voicechat.local_engine.session import RealtimeSession
from voicechat.upstream.base import Upstream, UpstreamClosed

logger = logging.getLogger(__name__)

_CLOSED = object()


class LocalUpstream(Upstream):
    """A Realtime session with the in-process engine; frames are GA JSON text both ways."""

    backend = Backend.LOCAL

    def __init__(
        self, *, model: str, responder: Responder | None = None, time_zone: str | None = None
    ) -> None:
        self._model = model
        self._responder = responder
        self._time_zone = time_zone
        self._frames: asyncio.Queue = asyncio.Queue()
        self._session: RealtimeSession | None = None
        self._closed = False

    async def connect(self) -> None:
        self._session = RealtimeSession(
            model=self._model, emit=self._emit, responder=self._responder, time_zone=self._time_zone
        )
        self._session.start()
        speech.warm_up()

    def _emit(self, event: dict) -> None:
        if not self._closed:
            # Serialised now, so later changes to engine state never alter a sent event.
            self._frames.put_nowait(dumps(event))

    async def send(self, frame: str) -> None:
        if self._closed or self._session is None:
            raise UpstreamClosed()
        try:
            event = parse_client_event(frame)
        except ClientEventError as exc:
            self._emit(exc.to_event())
            return
        try:
            await self._session.handle(event)
        except Exception:
            # A bug must not take the gateway's receive loop down with it: report and go on.
            logger.exception("local engine failed on a %s event", event.get("type"))
            self._emit(
                ClientEventError(
                    "The local engine hit an internal error handling this event.",
                    code="server_error",
                    type="server_error",
                    event_id=event.get("event_id"),
                ).to_event()
            )

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            frame = await self._frames.get()
            if frame is _CLOSED:
                return
            yield frame

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            await self._session.close()
        self._frames.put_nowait(_CLOSED)
