"""A WebRTC client made with aiortc, as a browser or an OpenAI WebRTC client would call: an SDP
offer with a microphone track (speech from PCM, then silence) and the `oai-events` data channel;
it keeps every event it receives and measures the audio the server plays to it."""

import asyncio
import fractions
import json
import time

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 24000
FRAME_SAMPLES = RATE // 50  # 20 ms


class SpeechTrack(MediaStreamTrack):
    """A microphone that says `pcm` (PCM16 mono 24 kHz) once, in real time, then is silent."""

    kind = "audio"

    def __init__(self, pcm: bytes = b"") -> None:
        super().__init__()
        self.pcm = bytearray(pcm)
        self.said = asyncio.Event()
        self._start: float | None = None
        self._timestamp = 0

    def say(self, pcm: bytes) -> None:
        self.said.clear()
        self.pcm += pcm

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME_SAMPLES
            await asyncio.sleep(max(0, self._start + self._timestamp / RATE - time.monotonic()))
        chunk = bytes(self.pcm[: FRAME_SAMPLES * 2])
        del self.pcm[: len(chunk)]
        if not self.pcm:
            self.said.set()
        chunk += bytes(FRAME_SAMPLES * 2 - len(chunk))
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype=np.int16)[np.newaxis, :], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = RATE, self._timestamp
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class Peer:
    """One call's client side."""

    def __init__(self, pcm: bytes = b"", *, data_channel: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.microphone = SpeechTrack(pcm)
        self.pc.addTrack(self.microphone)
        self.events: list[dict] = []
        self._new = asyncio.Event()
        self.audio_frames = 0  # 20 ms frames received from the server
        self.loud_frames = 0  # of which not silent
        self._reader: asyncio.Task | None = None
        self.channel = self.pc.createDataChannel("oai-events") if data_channel else None
        if self.channel is not None:
            self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str) -> None:
        self.events.append(json.loads(message))
        self._new.set()

    def _on_track(self, track) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                samples = frame.to_ndarray().astype(np.float64)
                self.audio_frames += 1
                if np.sqrt(np.mean(samples**2)) > 300:
                    self.loud_frames += 1

        self._reader = asyncio.ensure_future(read())

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def connected(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                await asyncio.sleep(0.02)

    async def wait_for(self, etype: str, timeout: float = 30, after: int = 0) -> dict:
        """The first event of type `etype` (from index `after` on), waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[after:]:
                    if event["type"] == etype:
                        return event
                self._new.clear()
                await self._new.wait()

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    async def close(self) -> None:
        self.microphone.stop()
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
