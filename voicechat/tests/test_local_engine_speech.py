"""The local engine end to end with real speech: its own TTS voice fed back as user audio.

Real VAD, recognizer and synthesizer (models ship in the PyPI wheels); answers by rules only
(LOCAL_LLM=none), so the replies are known. Audio is appended in 40 ms chunks as fast as the
engine takes it unless a test says otherwise; VAD positions are in audio time, so pace does
not change the events.
"""

import asyncio
import base64

import pytest

from voicechat.local_engine import speech
from voicechat.local_engine.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voicechat.tests.local_engine_client import EngineClient, reply_text, user_text
from voicechat.tests.speech import spoken, words

pytestmark = pytest.mark.slow

BYTES_PER_MS = 48


@pytest.fixture(autouse=True)
def _offline(settings):
    settings.LOCAL_LLM_URL = ""
    settings.LOCAL_LLM = "none"


def silence(ms: int) -> bytes:
    return b"\0" * (ms * BYTES_PER_MS)


async def speak(text: str) -> bytes:
    """The engine's own voice saying `text` (PCM16 24 kHz), the same audio on every run."""
    return await asyncio.to_thread(spoken, text)


def same_words(expected: str, transcript: str) -> bool:
    return words(expected) == words(transcript)


VOICE_SESSION = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "audio": {
            "input": {
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": {
                    "type": "server_vad",
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                },
            }
        },
    },
}


async def voice_turn(client: EngineClient, text: str) -> tuple[dict, dict, dict]:
    """Say `text`; returns (speech_stopped, transcription completed, response.done)."""
    pcm = await speak(text)
    await client.append_audio(silence(400) + pcm + silence(900))
    stopped = await client.wait("input_audio_buffer.speech_stopped")
    heard = await client.wait(
        "conversation.item.input_audio_transcription.completed",
        where=lambda e: e["item_id"] == stopped["item_id"],
    )
    done = await client.wait("response.done")
    return stopped, heard, done


async def test_a_turn_is_transcribed_while_spoken_and_ready_when_it_ends(monkeypatch):
    paused: list[int] = []  # how many events had been sent when the early final decode began
    decoding: list[int] = []  # ... and when each decode began (partial or final)
    pause, decode = speech.Transcriber.stream_pause, speech.Transcriber._decode

    def spy(transcriber: speech.Transcriber):
        if transcriber._utterance is not None and transcriber._utterance.final is None:
            paused.append(len(client.log.events))
        return pause(transcriber)

    def decode_spy(transcriber: speech.Transcriber, *args):
        decoding.append(len(client.log.events))
        return decode(transcriber, *args)

    monkeypatch.setattr(speech.Transcriber, "stream_pause", spy)
    monkeypatch.setattr(speech.Transcriber, "_decode", decode_spy)
    text = "My friend Maria lives in a small house near the river with her three dogs."
    async with EngineClient() as client:
        await client.send(VOICE_SESSION)
        # In real time, as a microphone sends it: partial decodes happen while it arrives.
        await client.append_audio(silence(300) + await speak(text) + silence(700), pace=0.04)
        stopped = await client.wait("input_audio_buffer.speech_stopped")
        completed = await client.wait("conversation.item.input_audio_transcription.completed")
        assert same_words(text, completed["transcript"]), completed["transcript"]
        events = client.log.events
        deltas = [
            e
            for e in events
            if e["type"] == "conversation.item.input_audio_transcription.delta"
            and e["item_id"] == stopped["item_id"]
        ]
        # Partial decodes while the user spoke (about one a second of speech: when they finish
        # depends on the machine's load), their deltas all before the final transcript, which
        # they add up to (OpenAI's deltas).
        assert deltas and decoding[0] < events.index(stopped)
        assert all(events.index(d) < events.index(completed) for d in deltas)
        assert "".join(d["delta"] for d in deltas) == completed["transcript"]
        # The final decode began in the pause, before the turn was declared over.
        assert paused and paused[-1] <= events.index(stopped)
        await client.wait("response.done")


def audio_ms_of(client: EngineClient, item_id: str) -> float:
    deltas = [e for e in client.log.of("response.output_audio.delta") if e["item_id"] == item_id]
    return sum(len(base64.b64decode(d["delta"])) for d in deltas) / BYTES_PER_MS


async def test_spoken_turns_are_transcribed_remembered_and_answered_with_audio():
    async with EngineClient() as client:
        await client.send(VOICE_SESSION)
        pcm = await speak("My name is Bob.")
        await client.append_audio(silence(400) + pcm + silence(900))
        started = await client.wait("input_audio_buffer.speech_started")
        stopped = await client.wait("input_audio_buffer.speech_stopped")
        speech_ms = len(pcm) / BYTES_PER_MS
        # Start includes the prefix padding; end includes the silence window (as OpenAI).
        assert 400 - 300 - 150 <= started["audio_start_ms"] <= 400 - 300 + 150
        assert 400 + speech_ms + 500 - 250 <= stopped["audio_end_ms"] <= 400 + speech_ms + 500 + 150
        assert stopped["item_id"] == started["item_id"]
        committed = await client.wait("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        assert committed["previous_item_id"] is None
        user_item = (await client.wait("conversation.item.added"))["item"]
        assert user_item["content"] == [{"type": "input_audio", "transcript": None}]
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert same_words("my name is bob", heard["transcript"]), heard["transcript"]
        assert heard["usage"]["type"] == "duration" and heard["usage"]["seconds"] > 0.5
        done = await client.wait("response.done")
        assert done["response"]["status"] == "completed"
        assert "Bob" in reply_text(done)
        item = done["response"]["output"][0]
        assert item["content"][0]["type"] == "output_audio"
        # Audio is streamed in ~150 ms deltas, and matches the transcript's sentences.
        deltas = [e for e in client.log.of("response.output_audio.delta")]
        assert len(deltas) > 3
        assert all(len(base64.b64decode(d["delta"])) <= 150 * BYTES_PER_MS for d in deltas)
        assert audio_ms_of(client, item["id"]) > 500
        assert done["response"]["usage"]["input_token_details"]["audio_tokens"] > 0
        assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0

        _, heard, done = await voice_turn(client, "What is my name?")
        assert same_words("what is my name", heard["transcript"]), heard["transcript"]
        assert "Your name is Bob" in reply_text(done)

        _, heard, done = await voice_turn(client, "What is twelve times seven?")
        assert same_words("what is twelve times seven", heard["transcript"]), heard["transcript"]
        assert "84" in reply_text(done)


async def test_barge_in_cancels_the_response_and_the_new_turn_is_answered():
    async with EngineClient() as client:
        await client.send(VOICE_SESSION)
        await client.send(user_text("Hello!"))
        await client.send({"type": "response.create"})  # a long introduction
        first_audio = await client.wait("response.output_audio.delta")
        interrupted_item = first_audio["item_id"]
        await client.append_audio(silence(200) + await speak("Thank you very much.") + silence(900))
        await client.wait("input_audio_buffer.speech_started")
        cancelled = await client.wait("response.done")
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        assert cancelled["response"]["output"][0]["status"] == "incomplete"
        # Nothing more of the interrupted item after its response.done.
        later = client.since(cancelled)
        assert not [e for e in later if e.get("item_id") == interrupted_item]
        answered = await client.wait("response.done")
        assert answered["response"]["status"] == "completed"
        assert "welcome" in reply_text(answered)

        # The client heard 300 ms of the interrupted reply: the transcript keeps what was heard.
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": interrupted_item,
                "content_index": 0,
                "audio_end_ms": 300,
            }
        )
        truncated = await client.wait("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 300


async def test_without_interrupt_response_the_reply_finishes_then_the_user_is_answered():
    async with EngineClient() as client:
        session = {**VOICE_SESSION["session"]}
        session["audio"] = {
            "input": {
                **session["audio"]["input"],
                "turn_detection": {
                    "type": "server_vad",
                    "silence_duration_ms": 500,
                    "interrupt_response": False,
                },
            }
        }
        await client.send({"type": "session.update", "session": session})
        await client.send(user_text("Hello!"))
        await client.send({"type": "response.create"})
        await client.wait("response.output_audio.delta")
        await client.append_audio(silence(200) + await speak("Thank you very much.") + silence(900))
        await client.wait("input_audio_buffer.speech_stopped")
        first = await client.wait("response.done")
        assert first["response"]["status"] == "completed"
        second = await client.wait("response.done")
        assert second["response"]["status"] == "completed"
        assert "welcome" in reply_text(second)


async def test_push_to_talk_commit_and_response_create():
    async with EngineClient() as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "turn_detection": None,
                            "transcription": {"model": "whisper-1", "language": "en"},
                        }
                    },
                },
            }
        )
        await client.append_audio(silence(300) + await speak("What time is it?") + silence(300))
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait("input_audio_buffer.committed")
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert heard["item_id"] == committed["item_id"]
        assert same_words("what time is it", heard["transcript"]), heard["transcript"]
        assert not client.log.of("input_audio_buffer.speech_started")
        assert not client.log.of("response.created")  # push-to-talk: only on request
        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        assert reply_text(done).startswith("It's")
        # A cleared buffer leaves nothing to commit.
        await client.append_audio(silence(500))
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait("input_audio_buffer.cleared")
        await client.send({"type": "input_audio_buffer.commit", "event_id": "c2"})
        error = await client.wait("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_response_cancel_and_truncate_keep_what_was_heard():
    async with EngineClient() as client:
        await client.send(user_text("Hello!"))
        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        item = done["response"]["output"][0]
        full = item["content"][0]["transcript"]
        total_ms = audio_ms_of(client, item["id"])
        assert len(full.split()) > 20 and total_ms > 4000
        half = int(total_ms / 2)
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": half,
            }
        )
        await client.wait("conversation.item.truncated")
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        kept = (await client.wait("conversation.item.retrieved"))["item"]["content"][0]
        heard = kept["transcript"]
        assert full.startswith(heard) and 0.25 * len(full) < len(heard) < 0.75 * len(full)
        assert len(base64.b64decode(kept["audio"])) == half * BYTES_PER_MS
        # Longer than the audio: refused.
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": half + 5000,
                "event_id": "t2",
            }
        )
        error = (await client.wait("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value",
            "audio_end_ms",
            "t2",
        )

        # response.cancel mid-response.
        await client.send(user_text("What can you do?"))
        await client.send({"type": "response.create"})
        await client.wait("response.output_audio.delta")
        await client.send({"type": "response.cancel"})
        cancelled = await client.wait("response.done")
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"


async def test_g711_mu_law_in_and_out():
    async with EngineClient() as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "turn_detection": None,
                            "transcription": {"model": "whisper-1", "language": "en"},
                        },
                        "output": {"format": {"type": "audio/pcmu"}},
                    },
                },
            }
        )
        pcm = silence(300) + await speak("What is three plus four?") + silence(300)
        from voicechat.local_engine.audio import resample_pcm16

        ulaw = pcm16_to_ulaw(resample_pcm16(pcm, 24000, 8000))
        for i in range(0, len(ulaw), 320):  # 40 ms at 8 kHz
            await client.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(ulaw[i : i + 320]).decode(),
                }
            )
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait("input_audio_buffer.committed")
        # Telephone-band audio is decoded and upsampled to the engine's 24 kHz timeline, where
        # Whisper hears it as well as wideband speech.
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        assert heard["item_id"] == committed["item_id"]
        assert same_words("what is three plus four", heard["transcript"]), heard["transcript"]
        await client.send({"type": "response.create"})
        done = await client.wait("response.done")
        assert "7" in reply_text(done)
        await client.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
        user_audio = (await client.wait("conversation.item.retrieved"))["item"]["content"][0]
        assert abs(len(base64.b64decode(user_audio["audio"])) - len(pcm)) < 100 * BYTES_PER_MS
        assert reply_text(done)
        assert done["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        out = b"".join(
            base64.b64decode(e["delta"]) for e in client.log.of("response.output_audio.delta")
        )
        assert len(out) > 8000 * 0.5  # more than half a second at 8 kHz, one byte per sample
        decoded = ulaw_to_pcm16(out)
        assert (
            max(
                abs(int.from_bytes(decoded[i : i + 2], "little", signed=True))
                for i in range(0, len(decoded), 200)
            )
            > 1000
        )  # not silence
