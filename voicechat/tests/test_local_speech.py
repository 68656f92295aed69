"""The local engine's speech parts with their real bundled models: audio, VAD, TTS.

Speech recognition has its own module, test_local_stt.py.
"""

import threading

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from voicechat.local_engine import audio, tts, vad
from voicechat.local_engine.audio import PCM_RATE, Resampler, pcm16_duration_ms
from voicechat.tests.speech import spoken

SENTENCES = [
    "What time does the store open tomorrow morning?",
    "Please turn on the kitchen lights.",
    "I would like to book a table for two people tonight.",
    "How far is it from here to the train station?",
]
CHUNK_24K = PCM_RATE // 25 * 2  # 40 ms, what the browser page sends per append


def tone(freq: float, seconds: float, rate: int, amplitude: float = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def dominant_frequency(pcm16: bytes, rate: int) -> float:
    x = samples(pcm16)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def rms(pcm16: bytes) -> float:
    return float(np.sqrt(np.mean(samples(pcm16) ** 2)))


def in_chunks(pcm16: bytes, size: int):
    for start in range(0, len(pcm16), size):
        yield pcm16[start : start + size]


@pytest.fixture(scope="module")
def piper_speech() -> dict[str, bytes]:
    """Each test sentence read by the bundled piper voice (24 kHz PCM16), the same every run."""
    return {text: spoken(text) for text in SENTENCES}


# --- audio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_resampler_round_trip_keeps_frequency_and_length(rate):
    original = tone(440, 1.0, PCM_RATE)
    down, up = Resampler(PCM_RATE, rate), Resampler(rate, PCM_RATE)
    converted = b""
    # Odd chunk sizes split samples in half: the resampler must carry the odd byte over.
    for chunk in in_chunks(original, 1001):
        converted += up.process(down.process(chunk))
    converted += up.process(down.flush()) + up.flush()

    assert abs(len(converted) - len(original)) <= 4
    assert dominant_frequency(converted, PCM_RATE) == pytest.approx(440, abs=2)
    middle = slice(2400, 21600)  # ignore the filter's edges
    correlation = np.corrcoef(samples(original)[middle], samples(converted)[middle])[0, 1]
    assert correlation > 0.999


def test_resampler_downsampled_tone_has_the_new_rate():
    converted = Resampler(PCM_RATE, 16000)
    out = b"".join(converted.process(c) for c in in_chunks(tone(1000, 0.5, PCM_RATE), 960))
    out += converted.flush()
    assert len(out) // 2 == 8000
    assert dominant_frequency(out, 16000) == pytest.approx(1000, abs=4)


def test_resampler_same_rate_passes_through():
    resampler = Resampler(PCM_RATE, PCM_RATE)
    assert resampler.process(b"\x01\x02\x03") + resampler.process(b"\x04") == b"\x01\x02\x03\x04"
    assert resampler.flush() == b""


def test_pcm16_duration_ms():
    assert pcm16_duration_ms(b"\x00" * 48000, PCM_RATE) == 1000
    assert pcm16_duration_ms(b"\x00" * 320, 8000) == 20


def test_g711_known_codes():
    pcm = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2").tobytes()
    # Reference values from ITU-T G.711 (silence is 0xFF in mu-law, 0xD5 in A-law).
    assert audio.pcm16_to_ulaw(pcm) == bytes([0xFF, 0xCE, 0x4E, 0x80, 0x00])
    assert audio.pcm16_to_alaw(pcm) == bytes([0xD5, 0xFA, 0x7A, 0xAA, 0x2A])
    assert samples(audio.ulaw_to_pcm16(b"\xff\x00")).tolist() == [0, -32124]
    assert samples(audio.alaw_to_pcm16(b"\xd5\x55")).tolist() == [8, -8]


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(audio.pcm16_to_ulaw, audio.ulaw_to_pcm16), (audio.pcm16_to_alaw, audio.alaw_to_pcm16)],
)
def test_g711_round_trip_keeps_the_signal(encode, decode):
    original = tone(440, 0.5, 8000)
    encoded = encode(original)
    assert len(encoded) == len(original) // 2
    decoded = decode(encoded)
    error = samples(decoded) - samples(original)
    # Companding keeps ~38 dB SNR on a sine this loud.
    assert 20 * np.log10(rms(original) / np.sqrt(np.mean(error**2))) > 30


def test_g711_matches_audioop_for_every_value():
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13; our code replaces it
    every_pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    every_code = bytes(range(256))
    assert audio.pcm16_to_ulaw(every_pcm) == audioop.lin2ulaw(every_pcm, 2)
    assert audio.pcm16_to_alaw(every_pcm) == audioop.lin2alaw(every_pcm, 2)
    assert audio.ulaw_to_pcm16(every_code) == audioop.ulaw2lin(every_code, 2)
    assert audio.alaw_to_pcm16(every_code) == audioop.alaw2lin(every_code, 2)


# --- VAD ------------------------------------------------------------------------------------


def speech_bounds_ms(pcm16: bytes) -> tuple[float, float]:
    """First and last sample louder than -36 dBFS, in ms: where the speech really is."""
    loud = np.nonzero(np.abs(samples(pcm16)) > 500)[0]
    return loud[0] * 1000 / PCM_RATE, loud[-1] * 1000 / PCM_RATE


def feed_all(detector: vad.VoiceActivityDetector, pcm16: bytes) -> list[vad.VadEvent]:
    return [event for chunk in in_chunks(pcm16, CHUNK_24K) for event in detector.feed(chunk)]


@pytest.mark.slow
@pytest.mark.parametrize(("lead_ms", "silence_ms"), [(1000, 500), (700, 300)])
def test_vad_finds_speech_between_silences(piper_speech, lead_ms, silence_ms):
    speech = piper_speech[SENTENCES[0]]
    lead = b"\x00\x00" * (PCM_RATE * lead_ms // 1000)
    stream = lead + speech + b"\x00\x00" * (PCM_RATE * 3 // 2)
    onset, offset = speech_bounds_ms(speech)
    detector = vad.VoiceActivityDetector(prefix_padding_ms=300, silence_duration_ms=silence_ms)

    events = feed_all(detector, stream)

    assert [event.kind for event in events] == ["speech_started", "speech_stopped"]
    frame = vad.FRAME_MS
    # Started: the onset minus the prefix padding, within the frame it falls in plus one.
    assert lead_ms + onset - 300 - frame <= events[0].audio_ms <= lead_ms + onset - 300 + 2 * frame
    # Stopped: where the silence began; Silero lets speech ring on for a frame or three.
    assert lead_ms + offset - frame <= events[1].audio_ms <= lead_ms + offset + 3 * frame
    assert not detector.speaking


@pytest.mark.slow
def test_vad_prefix_padding_never_goes_below_zero(piper_speech):
    detector = vad.VoiceActivityDetector(prefix_padding_ms=300)
    events = feed_all(detector, piper_speech[SENTENCES[1]] + b"\x00\x00" * PCM_RATE)
    assert events[0].kind == "speech_started"
    assert events[0].audio_ms == 0


@pytest.mark.slow
def test_vad_positions_restart_after_reset(piper_speech):
    detector = vad.VoiceActivityDetector()
    stream = b"\x00\x00" * PCM_RATE + piper_speech[SENTENCES[1]] + b"\x00\x00" * PCM_RATE
    first = feed_all(detector, stream)
    detector.reset()
    assert detector.processed_ms == 0
    assert feed_all(detector, stream) == first


@pytest.mark.slow
@pytest.mark.parametrize("noise_std", [0, 30, 300])
def test_vad_ignores_silence_and_low_noise(noise_std):
    # 300 is about -40 dBFS: a quiet room through a laptop microphone.
    rng = np.random.default_rng(7)
    noise = rng.normal(0, noise_std, PCM_RATE * 5).astype("<i2").tobytes()
    detector = vad.VoiceActivityDetector()
    assert feed_all(detector, noise) == []
    assert detector.processed_ms >= 4900


# --- TTS ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["piper", "espeak"])
def test_tts_speaks_24khz_audio_of_plausible_length(settings, backend):
    settings.LOCAL_TTS = backend
    synthesizer = tts.get_synthesizer()
    assert tts.get_synthesizer() is synthesizer  # loaded once per process
    text = "Please turn on the kitchen lights."
    for voice in {tts.local_voice_for(name) for name in tts.GA_VOICES}:
        pcm = synthesizer.synthesize(text, voice=voice)
        # 6 words: 1-4 s at anything from brisk to slow speech.
        assert 1000 <= pcm16_duration_ms(pcm, PCM_RATE) <= 4000, voice
        assert rms(pcm) > 1000, voice
    assert synthesizer.synthesize("  ", voice="marin") == b""


@pytest.mark.slow
def test_piper_serves_threads_at_once(settings):
    settings.LOCAL_TTS = "piper"
    synthesizer = tts.get_synthesizer()
    spoken: dict[str, bytes] = {}

    def speak(text: str) -> None:
        spoken[text] = synthesizer.synthesize(text, voice=tts.PIPER)

    texts = ["Good morning.", "See you later.", "Thank you.", "Yes, of course."]
    threads = [threading.Thread(target=speak, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(spoken) == set(texts)
    assert all(300 <= pcm16_duration_ms(pcm, PCM_RATE) <= 3000 for pcm in spoken.values())
    assert all(rms(pcm) > 1000 for pcm in spoken.values())


@pytest.mark.slow
def test_piper_reads_expressively_unless_asked_to_be_steady():
    text = "Please turn on the kitchen lights."
    expressive, steady = tts.make_piper(), tts.make_piper(expressive=False)
    # Piper's noise makes each reading differ a little, as a person's would ...
    assert expressive.synthesize(text, voice="piper") != expressive.synthesize(text, voice="piper")
    # ... and without it a sentence always sounds the same (what the speech tests rely on).
    assert steady.synthesize(text, voice="piper") == steady.synthesize(text, voice="piper")


@pytest.mark.slow
def test_piper_output_is_converted_from_its_model_rate(settings):
    settings.LOCAL_TTS = "piper"
    synthesizer = tts.get_synthesizer().piper
    assert synthesizer.sample_rate == 22050  # what joe's model card says
    # The conversion piper output goes through: a tone at the model's rate keeps its pitch
    # and length at 24 kHz (played unconverted, it would be 9% sharp and short).
    model_tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) * 0.5
    converted = tts.float_to_pcm24k(model_tone, synthesizer.sample_rate)
    assert len(converted) // 2 == PCM_RATE
    assert dominant_frequency(converted, PCM_RATE) == pytest.approx(440, abs=2)


def test_unknown_tts_backend_is_explained(settings):
    settings.LOCAL_TTS = "festival"
    with pytest.raises(ImproperlyConfigured, match="LOCAL_TTS"):
        tts.get_synthesizer()


def test_missing_custom_piper_voice_is_explained(settings, tmp_path):
    settings.LOCAL_TTS = "voicechat.local_engine.tts.make_piper"  # bypass the cache
    settings.LOCAL_PIPER_VOICE = str(tmp_path / "en_US-nobody-medium.onnx")
    with pytest.raises(ImproperlyConfigured, match=r"\.onnx\.json"):
        tts.get_synthesizer()


# --- sentences ------------------------------------------------------------------------------


def test_split_sentences_on_punctuation_and_lines():
    text = "Hello there! How are you?\nI'm fine. Thanks…  Bye"
    expected = ["Hello there!", "How are you?", "I'm fine.", "Thanks…", "Bye"]
    assert tts.split_sentences(text) == expected


def test_split_sentences_keeps_abbreviations_numbers_and_initials():
    text = "Dr. Smith paid $3.50 at 5 Main St. in town, e.g. for tea. J. R. R. Tolkien wrote it."
    assert tts.split_sentences(text) == [
        "Dr. Smith paid $3.50 at 5 Main St. in town, e.g. for tea.",
        "J. R. R. Tolkien wrote it.",
    ]
    assert tts.split_sentences("The U.S. team won. Great!") == ["The U.S. team won.", "Great!"]


def test_split_sentences_drops_markdown_and_blank_pieces():
    text = "## Plan\n- **Buy** milk.\n1. Call `mum`.\n\n   \n"
    assert tts.split_sentences(text) == ["Plan", "Buy milk.", "Call mum."]
    assert tts.split_sentences("") == []


def test_split_sentences_cuts_long_sentences_at_clauses():
    text = (
        "I think that, given everything we have discussed so far today, the best option would "
        "be to take the early train, because it is fast, cheap and comfortable."
    )
    pieces = tts.split_sentences(text)
    assert len(pieces) >= 2
    assert all(len(piece) <= tts.MAX_SENTENCE_CHARS for piece in pieces)
    assert " ".join(pieces) == text


def test_sentence_splitter_streams_like_split_sentences():
    text = "Sure! Dr. Jones opens at 9.30 tomorrow. Bring your card, and arrive early, please."
    splitter = tts.SentenceSplitter()
    streamed = []
    for start in range(0, len(text), 3):  # LLM-sized deltas
        streamed += splitter.feed(text[start : start + 3])
    assert streamed == ["Sure!", "Dr. Jones opens at 9.30 tomorrow."]
    streamed += splitter.flush()
    assert streamed == tts.split_sentences(text)
    assert splitter.flush() == []
