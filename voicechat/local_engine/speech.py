"""The engine's view of the speech components: STT per conversation, TTS, audio formats.

The components themselves (vad, stt, tts, audio) are separate modules; this one only runs them
off the event loop in the shared pool and converts between PCM16 24 kHz and the session's
audio format.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from voicechat.local_engine import audio
from voicechat.local_engine.workers import run_heavy

logger = logging.getLogger(__name__)

# ~150 ms of audio per response.output_audio.delta: small enough to start playback quickly,
# large enough that the per-event overhead (JSON, base64, WebSocket frame) stays low.
DELTA_MS = 150


@dataclass
class SpeechStats:
    """CPU seconds spent on speech and seconds of audio handled, for one conversation."""

    stt_seconds: float = 0.0
    stt_audio_seconds: float = 0.0
    tts_seconds: float = 0.0
    tts_audio_seconds: float = 0.0

    def stt_rtf(self) -> float:
        return self.stt_seconds / self.stt_audio_seconds if self.stt_audio_seconds else 0.0

    def tts_rtf(self) -> float:
        return self.tts_seconds / self.tts_audio_seconds if self.tts_audio_seconds else 0.0


def _timed(fn, *args):
    """Run fn in the worker thread and also return how long it took there."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


class Transcriber:
    """One recognizer per conversation, fed in order by one worker task.

    pocketsphinx adapts to the speaker over a conversation, so a conversation keeps its
    recognizer. With server VAD the utterance is streamed into the recognizer while the user
    speaks, so at the end of the turn only the last bit of decoding remains.
    """

    def __init__(self, stats: SpeechStats | None = None) -> None:
        self.stats = stats or SpeechStats()
        self._recognizer = None
        self._language: str | None = None
        self._ops: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _submit(self, fn, *args) -> asyncio.Future:
        if self._worker is None:
            self._ops = asyncio.Queue()
            self._worker = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        self._ops.put_nowait((fn, args, future))
        return future

    async def _work(self) -> None:
        while True:
            fn, args, future = await self._ops.get()
            if future.cancelled():
                continue
            try:
                result, seconds = await run_heavy("stt", _timed, fn, *args)
                self.stats.stt_seconds += seconds
            except Exception as exc:
                if not future.cancelled():
                    future.set_exception(exc)
            else:
                if not future.cancelled():
                    future.set_result(result)

    def _recognizer_for(self, language: str):
        if self._recognizer is None or language != self._language:
            from voicechat.local_engine.stt import make_recognizer

            if self._recognizer is not None:
                self._recognizer.close()
            self._recognizer = make_recognizer(language=language)
            self._language = language
        return self._recognizer

    def transcribe(self, pcm16_24k: bytes, language: str) -> asyncio.Future:
        """A whole utterance at once (push-to-talk, created audio items); await the result.

        Queued at once (not when awaited), so it stays in order with the streaming calls.
        """
        self.stats.stt_audio_seconds += len(pcm16_24k) / 48000
        return self._submit(lambda: self._recognizer_for(language).transcribe(pcm16_24k))

    def stream_start(self, language: str) -> None:
        future = self._submit(lambda: self._recognizer_for(language).start())
        future.add_done_callback(_ignore_result)

    def stream_feed(self, pcm16_24k: bytes) -> None:
        if pcm16_24k:
            self.stats.stt_audio_seconds += len(pcm16_24k) / 48000
            future = self._submit(lambda: self._recognizer.feed(pcm16_24k))
            future.add_done_callback(_ignore_result)

    def stream_finish(self) -> asyncio.Future:
        """End the streamed utterance; await the future for its text (queued at once)."""
        return self._submit(lambda: self._recognizer.finish().strip() if self._recognizer else "")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._recognizer is not None:
            self._recognizer.close()


def _ignore_result(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("background speech work failed: %r", future.exception())


_warm = False
_background: set[asyncio.Future] = set()


def warm_up() -> None:
    """Load the synthesizer in the background once per process (piper takes ~1 s to load), so
    the first reply of the first conversation doesn't wait for it."""
    global _warm
    if _warm:
        return
    _warm = True

    def load() -> None:
        from voicechat.local_engine.tts import get_synthesizer

        get_synthesizer()

    task = asyncio.ensure_future(run_heavy("tts", load))
    task.add_done_callback(_ignore_result)
    _background.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_background.discard)


def _synthesize_sync(text: str, voice: str) -> bytes:
    from voicechat.local_engine.tts import get_synthesizer, local_voice_for

    return get_synthesizer().synthesize(text, voice=local_voice_for(voice))


async def synthesize(text: str, voice: str, stats: SpeechStats | None = None) -> bytes:
    """PCM16 24 kHz for one sentence in the session voice (an OpenAI voice name)."""
    pcm, seconds = await run_heavy("tts", _timed, _synthesize_sync, text, voice)
    if stats is not None:
        stats.tts_seconds += seconds
        stats.tts_audio_seconds += len(pcm) / 48000
    return pcm


def sentence_splitter():
    """An incremental sentence splitter for streamed reply text."""
    from voicechat.local_engine.tts import SentenceSplitter

    return SentenceSplitter()


class OutputEncoder:
    """PCM16 24 kHz -> the session's output format, cut into ~DELTA_MS pieces."""

    def __init__(self, fmt: dict) -> None:
        self.kind = fmt.get("type", "audio/pcm")
        self._resampler = (
            None if self.kind == "audio/pcm" else audio.Resampler(audio.PCM_RATE, 8000)
        )

    def chunks(self, pcm16_24k: bytes, *, last: bool = False) -> list[bytes]:
        if self._resampler is None:
            data, step = pcm16_24k, audio.PCM_RATE * 2 * DELTA_MS // 1000
        else:
            pcm8k = self._resampler.process(pcm16_24k)
            if last:
                pcm8k += self._resampler.flush()
            encode = audio.pcm16_to_ulaw if self.kind == "audio/pcmu" else audio.pcm16_to_alaw
            data, step = encode(pcm8k), 8000 * DELTA_MS // 1000
        return [data[i : i + step] for i in range(0, len(data), step)]


class InputDecoder:
    """The session's input format -> PCM16 24 kHz (streaming, so chunk borders stay clean)."""

    def __init__(self, fmt: dict) -> None:
        self.kind = fmt.get("type", "audio/pcm")
        self._resampler = (
            None if self.kind == "audio/pcm" else audio.Resampler(8000, audio.PCM_RATE)
        )
        self._odd = b""

    def decode(self, data: bytes) -> bytes:
        if self._resampler is None:
            data = self._odd + data
            cut = len(data) - len(data) % 2
            self._odd = data[cut:]
            return data[:cut]
        decode = audio.ulaw_to_pcm16 if self.kind == "audio/pcmu" else audio.alaw_to_pcm16
        return self._resampler.process(decode(data))
