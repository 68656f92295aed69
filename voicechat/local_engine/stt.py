"""Offline speech recognition: pocketsphinx by default, faster-whisper or your own as plug-ins."""

import importlib
import importlib.util
import logging
import threading
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .audio import PCM_RATE, Resampler

logger = logging.getLogger(__name__)

STT_RATE = 16000
# 20 ms per process_raw call: pocketsphinx holds the GIL while it decodes, so small calls
# keep the event loop (and other conversations) responsive; see docs/local-engine-speech.md.
_DECODE_BYTES = STT_RATE // 50 * 2
_MAX_IDLE_DECODERS = 2


class SpeechRecognizer(Protocol):
    """One per conversation; synchronous and CPU-bound, so call it from a worker thread."""

    def transcribe(self, pcm16_24k: bytes) -> str:
        """Transcribe one whole utterance ('' if nothing was recognised)."""
        ...

    def start(self) -> None:
        """Begin a streamed utterance."""
        ...

    def feed(self, pcm16_24k: bytes) -> str | None:
        """Add audio to the streamed utterance; return the partial text when it changed."""
        ...

    def finish(self) -> str:
        """End the streamed utterance and return its final text."""
        ...

    def close(self) -> None:
        """Give back what the recognizer holds; idempotent, safe from any thread at any time."""
        ...


# --- pocketsphinx ---------------------------------------------------------------------------


class _DecoderPool:
    """Process-wide pool of pocketsphinx decoders, one lent to each live conversation.

    Building a decoder loads the 134k-word dictionary and the language model: ~0.4 s with
    the GIL held, which would stall every conversation on the server. A decoder is lent to
    one conversation at a time and reset to its fresh cepstral mean when lent again, so it
    behaves exactly like a new one (accuracy adapts within a conversation, never across).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list = []
        self._fresh_cmn: str | None = None

    def _build(self):
        from pocketsphinx import Decoder

        # fwdflat off: its second pass runs inside end_utt and held the GIL ~175 ms per
        # utterance, for ~1 point of word accuracy (measured: 0.876 -> 0.865).
        decoder = Decoder(samprate=STT_RATE, fwdflat=False, loglevel="FATAL")
        with self._lock:
            if self._fresh_cmn is None:
                self._fresh_cmn = decoder.get_cmn(False)
        return decoder

    def lend(self):
        with self._lock:
            decoder = self._idle.pop() if self._idle else None
        if decoder is None:
            return self._build()
        decoder.set_cmn(self._fresh_cmn)
        return decoder

    def give_back(self, slot: "_Slot") -> None:
        if slot.decoder is None:
            return
        if slot.in_utterance:
            slot.decoder.end_utt()
        decoder, slot.decoder = slot.decoder, None
        with self._lock:
            # Each decoder holds ~95 MB; after a burst of conversations keep only a few.
            if len(self._idle) < _MAX_IDLE_DECODERS:
                self._idle.append(decoder)

    def preload(self, count: int = 1) -> None:
        built = [self._build() for _ in range(count)]
        with self._lock:
            self._idle.extend(built)


class _Slot:
    """The decoder a recognizer holds, kept apart so a finalizer can return it."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self.in_utterance = False


_pool = _DecoderPool()


def preload_pocketsphinx(count: int = 1) -> None:
    """Build decoders ahead of the first conversations (e.g. at server start)."""
    _pool.preload(count)


class PocketsphinxRecognizer:
    """US English recognizer; streaming, with accuracy that adapts to the speaker over turns."""

    def __init__(self) -> None:
        self._slot = _Slot(_pool.lend())
        # Return the decoder to the pool even if the session forgets to call close().
        self._release = weakref.finalize(self, _pool.give_back, self._slot)
        self._state = threading.Lock()
        self._busy = False
        self._closed = False
        self._resampler: Resampler | None = None
        self._buffer = b""
        self._partial = ""

    def transcribe(self, pcm16_24k: bytes) -> str:
        with self._using():
            self._start()
            self._feed(pcm16_24k)
            return self._finish()

    def start(self) -> None:
        with self._using():
            self._start()

    def feed(self, pcm16_24k: bytes) -> str | None:
        with self._using():
            return self._feed(pcm16_24k)

    def finish(self) -> str:
        with self._using():
            return self._finish()

    def close(self) -> None:
        """Safe from any thread at any time: a call still running gives the decoder back."""
        with self._state:
            self._closed = True
            if self._busy:
                return
        self._release()

    @contextmanager
    def _using(self):
        with self._state:
            if self._closed:
                raise RuntimeError("this recognizer was closed")
            if self._busy:
                raise RuntimeError("a recognizer serves one call at a time")
            self._busy = True
        try:
            yield
        finally:
            with self._state:
                self._busy = False
                closed = self._closed
            if closed:
                self._release()

    def _start(self) -> None:
        decoder = self._slot.decoder
        if self._slot.in_utterance:
            decoder.end_utt()
        decoder.start_utt()
        self._slot.in_utterance = True
        self._resampler = Resampler(PCM_RATE, STT_RATE)
        self._buffer = b""
        self._partial = ""

    def _feed(self, pcm16_24k: bytes) -> str | None:
        if not self._slot.in_utterance:
            self._start()
        self._decode(self._resampler.process(pcm16_24k), final=False)
        return self._changed_partial()

    def _finish(self) -> str:
        if not self._slot.in_utterance:
            return ""
        decoder = self._slot.decoder
        self._decode(self._resampler.flush(), final=True)
        decoder.end_utt()
        self._slot.in_utterance = False
        hypothesis = decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def _decode(self, pcm16_16k: bytes, *, final: bool) -> None:
        decoder = self._slot.decoder
        self._buffer += pcm16_16k
        whole = len(self._buffer)
        if not final:
            whole -= whole % _DECODE_BYTES
        for start in range(0, whole, _DECODE_BYTES):
            decoder.process_raw(self._buffer[start : start + _DECODE_BYTES], False, False)
        self._buffer = self._buffer[whole:]

    def _changed_partial(self) -> str | None:
        hypothesis = self._slot.decoder.hyp()
        text = hypothesis.hypstr.strip() if hypothesis is not None else ""
        if text == self._partial:
            return None
        self._partial = text
        return text


# --- faster-whisper (optional plug-in, not installed by requirements.txt) --------------------


@lru_cache(maxsize=1)
def _whisper_model(model_path: str):
    from faster_whisper import WhisperModel

    return WhisperModel(model_path, device="cpu", compute_type="int8")


class FasterWhisperRecognizer:
    """Whisper via CTranslate2 from local model files; no streaming partials."""

    def __init__(self, model_path: str, language: str) -> None:
        self._model = _whisper_model(model_path)
        self._language = language.split("-")[0] or None
        self._audio = b""

    def transcribe(self, pcm16_24k: bytes) -> str:
        samples = np.frombuffer(_to_16k(pcm16_24k), dtype="<i2").astype(np.float32) / 32768.0
        segments, _info = self._model.transcribe(samples, language=self._language, beam_size=1)
        return " ".join(segment.text.strip() for segment in segments).strip()

    def start(self) -> None:
        self._audio = b""

    def feed(self, pcm16_24k: bytes) -> str | None:
        self._audio += pcm16_24k
        return None

    def finish(self) -> str:
        audio, self._audio = self._audio, b""
        return self.transcribe(audio) if audio else ""

    def close(self) -> None:
        self._audio = b""


def _to_16k(pcm16_24k: bytes) -> bytes:
    resampler = Resampler(PCM_RATE, STT_RATE)
    return resampler.process(pcm16_24k) + resampler.flush()


def _make_faster_whisper(language: str) -> SpeechRecognizer:
    model_path = settings.LOCAL_STT_MODEL_PATH
    if importlib.util.find_spec("faster_whisper") is None:
        raise ImproperlyConfigured(
            "LOCAL_STT=faster-whisper needs the faster-whisper package: "
            "pip install faster-whisper, then set LOCAL_STT_MODEL_PATH to a CTranslate2 model "
            "directory (one containing model.bin), or set LOCAL_STT=pocketsphinx."
        )
    if not model_path or not (Path(model_path) / "model.bin").is_file():
        raise ImproperlyConfigured(
            "LOCAL_STT=faster-whisper needs LOCAL_STT_MODEL_PATH set to a CTranslate2 Whisper "
            f"model directory containing model.bin (got {model_path!r}). Models are never "
            "downloaded at run time; copy one onto this machine first."
        )
    return FasterWhisperRecognizer(model_path, language)


def _make_pocketsphinx(language: str) -> SpeechRecognizer:
    if not language.lower().startswith("en"):
        logger.warning("pocketsphinx only knows US English; transcribing %r as English", language)
    return PocketsphinxRecognizer()


_BACKENDS = {"pocketsphinx": _make_pocketsphinx, "faster-whisper": _make_faster_whisper}


def make_recognizer(*, language: str | None = "en") -> SpeechRecognizer:
    """A new recognizer for one conversation, chosen by settings.LOCAL_STT."""
    language = language or "en"  # the session may leave the transcription language unset
    name = settings.LOCAL_STT
    if name in _BACKENDS:
        return _BACKENDS[name](language)
    if "." in name:
        # Your own: LOCAL_STT=package.module.factory, called as factory(language=...).
        return _import_factory("LOCAL_STT", name)(language=language)
    raise ImproperlyConfigured(
        f"LOCAL_STT must be one of {', '.join(_BACKENDS)} or a dotted path to a factory, "
        f"got {name!r}"
    )


def _import_factory(setting: str, dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ImproperlyConfigured(f"{setting}={dotted!r} cannot be imported: {error}") from error
