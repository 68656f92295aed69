"""The offline engine starts thinking during the user's pause, and leaves no trace if it was wrong.

While the user is silent but the turn has not ended (server_vad's silence window, semantic_vad
waiting on an unfinished verdict), the engine already has the early transcript and asks the
responder; the reply is held back and used if the turn ends as it stood. If the user speaks
again, it is dropped: no item, no audio, no usage, and the generation stops.

The loudness VAD and scripted recognizer of test_local_engine_push_to_talk stand in for Silero
and Whisper; the rule-based responder answers ("I heard: <transcript>. ..."), watched.
"""

import asyncio

import pytest

from voicechat.local_engine import LocalUpstream
from voicechat.local_engine.offline import OfflineResponder
from voicechat.local_engine.responder import TextDelta, Turn
from voicechat.tests.local_engine_client import EngineClient, reply_text, user_text
from voicechat.tests.test_local_engine_push_to_talk import (  # noqa: F401 - fixtures
    PUSH_TO_TALK,
    _scripted_speech,
    recognizer,
    silence,
    voice,
)

SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 500}


@pytest.fixture(autouse=True)
def _server_vad_by_default(settings):
    # Each test sets its turn detection; the default would load the real turn model first.
    settings.LOCAL_TURN_DETECTION = "server_vad"


def hands_free(turn_detection: dict) -> dict:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {
                "input": {
                    "turn_detection": turn_detection,
                    "transcription": {"model": "whisper-1", "language": "en"},
                }
            },
        },
    }


class Watched:
    """A responder (the rule-based one unless given), and every reply it was asked for."""

    def __init__(self, inner=None) -> None:
        self.inner = inner or OfflineResponder()
        self.asked: list[Turn] = []
        self.stopped = 0  # replies whose generation ended, written out or cut off

    async def respond(self, turn: Turn):
        self.asked.append(turn)
        try:
            async for out in self.inner.respond(turn):
                yield out
        finally:
            self.stopped += 1


class Endless:
    """A responder that writes a word every 10 ms until it is stopped."""

    def __init__(self) -> None:
        self.words = 0

    async def respond(self, turn: Turn):
        while True:
            await asyncio.sleep(0.01)
            self.words += 1
            yield TextDelta(" word")


async def until(condition, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def client_with(responder) -> EngineClient:
    return EngineClient(LocalUpstream(model="gpt-realtime", responder=responder))


def stats(client: EngineClient):
    return client.upstream._session.speculation_stats


def last_user_text(turn: Turn) -> str:
    return [h["text"] for h in turn.history if h.get("role") == "user"][-1]


async def test_the_reply_begun_in_the_pause_is_the_response_when_the_turn_ends():
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: watched.asked)  # thinking, 200 ms into the 500 ms window
        assert not client.log.of("input_audio_buffer.speech_stopped")
        assert not client.log.of("response.created")

        await client.append_audio(silence(700))
        await client.wait("input_audio_buffer.speech_stopped")
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        done = await client.wait("response.done")
        assert done["response"]["status"] == "completed"
        assert len(watched.asked) == 1  # not asked again at the end of the turn
        assert last_user_text(watched.asked[0]) == heard["transcript"]
        assert reply_text(done).startswith(f"I heard: {heard['transcript']}.")
        assert (stats(client).started, stats(client).used, stats(client).thrown_away) == (1, 1, 0)


async def test_speech_after_the_pause_throws_the_reply_away_without_a_trace():
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: watched.asked)
        first_guess = last_user_text(watched.asked[0])

        await client.append_audio(voice(1000) + silence(700))  # ... and the user goes on
        await client.wait("input_audio_buffer.speech_stopped")
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        done = await client.wait("response.done")
        await client.settle(0.2)
        assert len(heard["transcript"]) > len(first_guess)
        assert last_user_text(watched.asked[-1]) == heard["transcript"]
        assert reply_text(done).startswith(f"I heard: {heard['transcript']}.")
        # Of the first guess nothing shows: one response, one reply item, one usage.
        assert len(client.log.of("response.created")) == 1
        assert len(client.log.of("response.done")) == 1
        added = client.log.of("conversation.item.added")
        assert [a["item"]["role"] for a in added] == ["user", "assistant"]
        deltas = "".join(d["delta"] for d in client.log.of("response.output_text.delta"))
        assert deltas == reply_text(done)
        assert stats(client).thrown_away == 1
        assert stats(client).used == 1  # the second pause's reply, which the turn ended with


async def test_a_thrown_away_generation_stops():
    endless = Watched(Endless())
    async with client_with(endless) as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: endless.inner.words > 3)  # writing, into the held reply
        await client.append_audio(voice(200))  # the user goes on
        await until(lambda: endless.stopped == 1)  # its stream was closed
        words = endless.inner.words
        await asyncio.sleep(0.1)
        assert endless.inner.words == words
        assert stats(client).thrown_away == 1
        assert not client.log.of("response.created")
        assert not client.log.of("response.output_text.delta")


async def test_a_response_cancelled_before_it_asked_for_the_reply_stops_it():
    from voicechat.local_engine import stt

    watched = Watched()
    scripted = stt.get_recognizer("en")
    async with client_with(watched) as client:
        await client.send(hands_free(SERVER_VAD))
        scripted.hold.clear()  # the transcript both the reply and the response wait for
        await client.append_audio(silence(200) + voice(1000) + silence(700))
        await client.wait("response.created")
        await client.send({"type": "response.cancel"})
        await client.wait("response.done")
        scripted.hold.set()
        await client.wait("conversation.item.input_audio_transcription.completed")
        await client.settle(0.2)
        assert watched.asked == []  # the reply begun in the pause never started writing
        assert (stats(client).used, stats(client).thrown_away) == (0, 1)


async def test_a_reply_to_a_conversation_that_changed_meanwhile_is_not_used():
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: watched.asked)
        await client.send(user_text("My name is Ada."))  # typed during the pause
        await client.append_audio(silence(700))
        await client.wait("response.done")
        assert len(watched.asked) == 2  # asked again, with the typed message in the history
        assert any(h.get("text") == "My name is Ada." for h in watched.asked[1].history)
        assert (stats(client).used, stats(client).thrown_away) == (0, 1)


async def test_without_speculative_replies_the_responder_waits_for_the_end_of_the_turn(
    settings,
):
    settings.LOCAL_SPECULATIVE_REPLIES = False
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(900))
        await client.wait("response.done")
        assert len(watched.asked) == 1
        assert stats(client).started == 0


class UnsureTurnModel:
    """A turn model that never thinks the user has finished: semantic_vad waits its maximum."""

    def probability_complete(self, pcm16_24k: bytes) -> float:
        return 0.05


async def test_semantic_vad_thinks_while_it_waits_for_the_user_to_go_on(settings):
    settings.LOCAL_TURN_MODEL = f"{__name__}.UnsureTurnModel"
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(hands_free({"type": "semantic_vad", "eagerness": "high"}))  # 2 s
        await client.append_audio(silence(200) + voice(1000) + silence(1000))
        await until(lambda: watched.asked)
        assert not client.log.of("input_audio_buffer.speech_stopped")
        await client.append_audio(silence(1500))
        await client.wait("input_audio_buffer.speech_stopped")
        await client.wait("response.done")
        assert len(watched.asked) == 1
        assert (stats(client).used, stats(client).thrown_away) == (1, 0)


@pytest.mark.slow
async def test_the_embedded_model_stops_writing_a_reply_that_is_thrown_away(settings, monkeypatch):
    from voicechat.local_engine import llm, stt

    settings.LOCAL_LLM = "embedded"  # the real model, asked for a long answer
    story = "Tell me a long story about a dragon and a lighthouse."
    scripted = stt.get_recognizer("en")
    monkeypatch.setattr(scripted, "transcribe", lambda pcm, *, language, prefix="": story)
    model = await asyncio.to_thread(llm.shared)
    written = model.stats.tokens
    async with EngineClient() as client:
        await client.send(hands_free(SERVER_VAD))
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: model.stats.tokens > written, timeout=120)  # writing, held back
        stopped = model.stats.tokens_after_cancel
        await client.append_audio(voice(200))  # the user goes on
        await asyncio.sleep(1.0)  # a model still running would write ~20 tokens meanwhile
        tokens = model.stats.tokens
        await asyncio.sleep(1.0)
        assert model.stats.tokens == tokens
        assert model.stats.tokens_after_cancel - stopped <= 1
        assert stats(client).thrown_away == 1
        assert not client.log.of("response.created")


async def test_push_to_talk_answers_with_the_reply_begun_before_the_release():
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(PUSH_TO_TALK)
        await client.append_audio(silence(200) + voice(1000) + silence(300))
        await until(lambda: watched.asked)  # the button is still held
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "response.create"})
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        done = await client.wait("response.done")
        assert reply_text(done).startswith(f"I heard: {heard['transcript']}.")
        assert len(watched.asked) == 1
        assert (stats(client).used, stats(client).thrown_away) == (1, 0)


async def test_push_to_talk_drops_the_reply_when_the_press_is_cleared():
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(PUSH_TO_TALK)
        await client.append_audio(silence(200) + voice(1000) + silence(300))
        await until(lambda: watched.asked)
        await client.send({"type": "input_audio_buffer.clear"})  # a tap, or a new press
        await client.wait("input_audio_buffer.cleared")
        assert stats(client).thrown_away == 1
        assert not client.log.of("response.created")


class SureTurnModel:
    """A turn model sure the user has finished at every pause: semantic_vad ends it at once."""

    def probability_complete(self, pcm16_24k: bytes) -> float:
        return 0.99


class Gated:
    """The rule-based responder, held back until `gate` is set: a reply that is slow to come."""

    def __init__(self) -> None:
        self.inner = OfflineResponder()
        self.gate = asyncio.Event()

    async def respond(self, turn: Turn):
        await self.gate.wait()
        async for out in self.inner.respond(turn):
            yield out


def held_end(client: EngineClient):
    return client.upstream._session._held_end


async def test_semantic_vad_ends_a_finished_turn_when_its_reply_is_ready(settings):
    settings.LOCAL_TURN_MODEL = f"{__name__}.SureTurnModel"
    gated = Watched(Gated())
    async with client_with(gated) as client:
        await client.send(hands_free({"type": "semantic_vad", "eagerness": "medium"}))
        await client.append_audio(silence(200) + voice(1000) + silence(2000))
        await until(lambda: held_end(client) is not None)  # judged finished, reply not ready
        assert not client.log.of("input_audio_buffer.speech_stopped")
        gated.inner.gate.set()
        stopped = await client.wait("input_audio_buffer.speech_stopped")
        # Where it was judged finished (the model's second answer, ~192 ms into the pause),
        # not where the audio had got to when the reply was ready.
        assert 1200 < stopped["audio_end_ms"] < 1200 + 400, stopped
        done = await client.wait("response.done")
        assert done["response"]["status"] == "completed"
        assert len(gated.asked) == 1
        assert (stats(client).used, stats(client).thrown_away) == (1, 0)


async def test_semantic_vad_keeps_the_turn_when_the_user_goes_on_before_the_reply_is_ready(
    settings,
):
    settings.LOCAL_TURN_MODEL = f"{__name__}.SureTurnModel"
    gated = Watched(Gated())
    async with client_with(gated) as client:
        await client.send(hands_free({"type": "semantic_vad", "eagerness": "medium"}))
        await client.append_audio(silence(200) + voice(1000) + silence(400))
        # "Finished", as far as the model knows; and the reply to it begun (the transcript the
        # reply starts from can come a moment after the turn is held).
        await until(lambda: held_end(client) is not None and gated.asked)
        first_guess = last_user_text(gated.asked[0])

        await client.append_audio(voice(1000) + silence(600))  # ... but the user goes on
        await until(lambda: stats(client).thrown_away == 1)
        gated.inner.gate.set()
        heard = await client.wait("conversation.item.input_audio_transcription.completed")
        done = await client.wait("response.done")
        await client.settle(0.2)
        assert len(client.log.of("input_audio_buffer.speech_stopped")) == 1  # one turn, not two
        assert len(heard["transcript"]) > len(first_guess)
        assert reply_text(done).startswith(f"I heard: {heard['transcript']}.")
        # Of the reply to the first part nothing shows: one response, one reply item.
        assert len(client.log.of("response.created")) == 1
        added = client.log.of("conversation.item.added")
        assert [a["item"]["role"] for a in added] == ["user", "assistant"]
        assert (stats(client).used, stats(client).thrown_away) == (1, 1)


async def test_the_first_sentence_is_synthesized_during_the_pause_and_not_again(monkeypatch):
    from voicechat.local_engine import speech

    synthesized: list[str] = []

    def fake_synthesis(text: str, voice: str) -> bytes:
        synthesized.append(text)
        return b"\0\0" * 2400  # 100 ms

    monkeypatch.setattr(speech, "_synthesize_sync", fake_synthesis)
    watched = Watched()
    async with client_with(watched) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "audio": {"input": {"turn_detection": SERVER_VAD}},
                },
            }
        )
        await client.append_audio(silence(200) + voice(1000) + silence(200))
        await until(lambda: synthesized)  # in the 500 ms window, before the turn has ended
        assert not client.log.of("input_audio_buffer.speech_stopped")
        await client.append_audio(silence(700))
        done = await client.wait("response.done")
        assert done["response"]["status"] == "completed"
        spoken = done["response"]["output"][0]["content"][0]["transcript"]
        assert spoken.startswith(synthesized[0])
        assert len(synthesized) == len(set(synthesized))  # nothing synthesized twice
        assert client.log.of("response.output_audio.delta")
        assert (stats(client).used, stats(client).thrown_away) == (1, 0)
