"""Test speech, the same audio on every run, and how to score what a recognizer heard.

Voices: the engine's own piper voice read steadily (piper varies each reading a little with
random noise, and a recognizer then heard other words from run to run), espeak-ng voices, and a
degraded copy of the piper reading (faster, higher, reverberant, telephone band, pink noise).
Scoring: word error rate, with numbers as words ("12" is "twelve"), as Whisper writes digits.
"""

import base64
import functools
import os
import re
import subprocess
import sys

import numpy as np

from voicechat.local_engine.audio import PCM_RATE, resample_pcm16
from voicechat.local_engine.tts import PIPER, PiperSynthesizer, make_piper

# Questions, numbers, names, a long sentence: what people say to an assistant.
SENTENCES = [
    "What is twelve times seven?",
    "My name is Ada.",
    "What time does the store open tomorrow morning?",
    "Please turn on the kitchen lights.",
    "I would like to book a table for two people tonight.",
    "How far is it from here to the train station?",
    "What is the capital of France?",
    "Remind me to call my sister at five o'clock.",
    "Can you tell me a joke about cats?",
    "What is the weather like in London today?",
    "My friend Maria lives in a small house near the river with her three dogs.",
    "How many days are there in a leap year?",
]
# The sets a recognizer is measured on: SENTENCES in each of these voices (readings()).
VOICES = ("piper", "espeak en-us", "espeak en-gb female", "degraded piper")
_ESPEAK = {"espeak en-us": "en-us+m1", "espeak en-gb female": "en-gb+f3"}


@functools.cache
def _steady_piper() -> PiperSynthesizer:
    return make_piper(expressive=False)


@functools.lru_cache(maxsize=64)
def spoken(text: str) -> bytes:
    """`text` read by the bundled piper voice as PCM16 at 24 kHz, the same audio every time."""
    return _steady_piper().synthesize(text, voice=PIPER)


@functools.lru_cache(maxsize=16)
def espoken(texts: tuple[str, ...], voice: str) -> tuple[bytes, ...]:
    """Each of `texts` read by espeak-ng in any voice it has ("en-gb+f3", "de"), PCM16 24 kHz.

    espeak-ng's wave generator carries state from one reading to the next (the same sentence
    comes out a little different each time in a process, and no seed resets it), so the
    readings are made in a fresh process, in order: the same audio on every run.
    """
    run = subprocess.run(
        [sys.executable, "-c", _ESPEAK_READINGS, voice, *texts],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    return tuple(base64.b64decode(line) for line in run.stdout.split())


_ESPEAK_READINGS = """
import base64, sys
from unittest.mock import patch
import django
django.setup()
from voicechat.local_engine import tts
voice, texts = sys.argv[1], sys.argv[2:]
# The synthesizer speaks the voices of its table only: this one joins it.
with patch.dict(tts.ESPEAK_VOICES, {"test voice": tts.LocalVoice(voice, "test")}):
    for text in texts:
        print(base64.b64encode(tts.EspeakSynthesizer().synthesize(text, voice=voice)).decode())
"""


@functools.cache
def readings(voice: str) -> tuple[bytes, ...]:
    """SENTENCES read in one of VOICES, PCM16 24 kHz, the same audio on every run."""
    if voice == "piper":
        return tuple(spoken(text) for text in SENTENCES)
    if voice == "degraded piper":
        return tuple(degraded(pcm, seed=i) for i, pcm in enumerate(readings("piper")))
    return espoken(tuple(SENTENCES), _ESPEAK[voice])


def degraded(pcm16: bytes, *, seed: int = 0) -> bytes:
    """A harder copy: 12 % faster and higher, a 0.35 s room, 150-3800 Hz, pink noise at 15 dB."""
    rng = np.random.default_rng(seed)
    # Played back 12 % faster: the same samples read as if recorded at a lower rate.
    x = _samples(resample_pcm16(pcm16, int(PCM_RATE * 1.12), PCM_RATE))
    room = int(0.35 * PCM_RATE)
    impulse = rng.normal(0, 1, room) * np.exp(-6.9 * np.arange(room) / room)  # -60 dB at 0.35 s
    impulse[0] = 0
    impulse *= 0.35 / np.sqrt(np.sum(impulse**2))
    size = len(x) + room
    y = np.pad(x, (0, room)) + np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(impulse, size), size)
    spectrum = np.fft.rfft(y)
    frequencies = np.fft.rfftfreq(size, 1 / PCM_RATE)
    spectrum[(frequencies < 150) | (frequencies > 3800)] = 0
    y = np.fft.irfft(spectrum, size)
    y += pink_noise(size, rms=np.sqrt(np.mean(y**2) / 10 ** (15 / 10)), rng=rng)
    y *= min(1.0, 20000 / np.max(np.abs(y)))
    return y.astype("<i2").tobytes()


def pink_noise(count: int, *, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with equal energy per octave (1/f power), as samples at 24 kHz."""
    spectrum = np.fft.rfft(rng.normal(0, 1, count))
    frequencies = np.fft.rfftfreq(count, 1 / PCM_RATE)
    spectrum[1:] /= np.sqrt(frequencies[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, count)
    return noise * rms / np.sqrt(np.mean(noise**2))


def _samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


# --- scoring -------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 in words, as a speaker would say it ("eighty four")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def words(text: str) -> list[str]:
    """Lower-case words, numbers spelt out, punctuation gone (hyphens split words)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda match: f" {number_words(int(match.group()))} ", text)
    return re.sub(r"[^a-z' ]", " ", text).split()


def _edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            diagonal, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word)),
            )
    return row[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Edits needed to turn the hypotheses into the references, per reference word."""
    pairs = list(zip(references, hypotheses, strict=True))
    return sum(_edits(words(r), words(h)) for r, h in pairs) / sum(len(words(r)) for r, _ in pairs)
