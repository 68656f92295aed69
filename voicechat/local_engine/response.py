"""One response: runs the responder and emits the GA response.* event sequence."""

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable

from voicechat.local_engine import speech
from voicechat.local_engine.conversation import Entry, Segment
from voicechat.local_engine.events import encode_audio, new_id, server_event
from voicechat.local_engine.responder import (
    FunctionCall,
    Responder,
    ResponderError,
    TextDelta,
    Turn,
)

logger = logging.getLogger(__name__)

# Honest token estimates (the local engine bills nothing; the numbers only make usage and
# cost views comparable with OpenAI's): ~4 characters per text token, 10 audio tokens per
# second of user audio and 20 per second of assistant audio (OpenAI's published ratios).
USER_AUDIO_TOKENS_PER_S = 10
ASSISTANT_AUDIO_TOKENS_PER_S = 20


# Synthesis time grows with sentence length and nothing plays until the first piece is done,
# so a long first sentence is spoken as two pieces, cut at its first clause break.
FIRST_PIECE_MAX = 40
FIRST_CLAUSE_MIN = 12
FIRST_CLAUSE = re.compile(r"(?<=[,;:—])\s+")


def first_piece(sentence: str) -> str:
    """What of a reply's first sentence is spoken first: up to its first clause break if long."""
    match = FIRST_CLAUSE.search(sentence, FIRST_CLAUSE_MIN)
    if len(sentence) > FIRST_PIECE_MAX and match:
        return sentence[: match.start()]
    return sentence


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def audio_tokens(ms: float, per_second: int) -> int:
    return math.ceil(ms * per_second / 1000) if ms else 0


def output_token_limit(params: dict, session: dict) -> int | None:
    """A response's max_output_tokens (its own, else the session's; None: "inf")."""
    limit = params.get("max_output_tokens", session["max_output_tokens"])
    return limit if isinstance(limit, int) else None


class ResponseRun:
    """The state of one response; `run()` is its task, `abort()` ends it from outside."""

    def __init__(
        self,
        *,
        emit: Callable[[dict], None],
        responder: Responder,
        turn_factory,
        add_item: Callable[[Entry], str | None],
        finish_item: Callable[[Entry], None],
        on_finished: Callable[["ResponseRun"], None],
        params: dict,
        session: dict,
        stats: speech.SpeechStats | None = None,
    ) -> None:
        self._stats = stats
        self.id = new_id("resp")
        self._emit_raw = emit
        self._responder = responder
        self._turn_factory = turn_factory
        self._add_item = add_item
        self._finish_item = finish_item
        self._on_finished = on_finished
        self.in_conversation = params.get("conversation", "auto") != "none"
        self.modalities = params.get("output_modalities") or session["output_modalities"]
        out = session["audio"]["output"]
        self.voice = ((params.get("audio") or {}).get("output") or {}).get("voice") or out["voice"]
        self.format = ((params.get("audio") or {}).get("output") or {}).get("format") or out[
            "format"
        ]
        self.metadata = params.get("metadata")
        self.max_output_tokens = output_token_limit(params, session)
        self.params = params
        self.output: list[Entry] = []
        self.finished = False
        self.cancel_reason: str | None = None
        self._input_text_tokens = self._input_audio_tokens = 0
        self._out_text = 0
        self._out_audio_ms = 0.0
        self._message: Entry | None = None  # the assistant message being produced
        self._part_open = False
        self._speaker: asyncio.Task | None = None
        self._sentences: asyncio.Queue | None = None
        self._sentence_buffer = None
        self._queued_any = False
        self._encoder: speech.OutputEncoder | None = None

    @property
    def audio_out(self) -> bool:
        return "audio" in self.modalities

    def emit(self, type: str, **fields) -> None:
        if not self.finished:
            self._emit_raw(server_event(type, **fields))

    def _response_body(self, status: str, details: dict | None) -> dict:
        body = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": [e.item for e in self.output],
            "conversation_id": "conv_local" if self.in_conversation else None,
            "output_modalities": self.modalities,
            "max_output_tokens": self.max_output_tokens or "inf",
            "audio": {"output": {"format": self.format, "voice": self.voice}},
            "usage": None,
            "metadata": self.metadata,
        }
        if status != "in_progress":
            body["usage"] = self._usage()
        return body

    def _usage(self) -> dict:
        out_audio = audio_tokens(self._out_audio_ms, ASSISTANT_AUDIO_TOKENS_PER_S)
        input_total = self._input_text_tokens + self._input_audio_tokens
        return {
            "total_tokens": input_total + self._out_text + out_audio,
            "input_tokens": input_total,
            "output_tokens": self._out_text + out_audio,
            "input_token_details": {
                "text_tokens": self._input_text_tokens,
                "audio_tokens": self._input_audio_tokens,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": self._out_text, "audio_tokens": out_audio},
        }

    # --- lifecycle ------------------------------------------------------------------------

    def announce(self) -> None:
        """Emit response.created; called before the task starts, so it always comes first."""
        self.emit("response.created", response=self._response_body("in_progress", None))

    async def run(self) -> None:
        try:
            status, details = await self._produce()
            await self._close_message(status="completed" if status == "completed" else "incomplete")
        except asyncio.CancelledError:
            self.abort(self.cancel_reason or "client_cancelled")
            raise
        except ResponderError as exc:
            status, details = "failed", _failure("local_llm_error", str(exc))
        except Exception:
            logger.exception("local engine response %s failed", self.id)
            status, details = (
                "failed",
                _failure("server_error", "The local engine failed while answering."),
            )
        self._close_message_now(status="incomplete")
        self._finish(status, details)

    def abort(self, reason: str) -> None:
        """End now (barge-in or response.cancel): close open parts, then response.done."""
        if self.finished:
            return
        self.cancel_reason = reason
        if self._speaker is not None:
            self._speaker.cancel()
        self._close_message_now(status="incomplete")
        self._finish("cancelled", {"type": "cancelled", "reason": reason})

    def _finish(self, status: str, details: dict | None) -> None:
        if self.finished:
            return
        self.emit("response.done", response=self._response_body(status, details))
        self.finished = True
        self._on_finished(self)

    async def _produce(self) -> tuple[str, dict | None]:
        turn: Turn
        turn, (self._input_text_tokens, self._input_audio_tokens) = await self._turn_factory(
            self.params
        )
        # aclosing: a cancelled response closes the LLM stream now, not at garbage collection.
        async with contextlib.aclosing(self._responder.respond(turn)) as stream:
            async for out in stream:
                if isinstance(out, TextDelta):
                    await self._text(out.text)
                elif isinstance(out, FunctionCall):
                    await self._close_message(status="completed")
                    self._function_call(out)
                if self.max_output_tokens and self._out_text > self.max_output_tokens:
                    return "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        return "completed", None

    # --- assistant message ----------------------------------------------------------------

    def _open_message(self) -> Entry:
        content_type = "output_audio" if self.audio_out else "output_text"
        entry = Entry(
            item={
                "id": new_id("item"),
                "type": "message",
                "object": "realtime.item",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        )
        self._start_item(entry)
        part = (
            {"type": "audio", "transcript": ""} if self.audio_out else {"type": "text", "text": ""}
        )
        self.emit("response.content_part.added", **self._where(entry), content_index=0, part=part)
        entry.item["content"] = [
            {"type": content_type, "transcript": ""}
            if self.audio_out
            else {"type": content_type, "text": ""}
        ]
        self._part_open = True
        if self.audio_out:
            self._encoder = speech.OutputEncoder(self.format)
            self._sentence_buffer = speech.sentence_splitter()
            self._sentences = asyncio.Queue()
            self._speaker = asyncio.create_task(self._speak(entry))
        self._message = entry
        return entry

    def _start_item(self, entry: Entry) -> None:
        previous = self._add_item(entry) if self.in_conversation else None
        self.output.append(entry)
        self.emit(
            "response.output_item.added",
            response_id=self.id,
            output_index=len(self.output) - 1,
            item=_public(entry.item),
        )
        if self.in_conversation:
            self.emit(
                "conversation.item.added", previous_item_id=previous, item=_public(entry.item)
            )
        entry.previous_item_id = previous

    def _where(self, entry: Entry) -> dict:
        return {
            "response_id": self.id,
            "item_id": entry.id,
            "output_index": self.output.index(entry),
        }

    async def _text(self, delta: str) -> None:
        entry = self._message or self._open_message()
        content = entry.item["content"][0]
        self._out_text += text_tokens(delta) if delta.strip() else 0
        if not self.audio_out:
            content["text"] += delta
            self.emit(
                "response.output_text.delta", **self._where(entry), content_index=0, delta=delta
            )
            return
        for sentence in self._sentence_buffer.feed(delta):
            self._queue_sentence(sentence)

    def _queue_sentence(self, sentence: str) -> None:
        """Queue a sentence for speech; the first one is cut at a clause for faster first audio."""
        if not self._queued_any:
            self._queued_any = True
            piece = first_piece(sentence)
            if piece != sentence:
                self._sentences.put_nowait(piece)
                sentence = sentence[len(piece) :].lstrip()
        self._sentences.put_nowait(sentence)

    async def _speak(self, entry: Entry) -> None:
        """Synthesize sentences in order and stream them: transcript first, then the audio."""
        content = entry.item["content"][0]
        where = self._where(entry)
        while (sentence := await self._sentences.get()) is not None:
            pcm = await self._synthesize(sentence)
            if self.finished:
                return
            spoken = sentence if not content["transcript"] else " " + sentence
            content["transcript"] += spoken
            self.emit(
                "response.output_audio_transcript.delta", **where, content_index=0, delta=spoken
            )
            start_ms = entry.audio_ms
            for chunk in self._encoder.chunks(pcm):
                self.emit(
                    "response.output_audio.delta",
                    **where,
                    content_index=0,
                    delta=encode_audio(chunk),
                )
            entry.audio += pcm
            entry.audio_ms += len(pcm) / 48  # PCM16 24 kHz: 48 bytes per ms
            self._out_audio_ms += len(pcm) / 48
            entry.segments.append(Segment(sentence, start_ms, entry.audio_ms))

    async def _synthesize(self, sentence: str) -> bytes:
        """The sentence's audio: synthesized ahead by a reply begun in the pause, or now."""
        audio_for = getattr(self._responder, "audio_for", None)
        ahead = audio_for(sentence, self.voice) if audio_for is not None else None
        if ahead is not None:
            await asyncio.wait([ahead])
            if not ahead.cancelled() and ahead.exception() is None:
                return ahead.result()
        return await speech.synthesize(sentence, self.voice, self._stats)

    async def _close_message(self, *, status: str) -> None:
        """Let the speaker finish what was said so far, then close the message."""
        if self._message is None:
            return
        if self._speaker is not None:
            for sentence in self._sentence_buffer.flush():
                self._queue_sentence(sentence)
            self._sentences.put_nowait(None)
            await self._speaker
        self._close_message_now(status=status)

    def _close_message_now(self, *, status: str) -> None:
        entry = self._message
        if entry is None:
            return
        self._message = None
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()
        self._speaker = None
        where = self._where(entry)
        content = entry.item["content"][0]
        if self.audio_out:
            self.emit("response.output_audio.done", **where, content_index=0)
            self.emit(
                "response.output_audio_transcript.done",
                **where,
                content_index=0,
                transcript=content["transcript"],
            )
            part = {"type": "audio", "transcript": content["transcript"]}
        else:
            self.emit("response.output_text.done", **where, content_index=0, text=content["text"])
            part = {"type": "text", "text": content["text"]}
        self.emit("response.content_part.done", **where, content_index=0, part=part)
        entry.item["status"] = status
        self._end_item(entry)

    def _end_item(self, entry: Entry) -> None:
        self.emit(
            "response.output_item.done",
            response_id=self.id,
            output_index=self.output.index(entry),
            item=_public(entry.item),
        )
        if self.in_conversation:
            self.emit(
                "conversation.item.done",
                previous_item_id=entry.previous_item_id,
                item=_public(entry.item),
            )
        self._finish_item(entry)

    # --- function calls -------------------------------------------------------------------

    def _function_call(self, call: FunctionCall) -> None:
        entry = Entry(
            item={
                "id": new_id("item"),
                "type": "function_call",
                "object": "realtime.item",
                "status": "in_progress",
                "name": call.name,
                "call_id": new_id("call"),
                "arguments": "",
            }
        )
        self._start_item(entry)
        self.emit(
            "response.function_call_arguments.delta",
            **self._where(entry),
            call_id=entry.item["call_id"],
            delta=call.arguments,
        )
        entry.item["arguments"] = call.arguments
        self._out_text += text_tokens(call.name + call.arguments)
        self.emit(
            "response.function_call_arguments.done",
            **self._where(entry),
            call_id=entry.item["call_id"],
            name=call.name,
            arguments=call.arguments,
        )
        entry.item["status"] = "completed"
        self._end_item(entry)


def _failure(code: str, message: str) -> dict:
    return {"type": "failed", "error": {"type": "server_error", "code": code, "message": message}}


def _public(item: dict) -> dict:
    """An item as events show it: a copy, so later changes don't leak into sent events."""
    return (
        {**item, "content": [dict(c) for c in item["content"]]} if "content" in item else dict(item)
    )
