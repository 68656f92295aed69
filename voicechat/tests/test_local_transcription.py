"""How the local engine transcribes a turn while it is spoken: partial transcripts as deltas that
add up to the final one, and the final decode started as soon as the user pauses.

A scripted recognizer stands in for Whisper (one word per 250 ms of audio), so these tests are
about the Transcriber's decisions, not about hearing; test_local_stt.py tests the hearing.
"""

import asyncio
import threading

import pytest

from voicechat.local_engine import speech, stt

BYTES_PER_SECOND = 48000
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen".split()


class ScriptedRecognizer:
    """Hears one word per 250 ms of audio; `hold` keeps every decode running until set."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []  # (seconds of audio, prefix)
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()  # a decode has reached the recognizer

    def transcribe(self, pcm16_24k: bytes, *, language: str, prefix: str = "") -> str:
        self.calls.append((len(pcm16_24k) / BYTES_PER_SECOND, prefix))
        self.entered.set()
        self.hold.wait(10)
        return " ".join(WORDS[: int(len(pcm16_24k) / BYTES_PER_SECOND * 4)])


@pytest.fixture
def recognizer(monkeypatch) -> ScriptedRecognizer:
    scripted = ScriptedRecognizer()
    monkeypatch.setattr(stt, "get_recognizer", lambda language: scripted)
    return scripted


@pytest.fixture
async def transcriber():
    transcriber = speech.Transcriber()
    yield transcriber
    await transcriber.close()


def audio(seconds: float) -> bytes:
    return b"\1\0" * int(seconds * BYTES_PER_SECOND / 2)


async def speak(transcriber: speech.Transcriber, seconds: float) -> None:
    """Feed `seconds` of audio in 40 ms appends, letting each decode it starts finish."""
    for _ in range(round(seconds / 0.04)):
        transcriber.stream_feed(audio(0.04))
        await idle(transcriber)


async def idle(transcriber: speech.Transcriber) -> None:
    while transcriber._tasks:
        await asyncio.wait(transcriber._tasks)
    await asyncio.sleep(0)  # let the done-callbacks run


async def test_partial_deltas_add_up_to_the_final_transcript(recognizer, transcriber):
    deltas: list[str] = []
    transcriber.stream_start("en", deltas.append)
    await speak(transcriber, 3.0)
    # A decode after each second of speech; two decodes agree on all but the older's last word.
    assert [round(seconds, 2) for seconds, _ in recognizer.calls] == [1.0, 2.0, 3.0]
    assert deltas == ["one two three", " four five six seven"]
    assert recognizer.calls[2][1] == "one two three"  # each decode continues what was sent

    final = await transcriber.stream_finish()
    assert final == " ".join(WORDS[:12])
    assert "".join(deltas) == final
    assert deltas[-1] == " eight nine ten eleven twelve"


async def test_a_partial_never_waits_for_another_decode(recognizer, transcriber):
    other = speech.Transcriber()  # another conversation, whose final decode is running
    recognizer.hold.clear()
    running = other.transcribe(audio(2.0), "en")
    try:
        # The decode runs in a worker thread: wait until it holds the model.
        assert await asyncio.to_thread(recognizer.entered.wait, 10)
        transcriber.stream_start("en", lambda delta: None)
        for _ in range(50):  # 2 s of speech while the other decode runs
            transcriber.stream_feed(audio(0.04))
            await asyncio.sleep(0)
        assert len(recognizer.calls) == 1  # only the other conversation's decode
    finally:
        recognizer.hold.set()
        await running
        await other.close()
    await speak(transcriber, 0.04)  # the model is free again: the partial is due at once
    assert [round(seconds, 2) for seconds, _ in recognizer.calls] == [2.0, 2.04]


async def test_the_final_decode_starts_at_the_pause_and_is_used_when_the_turn_ends(
    recognizer, transcriber
):
    transcriber.stream_start("en", None)  # no listener: no partial decodes
    await speak(transcriber, 2.0)
    assert recognizer.calls == []
    transcriber.stream_pause()
    transcriber.stream_pause()  # the pause goes on: still one decode
    await speak(transcriber, 0.5)  # the silence window
    assert [round(seconds, 2) for seconds, _ in recognizer.calls] == [2.0]
    assert await transcriber.stream_finish() == " ".join(WORDS[:8])
    assert len(recognizer.calls) == 1  # the early decode was the final one


async def test_the_early_decode_stands_until_the_user_speaks_again(recognizer, transcriber):
    transcriber.stream_start("en", None)  # push-to-talk: no partials
    await speak(transcriber, 1.0)
    assert not transcriber.stream_settled()  # no pause yet: a commit decodes all of it
    transcriber.stream_pause()
    assert transcriber.stream_settled()  # a commit now uses the decode begun in the pause
    transcriber.stream_resume()
    assert not transcriber.stream_settled()
    assert not transcriber.stream_sends_deltas()
    transcriber.stream_start("en", lambda delta: None)
    assert transcriber.stream_sends_deltas()


async def test_speech_after_the_pause_discards_the_early_decode(recognizer, transcriber):
    deltas: list[str] = []
    transcriber.stream_start("en", deltas.append)
    await speak(transcriber, 1.2)
    recognizer.hold.clear()
    transcriber.stream_pause()  # a pause between clauses ...
    await speak_without_waiting(transcriber, 1.0)  # ... and the user goes on
    transcriber.stream_resume()
    recognizer.hold.set()
    await idle(transcriber)
    await speak(transcriber, 0.8)
    final = await transcriber.stream_finish()
    assert final == " ".join(WORDS[:12])  # all 3 s, not the 1.2 s the early decode heard
    assert "".join(deltas) == final
    assert round(recognizer.calls[-1][0], 2) == 3.0


async def speak_without_waiting(transcriber: speech.Transcriber, seconds: float) -> None:
    for _ in range(round(seconds / 0.04)):
        transcriber.stream_feed(audio(0.04))
        await asyncio.sleep(0)


async def test_a_failed_decode_fails_the_turn(recognizer, transcriber, monkeypatch):
    def broken(pcm16_24k: bytes, *, language: str, prefix: str = "") -> str:
        raise RuntimeError("no model")

    monkeypatch.setattr(recognizer, "transcribe", broken)
    transcriber.stream_start("en", None)
    await speak(transcriber, 0.5)
    with pytest.raises(RuntimeError, match="no model"):
        await transcriber.stream_finish()


async def test_a_cancelled_turn_sends_nothing_more(recognizer, transcriber):
    deltas: list[str] = []
    transcriber.stream_start("en", deltas.append)
    recognizer.hold.clear()
    await speak_without_waiting(transcriber, 1.0)  # a partial decode is running ...
    transcriber.stream_cancel()  # ... when the buffer is cleared
    recognizer.hold.set()
    await idle(transcriber)
    assert deltas == []
    assert await transcriber.stream_finish() == ""


# --- the text rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "sent", "agreed"),
    [
        ("", "What is", "", ""),  # nothing to compare with yet
        ("What is 12", "What is 12 times", "", "What is"),  # "12" was at the edge of the audio
        ("What is 12 times", "What is 12 times 7?", "What is", "What is 12"),
        ("What is 12 times", "What is 20 times", "What is", "What is"),  # changed its mind
        ("Hello, how are", "Hello, how are you?", "Hello", "Hello, how"),  # spelt as decoded
        ("My name", "My name is Ada.", "My name", "My name"),
    ],
)
def test_agreed_prefix(previous, current, sent, agreed):
    assert stt.agreed_prefix(previous, current, sent=sent) == agreed


def test_a_transcript_always_continues_what_was_sent():
    assert stt.continued("What is", "What is 12 times 7?") == "What is 12 times 7?"
    # A recognizer that dropped the prefix: the sent words stay, the rest follows.
    assert stt.continued("What is", "12 times 7?") == "What is 12 times 7?"
    assert stt.continued("", "Hello.") == "Hello."
    assert stt.continued("What is", "") == "What is"
