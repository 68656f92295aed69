"""Test speech: the engine's own piper voice, steady, so every run hears the same words.

Piper varies each reading of a sentence a little (random noise in the model), and
pocketsphinx turned some of those readings into other words ("what is three plus bork").
Tests that speak to the engine use this steady reading instead: same text, same audio.
"""

import functools

from voicechat.local_engine.tts import PIPER, PiperSynthesizer, make_piper


@functools.cache
def _steady_piper() -> PiperSynthesizer:
    return make_piper(expressive=False)


@functools.lru_cache(maxsize=64)
def spoken(text: str) -> bytes:
    """`text` read by the bundled piper voice as PCM16 at 24 kHz, the same audio every time."""
    return _steady_piper().synthesize(text, voice=PIPER)
