"""The call's audio: the microphone track read as PCM16 24 kHz chunks, and the assistant's reply
played on the outgoing track in real time, with a count of what each item has played."""

import asyncio
import collections
import fractions
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicechat.local_engine.audio import PCM_RATE

FRAME_MS = 20  # one RTP packet of Opus
FRAME_SAMPLES = PCM_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
_TIME_BASE = fractions.Fraction(1, PCM_RATE)
_SILENCE = bytes(FRAME_BYTES)


async def microphone_chunks(track: MediaStreamTrack) -> AsyncIterator[bytes]:
    """The remote audio track as PCM16 mono 24 kHz, one chunk per frame received (20 ms with
    Opus), whatever codec, rate and channels the peer negotiated."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = b"".join(out.to_ndarray().tobytes() for out in resampler.resample(frame))
        if pcm:
            yield pcm


@dataclass(frozen=True)
class Cut:
    """Playback cleared: the response, and the item cut short with the ms of it played (item
    None when nothing unplayed was dropped)."""

    response_id: str
    item_id: str | None
    played_ms: int


class _Segment:
    """Audio of one assistant item, queued to play."""

    __slots__ = ("response_id", "item_id", "pcm")

    def __init__(self, response_id: str, item_id: str) -> None:
        self.response_id, self.item_id = response_id, item_id
        self.pcm = bytearray()


class ReplyTrack(MediaStreamTrack):
    """The outgoing audio track: the assistant's audio, paced at real time, silence between.

    The relay hands audio over faster than real time; this is the server side's speaker
    buffer. It knows how much of each item has been played (sent to the encoder), so a
    barge-in truncates the item exactly there, and it reports when a response's audio starts
    and when it has all been played (output_audio_buffer.started / stopped).
    """

    kind = "audio"

    def __init__(self, on_started: Callable[[str], None], on_stopped: Callable[[str], None]):
        super().__init__()
        self._queue: collections.deque[_Segment] = collections.deque()
        self._played_ms: dict[str, float] = {}  # item id -> ms played
        self._on_started, self._on_stopped = on_started, on_stopped
        self._playing: str | None = None  # the response whose audio is being played
        self._done: set[str] = set()  # responses whose audio has all been handed over
        self._start: float | None = None
        self._timestamp = 0

    # --- the relay's side ----------------------------------------------------------------

    def write(self, response_id: str, item_id: str, pcm: bytes) -> None:
        if not self._queue or self._queue[-1].item_id != item_id:
            self._queue.append(_Segment(response_id, item_id))
        self._queue[-1].pcm += pcm

    def response_done(self, response_id: str) -> None:
        """No more audio will come for `response_id`: stopped is reported once it has played."""
        if self._playing == response_id and not self._queue:
            self._stop_playing()
        elif any(segment.response_id == response_id for segment in self._queue):
            self._done.add(response_id)

    def clear(self) -> Cut | None:
        """Stop playing now and drop what has not been played; None when nothing was playing
        or waiting to play."""
        if self._queue:
            head = self._queue[0]
            cut = Cut(head.response_id, head.item_id, int(self._played_ms.get(head.item_id, 0)))
        elif self._playing is not None:  # between two sentences of a reply: nothing dropped
            cut = Cut(self._playing, None, 0)
        else:
            return None
        self._done -= {segment.response_id for segment in self._queue}
        self._queue.clear()
        self._playing = None
        return cut

    # --- aiortc's side -------------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME_SAMPLES
            wait = self._start + self._timestamp / PCM_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = np.frombuffer(self._next_pcm(), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = PCM_RATE
        frame.pts = self._timestamp
        frame.time_base = _TIME_BASE
        return frame

    def _next_pcm(self) -> bytes:
        out = bytearray()
        while self._queue and len(out) < FRAME_BYTES:
            head = self._queue[0]
            if self._playing != head.response_id:
                if self._playing is not None:  # the one before ended without a response.done
                    self._stop_playing()
                self._playing = head.response_id
                self._on_started(head.response_id)
            take = head.pcm[: FRAME_BYTES - len(out)]
            del head.pcm[: len(take)]
            out += take
            self._played_ms[head.item_id] = (
                self._played_ms.get(head.item_id, 0) + len(take) / 2 * 1000 / PCM_RATE
            )
            if not head.pcm:
                self._queue.popleft()
        if self._playing is not None and not self._queue and self._playing in self._done:
            self._stop_playing()
        return bytes(out) + _SILENCE[len(out) :]

    def _stop_playing(self) -> None:
        response_id, self._playing = self._playing, None
        self._done.discard(response_id)
        self._on_stopped(response_id)
