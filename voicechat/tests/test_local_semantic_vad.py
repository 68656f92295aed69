"""semantic_vad in the offline engine: a turn ends when the user has finished, not after a window.

The real turn model (Smart-Turn v3.2) judges the engine's own voice reading each sentence (the
same audio on every run). Every assertion is about positions in the audio reported by events
(speech_stopped's audio_end_ms), never about wall-clock time: audio is appended as fast as the
engine takes it, and the engine judges each pause at a fixed point of the audio.
"""

from dataclasses import replace

import pytest

from voicechat.local_engine import semantic_vad, turn
from voicechat.local_engine.model_files import ModelUnavailable
from voicechat.tests.local_engine_client import EngineClient
from voicechat.tests.test_local_engine_speech import BYTES_PER_MS, silence, speak

LEAD_MS = 400  # silence before the speech


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.LOCAL_LLM_URL = ""
    settings.LOCAL_LLM = "none"


def session_with(turn_detection: dict | None) -> dict:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],  # the turns are what matter, not the voice
            "audio": {"input": {"turn_detection": turn_detection}},
        },
    }


def semantic(eagerness: str) -> dict:
    return {"type": "semantic_vad", "eagerness": eagerness}


SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 500}


async def turns_in(client: EngineClient, pcm: bytes, *, expected: int) -> list[dict]:
    """Append `pcm`; the speech_stopped events of the `expected` turns it makes, and no more."""
    await client.append_audio(pcm)
    stopped = [await client.wait("input_audio_buffer.speech_stopped") for _ in range(expected)]
    await client.settle(0.3)
    assert len(client.log.of("input_audio_buffer.speech_stopped")) == expected
    return stopped


def speech_end_ms(pcm: bytes) -> float:
    """Where the last voiced sample of a reading is, in ms from its start (piper trails ~0)."""
    samples = memoryview(pcm).cast("h")
    last = max(i for i in range(len(samples)) if abs(samples[i]) > 300)
    return last / (BYTES_PER_MS / 2)


async def test_semantic_vad_is_the_default_and_reported_with_openai_fields():
    async with EngineClient() as client:
        created = await client.wait("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        await client.send(
            session_with({"type": "semantic_vad", "eagerness": "low", "interrupt_response": False})
        )
        updated = await client.wait("session.updated")  # validated against the SDK's types
        assert updated["session"]["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": "low",
            "create_response": True,
            "interrupt_response": False,
        }


async def test_an_unknown_eagerness_is_refused():
    async with EngineClient() as client:
        await client.send(session_with(semantic("eager")))
        error = await client.wait("error")
        # Refused by the SDK's types already (eagerness is a Literal), before config.py's check.
        assert error["error"]["param"].startswith("session.audio.input.turn_detection")


async def test_server_vad_by_setting(settings):
    settings.LOCAL_TURN_DETECTION = "server_vad"
    async with EngineClient() as client:
        created = await client.wait("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_semantic_vad_is_refused_when_its_model_is_missing(settings, monkeypatch):
    settings.LOCAL_TURN_DETECTION = "server_vad"
    settings.LOCAL_TURN_MODEL_PATH = "/nonexistent/smart-turn.onnx"
    async with EngineClient() as client:
        await client.send(session_with(semantic("high")))
        error = await client.wait("error")
        assert error["error"]["param"] == "session.audio.input.turn_detection.type"
        assert "LOCAL_TURN_MODEL_PATH" in error["error"]["message"]


def test_a_corrupt_turn_model_stops_the_server_at_start_up(settings, monkeypatch, tmp_path):
    from voicechat import checks

    monkeypatch.setattr(checks, "_offline_engine_in_use", lambda: True)
    settings.LOCAL_LLM = "none"
    wrong = replace(turn.SMART_TURN_V3_2.files[0], sha256="0" * 64)
    monkeypatch.setattr(turn, "SMART_TURN_V3_2", replace(turn.SMART_TURN_V3_2, files=(wrong,)))
    errors = [e for e in checks.offline_models() if e.id == "voicechat.E103"]
    assert len(errors) == 1 and "Refusing to load it" in errors[0].msg
    settings.LOCAL_TURN_DETECTION = "server_vad"  # nothing needs the turn model then
    assert not [e for e in checks.offline_models() if e.id == "voicechat.E103"]


def test_the_certainty_a_pause_needs_falls_to_nothing_at_the_eagerness_maximum():
    judge = semantic_vad.PauseJudge(max_wait_ms=4000, eagerness="medium")
    assert judge.required(semantic_vad.DECIDE_AT_MS) == semantic_vad.THRESHOLD
    assert judge.required(2000) < semantic_vad.THRESHOLD
    assert judge.required(4000) == 0


def test_a_lower_eagerness_needs_more_certainty():
    needed = {
        eagerness: semantic_vad.PauseJudge(max_wait_ms=4000, eagerness=eagerness).required(
            semantic_vad.DECIDE_AT_MS
        )
        for eagerness in ("low", "medium", "high")
    }
    assert needed["low"] > needed["medium"] > needed["high"] > 0.5


@pytest.mark.slow
async def test_a_finished_question_ends_its_turn_soon_after_the_speech():
    pcm = await speak("What is the capital of France?")
    async with EngineClient() as client:
        await client.send(session_with(semantic("medium")))
        (stopped,) = await turns_in(client, silence(LEAD_MS) + pcm + silence(5000), expected=1)
    end_of_speech = LEAD_MS + speech_end_ms(pcm)
    # Within ~0.3 s of the last voiced sample, where the maximum would be 4 s and server_vad 0.5 s.
    assert stopped["audio_end_ms"] - end_of_speech < 450, (stopped, end_of_speech)


@pytest.mark.slow
async def test_a_mid_sentence_pause_is_one_turn_under_semantic_vad_and_two_under_server_vad():
    first = await speak("I would like to order a pizza with")
    second = await speak("mushrooms, please.")
    audio = silence(LEAD_MS) + first + silence(1500) + second + silence(5000)
    async with EngineClient() as client:
        await client.send(session_with(semantic("medium")))
        (stopped,) = await turns_in(client, audio, expected=1)
        end_of_speech = LEAD_MS + (len(first) + len(second)) / BYTES_PER_MS + 1500
        assert stopped["audio_end_ms"] > end_of_speech - 1000  # after "mushrooms, please."
    async with EngineClient() as client:
        await client.send(session_with(SERVER_VAD))
        await turns_in(client, audio, expected=2)


@pytest.mark.slow
async def test_eagerness_high_gives_up_on_an_unfinished_sentence_within_two_seconds():
    pcm = await speak("I would like to order a pizza with")
    async with EngineClient() as client:
        await client.send(session_with(semantic("high")))
        (stopped,) = await turns_in(client, silence(LEAD_MS) + pcm + silence(3000), expected=1)
    waited = stopped["audio_end_ms"] - (LEAD_MS + speech_end_ms(pcm))
    assert 500 < waited <= 2000 + 100, waited  # longer than server_vad, within the maximum


@pytest.mark.slow
async def test_eagerness_low_waits_longer_than_high_for_an_unfinished_sentence():
    pcm = await speak("Can you tell me a joke about")
    waited = {}
    for eagerness in ("low", "high"):
        async with EngineClient() as client:
            await client.send(session_with(semantic(eagerness)))
            audio = silence(LEAD_MS) + pcm + silence(9000)
            (stopped,) = await turns_in(client, audio, expected=1)
        waited[eagerness] = stopped["audio_end_ms"] - (LEAD_MS + speech_end_ms(pcm))
    assert waited["low"] > waited["high"] + 1000, waited


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("What is the capital of France?", True),
        ("I would like to order a pizza with mushrooms, please.", True),
        ("My name is Ada.", True),
        ("I would like to order a pizza with", False),
        ("My name is", False),
        ("Can you tell me a joke about", False),
    ],
)
def test_the_turn_model_tells_finished_sentences_from_unfinished_ones(text, complete):
    from voicechat.tests.speech import spoken

    probability = turn.get_turn_model().probability_complete(spoken(text))
    assert (probability > semantic_vad.THRESHOLD) is complete, probability


def test_a_missing_turn_model_names_what_to_install(settings, monkeypatch):
    settings.LOCAL_TURN_MODEL_PATH = ""
    missing = replace(turn.SMART_TURN_V3_2.files[0], parts=("not_a_package_here/model.onnx",))
    monkeypatch.setattr(turn, "SMART_TURN_V3_2", replace(turn.SMART_TURN_V3_2, files=(missing,)))
    with pytest.raises(ModelUnavailable, match="pipecat-ai==1.14.0"):
        turn.model_path()
