"""The offline engine's voices: ten GA names, ten distinct local voices, each as described."""

import itertools
import re

import numpy as np
import pytest

from voicechat.local_engine import speech, tts
from voicechat.local_engine.audio import PCM_RATE

# Two sentences with plenty of voiced sound, so pitch and spectrum are measured on speech.
SENTENCES = ["Please turn on the kitchen lights.", "My name is Ada and I live in Paris."]
# What the measured voices give (test_voices_sound_distinct_and_as_described): female variants
# 179-214 Hz, male variants and Piper's joe 88-108 Hz; the same variant in two accents differs by
# ~1 dB in its spectrum, two different variants by 2.2-8.5 dB.
FEMALE_MIN_HZ = 160
MALE_MAX_HZ = 130
DISTINCT_SPECTRUM_DB = 1.5


def median_f0(pcm: bytes) -> float:
    """Median pitch of the loud 40 ms frames, by autocorrelation in 60-400 Hz."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    frame, hop = PCM_RATE // 25, PCM_RATE // 100
    shortest, longest = PCM_RATE // 400, PCM_RATE // 60
    loud = 0.5 * np.sqrt(np.mean(x**2))
    pitches = []
    for start in range(0, len(x) - frame, hop):
        window = x[start : start + frame] - x[start : start + frame].mean()
        if np.sqrt(np.mean(window**2)) < loud:
            continue
        correlation = np.correlate(window, window, "full")[frame - 1 :]
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.5 * correlation[0]:  # periodic enough to be voiced
            pitches.append(PCM_RATE / lag)
    return float(np.median(pitches))


def spectrum_db(pcm: bytes) -> np.ndarray:
    """Long-term average spectrum in 24 log-spaced bands (100 Hz-8 kHz), in dB about its mean."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    size = 1024
    frames = np.array([x[i : i + size] * np.hanning(size) for i in range(0, len(x) - size, 512)])
    frames = frames[np.sqrt(np.mean(frames**2, axis=1)) > 300]  # speech, not the pauses
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(size, 1 / PCM_RATE)
    edges = np.geomspace(100, 8000, 25)
    bands = np.array(
        [power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in itertools.pairwise(edges)]
    )
    db = 10 * np.log10(bands + 1e-9)
    return db - db.mean()


@pytest.mark.parametrize("backend", ["piper", "espeak"])
def test_every_ga_name_has_its_own_local_voice(settings, backend):
    settings.LOCAL_TTS = backend
    local = {name: tts.local_voice_for(name) for name in tts.GA_VOICES}
    assert set(local) == set(settings.REALTIME_VOICES)
    assert len(set(local.values())) == len(tts.GA_VOICES)  # ten names, ten voices
    assert tts.local_voice_for("CEDAR") == local["cedar"]
    assert tts.local_voice_for("nobody") == local[tts.DEFAULT_GA_VOICE]
    descriptions = tts.voice_descriptions()
    assert set(descriptions) == set(tts.GA_VOICES)
    for name, description in descriptions.items():
        engine = "Piper" if local[name] == tts.PIPER else "espeak-ng"
        assert engine in description and re.search(r"\b(fe)?male\b", description), name


def test_piper_speaks_the_default_name_and_espeak_the_rest(settings):
    settings.LOCAL_TTS = "piper"
    assert tts.local_voice_for(tts.DEFAULT_GA_VOICE) == tts.PIPER
    assert tts.voice_descriptions()[tts.DEFAULT_GA_VOICE] == "Joe (Piper, US male)"
    assert tts.voice_descriptions()["coral"] == "espeak-ng, US female (f5)"
    settings.LOCAL_PIPER_VOICE = "/srv/voices/en_US-lessac-medium.onnx"
    assert tts.voice_descriptions()[tts.DEFAULT_GA_VOICE] == "en_US-lessac-medium (Piper)"


def test_a_tts_plug_in_gets_the_ga_name(settings):
    settings.LOCAL_TTS = "mycompany.speech.make_synthesizer"
    assert tts.local_voice_for("coral") == "coral"
    assert tts.voice_descriptions() == {}


def test_espeak_is_only_given_the_voices_in_its_table(monkeypatch):
    espeak = tts.EspeakSynthesizer()
    chosen = []
    set_voice = espeak._lib.espeak_SetVoiceByName
    monkeypatch.setattr(
        espeak._lib, "espeak_SetVoiceByName", lambda name: chosen.append(name) or set_voice(name)
    )
    # A variant a client made up, or anything else, speaks in the default name's voice.
    for voice in ("en-us+whisper", "../../etc", "coral", "en-us+f5"):
        espeak.synthesize("Hello.", voice=voice)
    default = tts.ESPEAK_VOICES[tts.DEFAULT_GA_VOICE].name.encode()
    assert chosen == [default, default, b"en-us+f5", b"en-us+f5"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["piper", "espeak"])
async def test_voices_sound_distinct_and_as_described(settings, backend):
    """Through the engine's own path (session voice name -> audio): pitch and timbre per name."""
    settings.LOCAL_TTS = backend
    descriptions = tts.voice_descriptions()
    audio = {}
    for name in tts.GA_VOICES:
        audio[name] = b"".join([await speech.synthesize(text, name) for text in SENTENCES])
    pitch = {name: round(median_f0(pcm)) for name, pcm in audio.items()}
    for name, hz in pitch.items():
        if "female" in descriptions[name]:
            assert hz >= FEMALE_MIN_HZ, (name, descriptions[name], pitch)
        else:
            assert hz <= MALE_MAX_HZ, (name, descriptions[name], pitch)
    spectra = {name: spectrum_db(pcm) for name, pcm in audio.items()}
    for a, b in itertools.combinations(tts.GA_VOICES, 2):
        difference = float(np.sqrt(np.mean((spectra[a] - spectra[b]) ** 2)))
        assert difference >= DISTINCT_SPECTRUM_DB, (a, b, round(difference, 1))
