"""The engine's view of the speech components: a Transcriber per conversation, TTS, formats.

The components themselves (vad, stt, tts, audio) are separate modules; this one only runs them
off the event loop in the shared pool and converts between PCM16 24 kHz and the session's
audio format.
"""

import asyncio
import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from voicechat.local_engine import audio, stt
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


# Decode the utterance again after this much new speech. A partial decode costs a whole decode
# (tiny.en: ~0.1-0.15 s of both cores on 2 cores), so every second keeps listening to someone at
# ~10-15 % of the machine, and gave ~1 partial transcript per 2-3 s sentence.
PARTIAL_EVERY_MS = 1000
_BYTES_PER_MS = 48  # PCM16 mono 24 kHz
# Decodes running in this process. A partial decode starts only when none is: partials are a
# courtesy, and must never make a final transcript (which someone waits for) queue behind them.
# Changed only on event loop threads, so the GIL keeps it whole.
_decoding = 0


@dataclass
class _Utterance:
    """The turn being spoken, as the Transcriber follows it."""

    language: str
    on_delta: Callable[[str], None] | None
    audio: bytearray = field(default_factory=bytearray)
    sent: str = ""  # the text given to on_delta so far: every later decode continues it
    previous: str = ""  # the last partial decode's text
    partial_from: int = 0  # len(audio) when the last partial decode started
    partial_running: bool = False
    final: asyncio.Task | None = None  # the final decode; speculative until stream_finish


class Transcriber:
    """Speech recognition for one conversation, run in the shared "stt" pool off the event loop.

    Whole items go through transcribe(). A turn heard by the server VAD is streamed: while the
    user speaks, the utterance so far is decoded again every PARTIAL_EVERY_MS of new speech, and
    the words two decodes agree on go to on_delta (stt.agreed_prefix), so the deltas concatenate
    to the final transcript, as OpenAI's gpt-4o-transcribe sends them. When the VAD hears the
    pause begin (stream_pause), the final decode starts at once on the audio so far: the turn
    ends only silence_duration_ms later, by when the transcript is usually ready. If the user
    goes on speaking (stream_resume), that decode is discarded. Push-to-talk streams too, without
    partials: the decode begun in the pause before the release is the commit's transcript.
    """

    def __init__(self, stats: SpeechStats | None = None) -> None:
        self.stats = stats or SpeechStats()
        self._utterance: _Utterance | None = None
        self._tasks: set[asyncio.Task] = set()

    def _decode(self, pcm16_24k: bytes, language: str, prefix: str = "") -> asyncio.Task:
        task = asyncio.create_task(self._run(pcm16_24k, language, prefix))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, pcm16_24k: bytes, language: str, prefix: str) -> str:
        global _decoding
        _decoding += 1
        try:
            text, seconds = await run_heavy("stt", _timed, _recognize, pcm16_24k, language, prefix)
        finally:
            _decoding -= 1
        self.stats.stt_seconds += seconds
        return text

    def transcribe(self, pcm16_24k: bytes, language: str) -> asyncio.Task:
        """A whole utterance at once (push-to-talk, created audio items); await the text."""
        self.stats.stt_audio_seconds += len(pcm16_24k) / 48000
        return self._decode(pcm16_24k, language)

    def stream_start(self, language: str, on_delta: Callable[[str], None] | None = None) -> None:
        """A new turn; on_delta(text) gets the transcript as it grows (None: no partials)."""
        self._utterance = _Utterance(language, on_delta)

    def stream_feed(self, pcm16_24k: bytes) -> None:
        utterance = self._utterance
        if utterance is None or not pcm16_24k:
            return
        utterance.audio += pcm16_24k
        self.stats.stt_audio_seconds += len(pcm16_24k) / 48000
        if (
            utterance.on_delta is not None
            and utterance.final is None
            and not utterance.partial_running
            and not _decoding
            and len(utterance.audio) - utterance.partial_from >= PARTIAL_EVERY_MS * _BYTES_PER_MS
            and len(utterance.audio) <= stt.LONGEST_SHORT_DECODE_S * 1000 * _BYTES_PER_MS
        ):
            utterance.partial_from = len(utterance.audio)
            utterance.partial_running = True
            partial = self._decode(bytes(utterance.audio), utterance.language, utterance.sent)
            partial.add_done_callback(lambda task: self._partial_done(utterance, task))

    def _partial_done(self, utterance: _Utterance, task: asyncio.Task) -> None:
        utterance.partial_running = False
        if task.cancelled() or task.exception() is not None:
            return
        # Once the final decode has started from `sent`, nothing more may be sent before it.
        if utterance is not self._utterance or utterance.final is not None:
            return
        text = task.result()
        agreed = stt.agreed_prefix(utterance.previous, text, sent=utterance.sent)
        utterance.previous = text
        self._send(utterance, agreed)

    def _send(self, utterance: _Utterance, text: str) -> None:
        if len(text) > len(utterance.sent):
            delta, utterance.sent = text[len(utterance.sent) :], text
            utterance.on_delta(delta)

    def stream_pause(self) -> asyncio.Task | None:
        """The user paused: decode the turn as it stands, in case it has ended.

        Returns the decode if this call started it (its text is the final transcript, unless
        the user speaks again), else None.
        """
        utterance = self._utterance
        if utterance is None or utterance.final is not None:
            return None
        utterance.final = self._decode(bytes(utterance.audio), utterance.language, utterance.sent)
        return utterance.final

    def stream_settled(self) -> bool:
        """Whether the final decode has begun in a pause and the user has not spoken since:
        stream_finish would use it (push-to-talk's commit asks before choosing)."""
        return self._utterance is not None and self._utterance.final is not None

    def stream_sends_deltas(self) -> bool:
        """Whether the turn's transcript goes to on_delta as it grows (stream_start)."""
        return self._utterance is not None and self._utterance.on_delta is not None

    def stream_resume(self) -> None:
        """The user speaks again: the turn goes on, and the early final decode is discarded."""
        if self._utterance is not None:
            self._utterance.final = None

    def stream_cancel(self) -> None:
        """Forget the turn (its audio was committed or cleared some other way)."""
        self._utterance = None

    def stream_finish(self) -> asyncio.Future:
        """End the turn; await the future for its final text (its last delta is sent first)."""
        utterance, self._utterance = self._utterance, None
        result = asyncio.get_running_loop().create_future()
        if utterance is None:
            result.set_result("")
            return result
        final = utterance.final or self._decode(
            bytes(utterance.audio), utterance.language, utterance.sent
        )

        def finished(task: asyncio.Task) -> None:
            if result.cancelled():
                return
            if task.cancelled():
                result.cancel()
            elif task.exception() is not None:
                result.set_exception(task.exception())
            else:
                if utterance.on_delta is not None:
                    self._send(utterance, task.result())
                result.set_result(task.result())

        final.add_done_callback(finished)
        return result

    async def close(self) -> None:
        self._utterance = None
        tasks = [*self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _recognize(pcm16_24k: bytes, language: str, prefix: str) -> str:
    """Runs in the stt pool: the shared recognizer's transcript, continuing `prefix`."""
    text = stt.get_recognizer(language).transcribe(pcm16_24k, language=language, prefix=prefix)
    return stt.continued(prefix, text.strip())


_warm = False
_warm_lock = threading.Lock()
WARM_UP_EXIT_WAIT_S = 60


def warm_up() -> None:
    """Load the speech models once per process, in the background: at server start
    (config/asgi.py), else at the first conversation. Whisper and piper take ~1 s each to load,
    which no conversation should wait for."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        _warm = True
    thread = threading.Thread(target=_load_models, name="local-warm-up", daemon=True)
    thread.start()
    # A process that exits while native code is still loading a model aborts (exit code 134,
    # "terminate called without an active exception"): a short one waits for the load instead.
    atexit.register(thread.join, WARM_UP_EXIT_WAIT_S)


def _load_models() -> None:
    from voicechat.local_engine import turn
    from voicechat.local_engine.tts import get_synthesizer

    loads = [stt.preload, get_synthesizer]
    if settings.LOCAL_TURN_DETECTION == "semantic_vad":
        loads.append(turn.preload)
    for load in loads:
        try:
            load()
        except Exception:
            # The system check reports a missing model at start-up; a conversation that needs
            # it reports it again (transcription failed). Nothing more to do here.
            logger.exception("could not load a speech model ahead of time")


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
