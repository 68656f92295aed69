"""Push-to-talk with the offline engine: the transcript is ready when the button is released.

With turn_detection null the engine still follows the speech, silently: it sends no VAD events
(OpenAI sends none without turn detection) but starts the final transcription in the pause
before the release, and the commit uses that decode if nothing was said after it.

A loudness VAD (any sound is speech) and a scripted recognizer (one word per 250 ms of audio)
stand in for Silero and Whisper, so the tests are about the engine's decisions, and fast.
"""

import asyncio

import numpy as np
import pytest

from voicechat.local_engine import speech, vad
from voicechat.tests.local_engine_client import EngineClient
from voicechat.tests.test_local_transcription import WORDS, ScriptedRecognizer

BYTES_PER_MS = 48


class LoudnessVAD(vad.VoiceActivityDetector):
    """Silero's decisions (hysteresis, silence windows) on a simpler judgement: sound or not."""

    def _probability(self, frame: bytes) -> float:
        return 1.0 if np.abs(np.frombuffer(frame, dtype="<i2")).max() > 100 else 0.0


@pytest.fixture(autouse=True)
def _scripted_speech(monkeypatch, settings, recognizer):
    settings.LOCAL_LLM_URL = ""
    settings.LOCAL_LLM = "none"
    monkeypatch.setattr(vad, "VoiceActivityDetector", LoudnessVAD)
    # No loading of the real models in the background (it would ask the scripted recognizer).
    monkeypatch.setattr(speech, "warm_up", lambda: None)


@pytest.fixture
def recognizer(monkeypatch) -> ScriptedRecognizer:
    from voicechat.local_engine import stt

    scripted = ScriptedRecognizer()
    monkeypatch.setattr(stt, "get_recognizer", lambda language: scripted)
    return scripted


def voice(ms: int) -> bytes:
    return np.full(ms * BYTES_PER_MS // 2, 3000, dtype="<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\0" * (ms * BYTES_PER_MS)


def words_in(seconds: float) -> str:
    return " ".join(WORDS[: int(seconds * 4)])


PUSH_TO_TALK = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {
            "input": {
                "turn_detection": None,
                "transcription": {"model": "whisper-1", "language": "en"},
            }
        },
    },
}


async def push_to_talk(client: EngineClient) -> None:
    await client.send(PUSH_TO_TALK)
    await client.wait("session.updated")


async def started(recognizer: ScriptedRecognizer, decodes: int) -> None:
    """Until the recognizer has been asked `decodes` times (it runs in a worker thread)."""
    async with asyncio.timeout(30):
        while len(recognizer.calls) < decodes:
            await asyncio.sleep(0.01)


async def test_the_decode_begun_in_the_pause_before_the_release_is_the_transcript(recognizer):
    async with EngineClient() as client:
        await push_to_talk(client)
        recognizer.hold.clear()  # the decode is still running when the button is released
        await client.append_audio(silence(200) + voice(1500) + silence(400))
        await started(recognizer, 1)  # in the pause, before any commit
        (early_seconds, _prefix) = recognizer.calls[0]
        assert early_seconds < 2.0  # the speech and the start of the pause, not all 2.1 s

        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait("input_audio_buffer.committed")
        recognizer.hold.set()
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert heard["item_id"] == committed["item_id"]
        assert heard["transcript"] == words_in(early_seconds)
        assert len(recognizer.calls) == 1  # the early decode was used, not a second one
        # Not streamed as partials before the commit: the whole text is one delta, after it.
        deltas = client.log.of("conversation.item.input_audio_transcription.delta")
        assert [d["delta"] for d in deltas] == [heard["transcript"]]
        assert client.log.events.index(deltas[0]) > client.log.events.index(committed)
        # No turn detection: no VAD events, and no response until the client asks.
        assert not client.log.of("input_audio_buffer.speech_started")
        assert not client.log.of("input_audio_buffer.speech_stopped")
        assert not client.log.of("response.created")

        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        assert done["response"]["status"] == "completed"


async def test_speech_after_the_pause_means_the_whole_buffer_is_decoded(recognizer):
    async with EngineClient() as client:
        await push_to_talk(client)
        await client.append_audio(silence(200) + voice(1000) + silence(400))
        await started(recognizer, 1)
        await client.append_audio(voice(1000))  # the user goes on, and releases mid-word
        await client.send({"type": "input_audio_buffer.commit"})
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert len(recognizer.calls) == 2
        assert round(recognizer.calls[1][0], 2) == 2.6  # everything the button was held for
        assert heard["transcript"] == words_in(2.6)
        assert not client.log.of("input_audio_buffer.speech_started")


async def test_a_pause_after_the_new_speech_starts_a_new_early_decode(recognizer):
    async with EngineClient() as client:
        await push_to_talk(client)
        await client.append_audio(silence(200) + voice(1000) + silence(400))
        await started(recognizer, 1)
        await client.append_audio(voice(1000) + silence(300))
        await started(recognizer, 2)  # the second pause: all the speech so far
        await client.send({"type": "input_audio_buffer.commit"})
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert len(recognizer.calls) == 2
        assert recognizer.calls[1][0] > 2.2  # both stretches of speech
        assert heard["transcript"] == words_in(recognizer.calls[1][0])


async def test_a_cleared_buffer_forgets_the_early_decode(recognizer):
    async with EngineClient() as client:
        await push_to_talk(client)
        await client.append_audio(voice(1000) + silence(400))
        await started(recognizer, 1)
        # The page clears the buffer at each press: the next turn starts from nothing.
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait("input_audio_buffer.cleared")
        await client.append_audio(voice(500))
        await client.send({"type": "input_audio_buffer.commit"})
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert len(recognizer.calls) == 2
        assert heard["transcript"] == words_in(0.5)
