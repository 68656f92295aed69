"""The local engine's Realtime session: client events in, GA server events out.

One RealtimeSession per connection. Client events are handled in order as they arrive; slow
work (speech recognition, responses) runs in tasks so the session keeps listening, which is
what makes barge-in and response.cancel work. Work that the end of a turn would start begins
in the pause before it instead: the final transcription (also with push-to-talk) and, where the
turn's end starts a response, the reply itself (speculation.py).
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from voicechat.local_engine import config, speech, turn
from voicechat.local_engine.assistant import make_responder
from voicechat.local_engine.conversation import Conversation, Entry
from voicechat.local_engine.events import (
    ClientEventError,
    decode_audio,
    encode_audio,
    new_id,
    server_event,
)
from voicechat.local_engine.responder import Responder, Turn
from voicechat.local_engine.response import (
    ASSISTANT_AUDIO_TOKENS_PER_S,
    USER_AUDIO_TOKENS_PER_S,
    ResponseRun,
    audio_tokens,
    output_token_limit,
    text_tokens,
)
from voicechat.local_engine.semantic_vad import PauseJudge
from voicechat.local_engine.speculation import Speculation, SpeculationStats

logger = logging.getLogger(__name__)

BYTES_PER_MS = 48  # PCM16 mono 24 kHz
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio
# How long a pause must last before the final transcription starts early (_follow_pause).
PAUSE_MS = 96
# semantic_vad hears the audio in steps this long (one VAD frame at 24 kHz), so that a pause is
# judged at the same point of the audio whatever the size of the client's appends.
SEMANTIC_STEP_BYTES = 32 * BYTES_PER_MS
# The most audio the turn model is given (it judges the last 8 s).
TURN_MODEL_AUDIO_MS = 8000
# Push-to-talk (turn_detection null) follows the speech too, silently: the final transcription
# starts in the pause before the button is released, as a hands-free turn's does before its
# silence window ends. OpenAI's VAD defaults; no silence ends the turn (the release does).
PUSH_TO_TALK_SPEECH = config.TurnDetection(
    threshold=0.5,
    prefix_padding_ms=300,
    silence_duration_ms=2**31,
    create_response=False,
    interrupt_response=False,
)


class RealtimeSession:
    """State machine for one conversation with the local engine."""

    def __init__(
        self,
        *,
        model: str,
        emit: Callable[[dict], None],
        responder: Responder | None = None,
        time_zone: str | None = None,
    ) -> None:
        self._emit = emit
        self.time_zone = time_zone  # the user's (IANA name), for answers about the time
        self.session = config.default_session(model)
        self.conversation = Conversation()
        self.responder = responder or make_responder()
        self.stats = speech.SpeechStats()
        self.transcriber = speech.Transcriber(self.stats)
        self.response: ResponseRun | None = None
        self._response_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._voice_locked = False
        self._answer_when_done = False
        self._closed = False
        # Input audio: the whole session is one timeline of PCM16 24 kHz.
        self._decoder = speech.InputDecoder(self.session["audio"]["input"]["format"])
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0  # session time of the buffer's first byte
        self._td: config.TurnDetection | None = None  # the session's (None: push-to-talk)
        self._vad = None  # follows the speech in every mode (PUSH_TO_TALK_SPEECH)
        self._vad_origin_ms = 0.0  # session time the VAD counts from
        self._pause_judge: PauseJudge | None = None  # semantic_vad only
        # semantic_vad judged the pause the end of the turn; it ends when the reply is ready.
        self._held_end: _HeldEnd | None = None
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0
        self._stt_fed_ms = 0.0
        # The reply begun in the user's pause, before the turn ended (speculation.py).
        self._speculation: Speculation | None = None
        self.speculation_stats = SpeculationStats()
        self._configure_vad()

    # --- plumbing -------------------------------------------------------------------------

    def emit(self, type: str, **fields) -> None:
        self._emit(server_event(type, **fields))

    def start(self) -> None:
        self.emit("session.created", session=self.session)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop every task of this session (the connection is gone)."""
        self._closed = True
        tasks = [*self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transcriber.close()
        close_responder = getattr(self.responder, "aclose", None)
        if close_responder is not None:
            await close_responder()

    @property
    def _total_ms(self) -> float:
        return self._buffer_start_ms + len(self._buffer) / BYTES_PER_MS

    async def handle(self, event: dict) -> None:
        """Apply one validated client event."""
        handler = getattr(self, "_on_" + event["type"].replace(".", "_"))
        try:
            result = handler(event)
            if asyncio.iscoroutine(result):
                await result
        except ClientEventError as exc:
            exc.event_id = exc.event_id or event.get("event_id")
            self._emit(exc.to_event())

    # --- session.update -------------------------------------------------------------------

    def _on_session_update(self, event: dict) -> None:
        update = event["session"]
        if update.get("type") != "realtime":
            raise ClientEventError(
                "This server only supports realtime sessions (session.type 'realtime').",
                code="invalid_value",
                param="session.type",
            )
        old = self.session
        session = config.merge_session(old, update, voice_locked=self._voice_locked)
        new_td = config.turn_detection(session)
        if new_td is not None and new_td.semantic and self._pause_judge is None:
            _require_turn_model()
        self.session = session
        old_in, new_in = old["audio"]["input"], self.session["audio"]["input"]
        if old_in["format"] != new_in["format"]:
            self._decoder = speech.InputDecoder(new_in["format"])
        if old_in["turn_detection"] != new_in["turn_detection"]:
            self._configure_vad()
        self.emit("session.updated", session=self.session)

    def _configure_vad(self) -> None:
        td = self._td = config.turn_detection(self.session)
        self._speech_item_id = None
        self.transcriber.stream_cancel()  # a turn in progress is gone with the old VAD
        self._drop_speculation()
        self._held_end = None
        self._pause_judge = None
        if td is not None and td.semantic:
            self._pause_judge = PauseJudge(
                max_wait_ms=td.silence_duration_ms, eagerness=td.eagerness
            )
        from voicechat.local_engine.vad import VoiceActivityDetector

        follow = td or PUSH_TO_TALK_SPEECH
        self._vad = VoiceActivityDetector(
            threshold=follow.threshold,
            prefix_padding_ms=follow.prefix_padding_ms,
            silence_duration_ms=follow.silence_duration_ms,
        )
        self._vad_origin_ms = self._total_ms

    # --- input audio ----------------------------------------------------------------------

    async def _on_input_audio_buffer_append(self, event: dict) -> None:
        pcm = self._decoder.decode(decode_audio(event["audio"], event_id=event.get("event_id")))
        if self._pause_judge is None:
            self._hear(pcm)
            return
        for start in range(0, len(pcm), SEMANTIC_STEP_BYTES):
            self._hear(pcm[start : start + SEMANTIC_STEP_BYTES])
            await self._judge_pause()

    def _hear(self, pcm: bytes) -> None:
        """Buffer input audio and follow the speech in it (VAD, streaming transcription)."""
        self._buffer += pcm
        for vad_event in self._vad.feed(pcm):
            at_ms = int(self._vad_origin_ms + vad_event.audio_ms)
            if vad_event.kind == "speech_started":
                self._speech_started(at_ms)
            elif self._held_end is not None:
                # The longest semantic_vad waits: the turn ends where it was judged finished.
                self._speech_stopped(at_ms, ended_ms=self._held_end.judged_ms)
            else:
                self._speech_stopped(at_ms)
        if self._speech_item_id is not None:
            self._stream_to_stt(self._total_ms)
            self._follow_pause()
        elif self._td is not None:
            # Between turns only the prefix padding can still become part of an item (with
            # push-to-talk, the commit takes all the buffer holds).
            keep = int(self._td.prefix_padding_ms + 100) * BYTES_PER_MS
            if len(self._buffer) > 2 * keep:
                drop = len(self._buffer) - keep
                del self._buffer[:drop]
                self._buffer_start_ms += drop / BYTES_PER_MS

    def _stream_to_stt(self, until_ms: float) -> None:
        """Feed the recognizer the utterance audio it has not seen yet (up to until_ms)."""
        start = max(0, int((self._stt_fed_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
        end = max(start, int((until_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
        self.transcriber.stream_feed(bytes(self._buffer[start:end]))
        self._stt_fed_ms = max(self._stt_fed_ms, until_ms)

    def _follow_pause(self) -> None:
        """Start the final transcription as a pause begins, and drop it if the voice returns.

        The turn ends only silence_duration_ms into the pause; by then the transcript of the
        speech before it is usually ready, instead of only starting (~0.15-0.4 s of decoding).
        """
        silence_ms = self._vad.silence_ms
        if silence_ms == 0:
            self.transcriber.stream_resume()
            self._drop_speculation()
        elif silence_ms >= PAUSE_MS:
            early_transcript = self.transcriber.stream_pause()
            if early_transcript is not None:
                self._speculate(early_transcript)

    def _speculate(self, transcript: asyncio.Task) -> None:
        """Start the reply to the turn as it stands, in case this pause ends it.

        Only where the end of the turn starts a response, or push-to-talk's client is about to
        ask for one, and nothing is being said (the reply would be answered next, after a
        conversation that has changed).
        """
        td = self._td
        if (td is not None and not td.create_response) or self.response is not None:
            return
        if not config.speculative_replies():
            return
        user = Entry(item=_user_audio_item(self._speech_item_id), transcript=transcript)
        audio_out = "audio" in self.session["output_modalities"]
        self._speculation = Speculation(
            self.responder,
            self._reply_turn([*self.conversation, user]),
            self.speculation_stats,
            spawn=self._spawn,
            voice=self.session["audio"]["output"]["voice"] if audio_out else None,
            speech_stats=self.stats,
        )

    async def _reply_turn(self, entries: list[Entry]) -> Turn:
        turn, _tokens = await self._turn_of(entries, {})
        return turn

    def _take_speculation(self) -> Speculation | None:
        speculation, self._speculation = self._speculation, None
        return speculation

    def _drop_speculation(self) -> None:
        """The user spoke again (or the turn is gone): the reply begun in the pause is wasted."""
        if (speculation := self._take_speculation()) is not None:
            speculation.drop()

    async def _judge_pause(self) -> None:
        """semantic_vad: end the turn in a pause as soon as the turn model says it is over.

        If a reply was begun in this pause and cannot start playing yet, the turn ends when it
        can (_hold_end): ending it sooner would not bring the answer sooner, and a user who goes
        on meanwhile was only pausing.
        """
        if self._speech_item_id is None:
            return
        judge = self._pause_judge
        pause_ms = self._vad.silence_ms
        if pause_ms == 0:
            judge.forget()
            self._held_end = None
            return
        heard_ms = self._vad_origin_ms + self._vad.processed_ms
        if self._held_end is not None:
            return  # judged: ends when the reply is ready, or at the longest wait (_hear)
        if judge.wants_to_ask(pause_ms):
            # The speech and the start of the pause (semantic_vad.py says why this much).
            speech_start_ms = max(self._speech_start_ms, heard_ms - TURN_MODEL_AUDIO_MS)
            start = max(0, int((speech_start_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
            end = max(start, int((heard_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
            judge.ask(bytes(self._buffer[start:end]))
        item_id = self._speech_item_id
        if await judge.ends_turn(pause_ms) and self._speech_item_id == item_id:
            logger.debug(
                "turn judged finished %d ms into a pause, P(complete) %.3f",
                pause_ms,
                judge.probability or 0,
            )
            speculation = self._speculation
            if speculation is not None and not speculation.ready:
                self._hold_end(item_id, heard_ms, speculation)
            else:
                self._end_in_pause(heard_ms)

    def _hold_end(self, item_id: str, judged_ms: float, speculation: Speculation) -> None:
        """End the turn, at the point of the audio it was judged finished, once the reply begun
        in the pause is ready to be heard; not if the user speaks first (_judge_pause)."""
        held = self._held_end = _HeldEnd(item_id, judged_ms)

        async def end_when_ready() -> None:
            await speculation.wait_ready()
            if (
                self._held_end is held
                and self._speech_item_id == item_id
                and self._vad.silence_ms > 0
            ):
                self._end_in_pause(judged_ms)

        self._spawn(end_when_ready())

    def _end_in_pause(self, ended_ms: float) -> None:
        """semantic_vad ends the turn in the current pause; OpenAI reports the end of the
        speech as where the turn ended (ended_ms, session time)."""
        self._held_end = None
        silence_start = self._vad.end_speech().audio_ms
        self._speech_stopped(int(self._vad_origin_ms + silence_start), ended_ms=ended_ms)

    def _speech_started(self, at_ms: int) -> None:
        item_id = self._speech_item_id = new_id("item")
        self._speech_start_ms = at_ms
        self._stt_fed_ms = at_ms
        if self._td is None:
            # Push-to-talk: no VAD events (OpenAI sends none without turn detection), and no
            # partial transcripts of an item the client has not committed; only the early
            # final decode (_follow_pause), which the commit uses if nothing was said after it.
            self.transcriber.stream_start(self._stt_language(), None)
            return
        # Transcribe while the user speaks: partial transcripts, and an early final one.
        partials = None
        if config.transcription_language(self.session) is not None:

            def partials(delta: str) -> None:
                # Until the turn is committed its item exists only here; once committed, it
                # may have been deleted meanwhile.
                if item_id == self._speech_item_id or self.conversation.contains(item_id):
                    self.emit(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item_id,
                        content_index=0,
                        delta=delta,
                    )

        if self._pause_judge is not None:
            self._pause_judge.forget()
        self.transcriber.stream_start(self._stt_language(), partials)
        self.emit(
            "input_audio_buffer.speech_started", audio_start_ms=at_ms, item_id=self._speech_item_id
        )
        if self._td.interrupt_response and self.response is not None:
            self._cancel_response("turn_detected")

    def _speech_stopped(self, silence_start_ms: int, *, ended_ms: float | None = None) -> None:
        td = self._td
        # OpenAI reports the end including the silence window (the moment the turn ended).
        if ended_ms is None:
            ended_ms = silence_start_ms + td.silence_duration_ms
        end_ms = int(min(ended_ms, self._total_ms))
        item_id, self._speech_item_id = self._speech_item_id, None
        self._held_end = None
        self.emit("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        self._stream_to_stt(end_ms)
        pcm = self._take_buffer(self._speech_start_ms, end_ms)
        self._commit(pcm, item_id, streamed=True)
        if td.create_response and self.response is None:
            # The reply begun in this pause, if any, answers the turn as it ended.
            self._start_response({}, ahead=self._take_speculation())
            return
        self._drop_speculation()
        if td.create_response:
            # interrupt_response is off and the assistant is still talking: answer next.
            self._answer_when_done = True

    def _take_buffer(self, start_ms: float, end_ms: float) -> bytes:
        """Audio between two session times; the buffer keeps only what follows end_ms."""
        start = max(0, int((start_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
        end = max(start, int((end_ms - self._buffer_start_ms) * BYTES_PER_MS) & ~1)
        pcm = bytes(self._buffer[start:end])
        del self._buffer[:end]
        self._buffer_start_ms += end / BYTES_PER_MS
        return pcm

    def _on_input_audio_buffer_commit(self, event: dict) -> None:
        buffered_ms = len(self._buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id or new_id("item")
        pcm = self._take_buffer(self._buffer_start_ms, self._total_ms)
        # The final decode begun in the last pause, if the user said nothing after it, is this
        # item's transcript (push-to-talk: usually ready by the release); otherwise all of it.
        settled = self.transcriber.stream_settled()
        self._commit(pcm, item_id, streamed=settled)
        # So is the reply begun in that pause, for a response.create that follows (push-to-talk).
        reply = self._take_speculation() if settled else None
        self._configure_vad()  # the committed audio is gone: start counting afresh
        self._speculation = reply  # dropped like any other if the user speaks or clears first

    def _on_input_audio_buffer_clear(self, event: dict) -> None:
        self._take_buffer(self._buffer_start_ms, self._total_ms)
        self._configure_vad()
        self.emit("input_audio_buffer.cleared")

    def _commit(self, pcm: bytes, item_id: str, *, streamed: bool = False) -> None:
        entry = Entry(item=_user_audio_item(item_id), audio=pcm, audio_ms=len(pcm) / BYTES_PER_MS)
        previous = self.conversation.insert(entry, after=None)
        entry.previous_item_id = previous
        self.conversation.prune_audio()
        self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self.emit("conversation.item.added", previous_item_id=previous, item=_shown(entry.item))
        self.emit("conversation.item.done", previous_item_id=previous, item=_shown(entry.item))
        self._transcribe(entry, emit_events=True, streamed=streamed)

    def _stt_language(self) -> str:
        return config.transcription_language(self.session) or "en"

    def _transcribe(self, entry: Entry, *, emit_events: bool, streamed: bool = False) -> None:
        """Start speech recognition of a user audio item; entry.transcript resolves to text."""
        entry.transcript = asyncio.get_running_loop().create_future()
        emit_events = emit_events and config.transcription_language(self.session) is not None
        deltas_sent = streamed and self.transcriber.stream_sends_deltas()
        if streamed:
            text = self.transcriber.stream_finish()
        else:
            text = self.transcriber.transcribe(entry.audio, self._stt_language())
        self._spawn(self._run_transcription(entry, text, emit_events, deltas_sent))

    async def _run_transcription(
        self, entry: Entry, text, emit_events: bool, deltas_sent: bool
    ) -> None:
        try:
            text = await text
        except asyncio.CancelledError:
            entry.transcript.cancel()
            raise
        except Exception as exc:
            logger.exception("local STT failed")
            entry.transcript.set_result("")
            if emit_events:
                self.emit(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=entry.id,
                    content_index=0,
                    error={
                        "type": "server_error",
                        "code": "transcription_failed",
                        "message": f"Speech recognition failed: {type(exc).__name__}",
                        "param": None,
                    },
                )
            return
        entry.item["content"][0]["transcript"] = text
        entry.transcript.set_result(text)
        if emit_events and self.conversation.contains(entry.id):
            # A streamed turn's deltas were sent as it was heard (speech.Transcriber); otherwise
            # the whole text is one delta, as OpenAI's whisper-1 sends it.
            if text and not deltas_sent:
                self.emit(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=entry.id,
                    content_index=0,
                    delta=text,
                )
            self.emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=entry.id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round(entry.audio_ms / 1000, 3)},
            )

    # --- conversation items ---------------------------------------------------------------

    def _on_conversation_item_create(self, event: dict) -> None:
        item = dict(event["item"])
        event_id = event.get("event_id")
        if item.get("id") and self.conversation.contains(item["id"]):
            raise ClientEventError(
                f"Item with id '{item['id']}' already exists.",
                code="item_already_exists",
                param="item.id",
                event_id=event_id,
            )
        item = {"id": item.get("id") or new_id("item"), **item}
        item["object"] = "realtime.item"
        item["status"] = "completed"
        entry = Entry(item=item)
        if item["type"] == "message":
            item["content"] = [dict(c) for c in item.get("content") or []]
            for part in item["content"]:
                if part.get("type") == "input_audio" and part.get("audio"):
                    entry.audio = self._decode_item_audio(part["audio"], event_id)
                    entry.audio_ms = len(entry.audio) / BYTES_PER_MS
                    part.pop("audio")
                    part.setdefault("transcript", None)
        elif item["type"] not in ("function_call", "function_call_output"):
            raise ClientEventError(
                f"Items of type '{item['type']}' are not supported by the local engine.",
                code="invalid_value",
                param="item.type",
                event_id=event_id,
            )
        previous = self.conversation.insert(
            entry, after=event.get("previous_item_id"), event_id=event_id
        )
        entry.previous_item_id = previous
        self.emit("conversation.item.added", previous_item_id=previous, item=_shown(item))
        self.emit("conversation.item.done", previous_item_id=previous, item=_shown(item))
        if entry.audio and not _given_transcript(item):
            self._transcribe(entry, emit_events=False)

    def _decode_item_audio(self, data: str, event_id: str | None) -> bytes:
        raw = decode_audio(data, event_id=event_id)
        return speech.InputDecoder(self.session["audio"]["input"]["format"]).decode(raw)

    def _on_conversation_item_delete(self, event: dict) -> None:
        entry = self.conversation.require(
            event["item_id"], action="delete", event_id=event.get("event_id")
        )
        self.conversation.delete(entry.id)
        self.emit("conversation.item.deleted", item_id=entry.id)

    def _on_conversation_item_retrieve(self, event: dict) -> None:
        entry = self.conversation.require(
            event["item_id"], action="retrieve", event_id=event.get("event_id")
        )
        item = _shown(entry.item)
        if entry.audio and item.get("content"):
            # Retrieval is how a client gets the audio back (OpenAI includes it here only).
            item["content"][0]["audio"] = encode_audio(entry.audio)
        self.emit("conversation.item.retrieved", item=item)

    def _on_conversation_item_truncate(self, event: dict) -> None:
        event_id = event.get("event_id")
        entry = self.conversation.require(event["item_id"], action="truncate", event_id=event_id)
        item = entry.item
        if (
            item.get("role") != "assistant"
            or not item.get("content")
            or (item["content"][0].get("type") != "output_audio")
        ):
            raise ClientEventError(
                "Only assistant messages with audio can be truncated.",
                code="invalid_value",
                param="item_id",
                event_id=event_id,
            )
        if event["content_index"] != 0:
            raise ClientEventError(
                "Invalid 'content_index': the item has one content part (index 0).",
                code="invalid_value",
                param="content_index",
                event_id=event_id,
            )
        end_ms = event["audio_end_ms"]
        if end_ms < 0 or end_ms > entry.audio_ms + 1:
            raise ClientEventError(
                f"Audio content of {entry.audio_ms:.0f}ms is shorter than {end_ms}ms.",
                code="invalid_value",
                param="audio_end_ms",
                event_id=event_id,
            )
        if self.response is not None and entry in self.response.output:
            # The client stopped playing a reply that is still being produced: stop producing.
            self._cancel_response("client_cancelled")
        entry.audio = entry.audio[: int(end_ms * BYTES_PER_MS) & ~1]
        entry.audio_ms = min(entry.audio_ms, end_ms)
        item["content"][0]["transcript"] = heard_transcript(entry, end_ms)
        self.emit(
            "conversation.item.truncated", item_id=entry.id, content_index=0, audio_end_ms=end_ms
        )

    # --- responses ------------------------------------------------------------------------

    def _on_response_create(self, event: dict) -> None:
        if self.response is not None:
            raise ClientEventError(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        params = event.get("response") or {}
        # After a push-to-talk commit: the reply begun in the pause before it, if it still fits.
        self._start_response(params, ahead=None if params else self._take_speculation())

    def _on_response_cancel(self, event: dict) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            raise ClientEventError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
            )
        self._cancel_response("client_cancelled")

    def _on_output_audio_buffer_clear(self, event: dict) -> None:  # refused by the parser
        raise ClientEventError("output_audio_buffer.clear is WebRTC-only.", code="invalid_value")

    def _start_response(self, params: dict, *, ahead: Speculation | None = None) -> None:
        """Start a response; `ahead`, a reply begun in the pause, is used if it still fits."""
        run = ResponseRun(
            emit=self._emit,
            responder=ahead or self.responder,
            turn_factory=self._turn,
            add_item=lambda entry: self.conversation.insert(entry, after=None),
            finish_item=self._item_finished,
            on_finished=self._response_finished,
            params=params,
            session=self.session,
            stats=self.stats,
        )
        self.response = run
        run.announce()
        self._response_task = self._spawn(run.run())
        if ahead is not None:
            # A response cut short before it asked for its reply leaves that reply unused.
            self._response_task.add_done_callback(lambda _task: ahead.drop())

    def _cancel_response(self, reason: str) -> None:
        run, task = self.response, self._response_task
        if run is None:
            return
        run.abort(reason)  # emits the closing events and response.done now, in order
        task.cancel()

    def _response_finished(self, run: ResponseRun) -> None:
        if self.response is run:
            self.response = None
            self._response_task = None
        if self._answer_when_done:
            self._answer_when_done = False
            # Called from inside the finished response: start the next one on its own turn.
            asyncio.get_running_loop().call_soon(self._start_queued_response)

    def _start_queued_response(self) -> None:
        if self.response is None and not self._closed:
            self._start_response({})

    def _item_finished(self, entry: Entry) -> None:
        if entry.audio:
            self._voice_locked = True
            self.conversation.prune_audio()

    async def _turn(self, params: dict) -> tuple[Turn, tuple[int, int]]:
        """The responder's input for a response, and its input-token estimate."""
        if params.get("input") is not None:
            entries = [Entry(item=_with_id(item)) for item in params["input"]]
        else:
            entries = list(self.conversation)
        return await self._turn_of(entries, params)

    async def _turn_of(self, entries: list[Entry], params: dict) -> tuple[Turn, tuple[int, int]]:
        history = []
        text_in = text_tokens(params.get("instructions") or self.session["instructions"] or "")
        audio_in = 0
        for entry in entries:
            simple = await _simplify(entry)
            if simple is None:
                continue
            history.append(simple)
            if entry.audio_ms:
                per_s = (
                    USER_AUDIO_TOKENS_PER_S
                    if simple.get("role") == "user"
                    else (ASSISTANT_AUDIO_TOKENS_PER_S)
                )
                audio_in += audio_tokens(entry.audio_ms, per_s)
            else:
                text_in += text_tokens(
                    simple.get("text") or simple.get("output") or simple.get("arguments") or ""
                )
        turn = Turn(
            instructions=params.get("instructions") or self.session["instructions"] or "",
            history=history,
            tools=params.get("tools") if params.get("tools") is not None else self.session["tools"],
            tool_choice=params.get("tool_choice") or self.session["tool_choice"],
            max_output_tokens=output_token_limit(params, self.session),
            time_zone=self.time_zone,
        )
        return turn, (text_in, audio_in)


@dataclass(eq=False)
class _HeldEnd:
    """A turn semantic_vad judged finished at `judged_ms`, waiting for its reply."""

    item_id: str
    judged_ms: float


def _require_turn_model() -> None:
    """semantic_vad needs the turn model: refuse the session.update now if it cannot load."""
    try:
        turn.get_turn_model()  # loaded once per process, normally at start-up (speech.warm_up)
    except ImproperlyConfigured as error:
        raise ClientEventError(
            f"semantic_vad is not available on this server: {error}",
            code="invalid_value",
            param="session.audio.input.turn_detection.type",
        ) from error


def _user_audio_item(item_id: str) -> dict:
    """A user's spoken turn, as a GA item (its transcript is filled in when recognized)."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def _with_id(item: dict) -> dict:
    return {"id": item.get("id") or new_id("item"), **item}


def _given_transcript(item: dict) -> bool:
    return any(c.get("transcript") for c in item.get("content") or [])


def _shown(item: dict) -> dict:
    """A copy of an item for an event (content parts copied too)."""
    shown = dict(item)
    if "content" in shown:
        shown["content"] = [dict(c) for c in shown["content"]]
    return shown


async def _simplify(entry: Entry) -> dict | None:
    """An item as the responder sees it (see responder.Turn.history)."""
    item = entry.item
    kind = item.get("type")
    if kind == "function_call":
        return {
            "type": "function_call",
            "call_id": item.get("call_id") or item["id"],
            "name": item["name"],
            "arguments": item.get("arguments") or "",
        }
    if kind == "function_call_output":
        return {
            "type": "function_call_output",
            "call_id": item["call_id"],
            "output": item["output"],
        }
    if kind != "message":
        return None
    texts = []
    for part in item.get("content") or []:
        if part.get("text"):
            texts.append(part["text"])
        elif part.get("transcript"):
            texts.append(part["transcript"])
        elif part.get("type") == "input_audio" and entry.transcript is not None:
            texts.append(await asyncio.shield(entry.transcript))
    return {"role": item["role"], "text": " ".join(t for t in texts if t)}


def heard_transcript(entry: Entry, end_ms: float) -> str:
    """The part of an assistant transcript the user heard before audio_end_ms.

    Whole sentences up to the cut, then the share of the cut sentence's words proportional to
    how much of its audio played (each sentence was synthesized separately, so its span is known).
    """
    heard = []
    for seg in entry.segments:
        if seg.end_ms <= end_ms:
            heard.append(seg.text)
            continue
        if seg.start_ms < end_ms:
            words = seg.text.split()
            share = (end_ms - seg.start_ms) / max(1.0, seg.end_ms - seg.start_ms)
            cut = int(len(words) * share)
            if cut:
                heard.append(" ".join(words[:cut]))
        break
    return " ".join(heard)
