"""A fake Realtime upstream that listens and talks: the browser tests' stand-in for OpenAI.

It extends the gateway tests' FakeRealtimeServer (a real WebSocket server on loopback) with what
a voice page needs: an energy voice detector on the appended PCM16 (server_vad), a transcript of
each user turn sent late (after the reply has started, as the real service often does), and
replies with real audio deltas paced at twice real time, so a barge-in can cut one short.
It speaks only GA events and records every client event in `received`.
"""

import asyncio
import base64
import contextlib
import json
import math
import threading

import numpy as np
from websockets.asyncio.server import ServerConnection

from voicechat.tests.fake_upstream import USAGE, FakeRealtimeServer, merge, new_session

RATE = 24000
FRAME = RATE // 50  # 20 ms VAD frames
SPEECH_RMS = 0.01  # about -40 dBFS: well above the fake microphone's digital silence
START_FRAMES = 3  # 60 ms of sound starts a turn
STOP_FRAMES = 25  # 500 ms of quiet ends it (silence_duration_ms)
DELTA_MS = 100


def speechlike(ms: int, *, f0: float = 170.0, seed: int = 0) -> bytes:
    """PCM16 24 kHz of a vowel-ish voice: harmonics of f0 under a 4 Hz syllable envelope."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    rng = np.random.default_rng(seed)
    wave = np.zeros(n)
    for k, weight in enumerate((1.0, 0.6, 0.45, 0.3, 0.2, 0.12), start=1):
        wave += weight * np.sin(2 * math.pi * f0 * k * t + rng.uniform(0, 2 * math.pi))
    envelope = 0.55 + 0.45 * np.sin(2 * math.pi * 4.0 * t) ** 2
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms fades, no clicks
    samples = 0.25 * wave / np.abs(wave).max() * envelope * fade
    return (samples * 32767).astype("<i2").tobytes()


class VoiceFakeUpstream(FakeRealtimeServer):
    def __init__(
        self,
        *,
        reply_ms: int = 2000,
        reply_text: str | None = None,
        transcripts: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.reply_ms = reply_ms
        # What the user "said", turn by turn; after these, a description of the audio.
        self.transcripts = list(transcripts or [])
        if reply_text is not None:
            self.reply_text = reply_text

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        conversation = _Conversation(self, ws, new_session())
        await conversation.send({"type": "session.created", "session": conversation.session})
        try:
            async for frame in ws:
                self.received_frames.append(frame)
                event = json.loads(frame)
                self.received.append(event)
                await conversation.handle(event)
        except Exception:
            pass
        finally:
            await conversation.stop()
            self.closed.set()


class _Conversation:
    """The state of one fake session: the VAD, the item chain and the reply in flight."""

    def __init__(self, server: VoiceFakeUpstream, ws: ServerConnection, session: dict) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.last_item: str | None = None
        self.buffer_ms = 0  # audio in the input buffer (ms since the buffer was last cleared)
        self.loud = 0
        self.quiet = 0
        self.speech_item: str | None = None
        self.speech_start_ms = 0
        self.reply: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    async def send(self, event: dict) -> None:
        await self.server._send(self.ws, dict(event))

    def _id(self, prefix: str) -> str:
        return self.server._id(prefix)

    @property
    def turn_detection(self) -> dict | None:
        return ((self.session.get("audio") or {}).get("input") or {}).get("turn_detection")

    async def handle(self, event: dict) -> None:
        etype = event.get("type")
        if etype == "session.update":
            merge(self.session, event.get("session") or {})
            await self.send({"type": "session.updated", "session": self.session})
        elif etype == "input_audio_buffer.append":
            await self.listen(base64.b64decode(event["audio"]))
        elif etype == "input_audio_buffer.commit":
            item_id = self.speech_item or self._id("item")
            self.speech_item = None
            await self.commit(item_id, duration_ms=self.buffer_ms)
        elif etype == "input_audio_buffer.clear":
            self.buffer_ms = self.loud = self.quiet = 0
            self.speech_item = None
            await self.send({"type": "input_audio_buffer.cleared"})
        elif etype == "conversation.item.create":
            item = dict(event["item"], id=event["item"].get("id") or self._id("item"))
            item.update(object="realtime.item", status="completed")
            previous, self.last_item = self.last_item, item["id"]
            for kind in ("conversation.item.added", "conversation.item.done"):
                await self.send({"type": kind, "previous_item_id": previous, "item": item})
        elif etype == "response.create":
            await self.cancel_reply()
            self.start_reply()
        elif etype == "response.cancel":
            await self.cancel_reply()
        elif etype == "conversation.item.truncate":
            await self.send(
                {
                    "type": "conversation.item.truncated",
                    "item_id": event["item_id"],
                    "content_index": event.get("content_index", 0),
                    "audio_end_ms": event["audio_end_ms"],
                }
            )

    async def listen(self, pcm: bytes) -> None:
        """Server VAD: a few loud frames start a turn, half a second of quiet ends it."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
        for start in range(0, len(samples), FRAME):
            frame = samples[start : start + FRAME]
            self.buffer_ms += len(frame) * 1000 // RATE
            if self.turn_detection is None or len(frame) == 0:
                continue
            loud = float(np.sqrt(np.mean(frame**2))) > SPEECH_RMS
            self.loud = self.loud + 1 if loud else 0
            self.quiet = 0 if loud else self.quiet + 1
            if self.speech_item is None and self.loud >= START_FRAMES:
                self.speech_item = self._id("item")
                self.speech_start_ms = max(0, self.buffer_ms - START_FRAMES * 20)
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": self.speech_start_ms,
                        "item_id": self.speech_item,
                    }
                )
                if self.turn_detection.get("interrupt_response", True):
                    await self.cancel_reply()
            elif self.speech_item is not None and self.quiet >= STOP_FRAMES:
                item_id, self.speech_item = self.speech_item, None
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": self.buffer_ms,
                        "item_id": item_id,
                    }
                )
                await self.commit(item_id, duration_ms=self.buffer_ms - self.speech_start_ms)
                if self.turn_detection.get("create_response", True):
                    self.start_reply()

    async def commit(self, item_id: str, *, duration_ms: int) -> None:
        previous, self.last_item = self.last_item, item_id
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        self.buffer_ms = self.loud = self.quiet = 0
        # The transcription lands after the reply has begun, like the real service's often does.
        self.spawn(self.transcribe_later(item_id, duration_ms))

    async def transcribe_later(self, item_id: str, duration_ms: int) -> None:
        await asyncio.sleep(0.4)
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": self.server.transcripts.pop(0)
                if self.server.transcripts
                else f"(fake transcript of {duration_ms / 1000:.1f} s of speech)",
                "usage": {"type": "duration", "seconds": duration_ms / 1000},
            }
        )

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def start_reply(self) -> None:
        self.reply = self.spawn(self.speak())

    async def cancel_reply(self) -> None:
        reply, self.reply = self.reply, None
        if reply and not reply.done():
            reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply

    async def speak(self) -> None:
        response_id, item_id = self._id("resp"), self._id("item")
        previous, self.last_item = self.last_item, item_id
        text = self.server.reply_text
        ids = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        part = {**ids, "content_index": 0}
        base = {"object": "realtime.response", "id": response_id, "conversation_id": "conv_fake"}
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
        spoken = ""
        try:
            await self.send(
                {
                    "type": "response.created",
                    "response": {**base, "status": "in_progress", "output": []},
                }
            )
            added = dict(item, status="in_progress", content=[])
            await self.send(
                {
                    "type": "response.output_item.added",
                    "response_id": response_id,
                    "output_index": 0,
                    "item": added,
                }
            )
            await self.send(
                {"type": "conversation.item.added", "previous_item_id": previous, "item": added}
            )
            await self.send(
                {
                    "type": "response.content_part.added",
                    **part,
                    "part": {"type": "audio", "transcript": ""},
                }
            )
            audio = speechlike(self.server.reply_ms, seed=len(self.server.received))
            words = text.split(" ")
            chunk = RATE * 2 * DELTA_MS // 1000
            deltas = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
            for index, delta in enumerate(deltas):
                word_end = math.ceil(len(words) * (index + 1) / len(deltas))
                said = " ".join(words[:word_end])
                if said != spoken:
                    await self.send(
                        {
                            "type": "response.output_audio_transcript.delta",
                            **part,
                            "delta": said[len(spoken) :],
                        }
                    )
                    spoken = said
                await self.send(
                    {
                        "type": "response.output_audio.delta",
                        **part,
                        "delta": base64.b64encode(delta).decode(),
                    }
                )
                await asyncio.sleep(DELTA_MS / 2000)  # twice real time
            await self.send({"type": "response.output_audio.done", **part})
            await self.send(
                {"type": "response.output_audio_transcript.done", **part, "transcript": text}
            )
            content = [{"type": "output_audio", "transcript": text}]
            await self.send(
                {
                    "type": "response.content_part.done",
                    **part,
                    "part": {"type": "audio", "transcript": text},
                }
            )
            done = dict(item, status="completed", content=content)
            await self.send(
                {
                    "type": "response.output_item.done",
                    "response_id": response_id,
                    "output_index": 0,
                    "item": done,
                }
            )
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": done}
            )
            await self.send(
                {
                    "type": "response.done",
                    "response": {**base, "status": "completed", "output": [done], "usage": USAGE},
                }
            )
        except asyncio.CancelledError:
            cut = dict(
                item, status="incomplete", content=[{"type": "output_audio", "transcript": spoken}]
            )
            await self.send(
                {
                    "type": "response.done",
                    "response": {
                        **base,
                        "status": "cancelled",
                        "status_details": {"type": "cancelled", "reason": "turn_detected"},
                        "output": [cut],
                        "usage": USAGE,
                    },
                }
            )
            raise

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ServerThread:
    """Runs a fake upstream on its own event loop in a daemon thread (for sync browser tests)."""

    def __init__(self, server: FakeRealtimeServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeRealtimeServer:
        self.thread.start()
        self.call(self.server.__aenter__())
        # Tests drive the server from their own thread: server.call(server.drop()).
        self.server.call = self.call
        return self.server

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.call(self.server.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
