"""A small test client for LocalUpstream: sends client events, validates every server event."""

import asyncio
import base64
import json

from voicechat.local_engine import LocalUpstream
from voicechat.tests.realtime_validation import EventLog

CHUNK_BYTES = 1920  # 40 ms of PCM16 24 kHz


class EngineClient:
    """Talks to a LocalUpstream directly, as the gateway does (connect / send / iterate)."""

    def __init__(self, upstream: LocalUpstream | None = None) -> None:
        self.upstream = upstream or LocalUpstream(model="gpt-realtime")
        self.log = EventLog()
        self._cursor = 0
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.reader_error: BaseException | None = None

    async def __aenter__(self) -> "EngineClient":
        await self.upstream.connect()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.upstream.close()
        await asyncio.wait_for(self._reader, 10)
        if self.reader_error is not None:
            raise self.reader_error

    async def _read(self) -> None:
        try:
            async for frame in self.upstream:
                self.log.add(json.loads(frame))
                self._changed.set()
        except BaseException as exc:  # surfaced by __aexit__ and wait()
            self.reader_error = exc
            self._changed.set()

    async def send(self, event: dict) -> None:
        await self.upstream.send(json.dumps(event))

    async def append_audio(self, pcm: bytes, *, pace: float = 0.0) -> None:
        """Append audio in 40 ms chunks; `pace` seconds between chunks (0: as fast as possible)."""
        for i in range(0, len(pcm), CHUNK_BYTES):
            chunk = base64.b64encode(pcm[i : i + CHUNK_BYTES]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})
            await asyncio.sleep(pace)

    async def wait(self, kind: str, where=lambda e: True, timeout: float = 60) -> dict:
        """The next event of `kind` (after the previous wait's match) satisfying `where`."""
        async with asyncio.timeout(timeout):
            while True:
                if self.reader_error is not None:
                    raise self.reader_error
                for i in range(self._cursor, len(self.log.events)):
                    event = self.log.events[i]
                    if event["type"] == kind and where(event):
                        self._cursor = i + 1
                        return event
                self._changed.clear()
                await self._changed.wait()

    def since(self, event: dict) -> list[dict]:
        """Events after `event`, in order."""
        index = self.log.events.index(event)
        return self.log.events[index + 1 :]

    async def settle(self, seconds: float = 0.05) -> None:
        await asyncio.sleep(seconds)


def user_text(text: str, **extra) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
        **extra,
    }


TEXT_ONLY = {
    "type": "session.update",
    "session": {"type": "realtime", "output_modalities": ["text"]},
}


async def text_turn(client: EngineClient, text: str) -> dict:
    """One typed user turn; returns response.done."""
    await client.send(user_text(text))
    await client.send({"type": "response.create"})
    return await client.wait("response.done")


def reply_text(done: dict) -> str:
    """The assistant's words in a response.done (text or audio transcript)."""
    words = []
    for item in done["response"]["output"]:
        for part in item.get("content") or []:
            words.append(part.get("text") or part.get("transcript") or "")
    return " ".join(words)
