"""Turns the server events of one conversation into stored transcript lines and usage.

`observe()` runs on the relay path for every upstream frame, so it only peeks at the type and
returns at once for audio and deltas. What it learns goes into a pending batch; one writer task
stores batches through the sync ORM in a worker thread, so the relay never waits on the database.
While a batch is being written, new changes collect in the next one (natural batching).
"""

import asyncio
import collections
import contextlib
import logging
import os
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils.timezone import now

from voicechat import services
from voicechat.enums import ItemStatus, Role
from voicechat.models import Conversation
from voicechat.monitoring import metrics
from voicechat.monitoring.metrics import TurnLatency
from voicechat.records import clamp
from voicechat.services import ItemChange, RecorderBatch, TokenCounts, UsageChange

logger = logging.getLogger(__name__)

_ITEM_ROLES = {
    "function_call": Role.ASSISTANT,
    "function_call_output": Role.TOOL,
    "mcp_approval_response": Role.USER,
}
# How an image the user sent reads in the transcript (its bytes are not stored).
IMAGE_SENT = "(an image was sent)"
# User turns whose transcription is streaming at once; beyond, the oldest partial is dropped
# (its final transcript still arrives whole).
MAX_PARTIALS = 64
_ITEM_STATUSES = {
    "completed": ItemStatus.COMPLETED,
    "in_progress": ItemStatus.IN_PROGRESS,
    "incomplete": ItemStatus.INTERRUPTED,
}


def _content_text(item: dict) -> str | None:
    """The readable text of an item's content parts, or None when it has none yet."""
    if item.get("type") == "function_call":
        name, arguments = (clamp.text(item.get(key)) or "" for key in ("name", "arguments"))
        return f"{name}({arguments})"
    if item.get("type") == "function_call_output":
        return clamp.text(item.get("output")) or ""
    if isinstance(item.get("type"), str) and item["type"].startswith("mcp_"):
        return _mcp_text(item)
    parts = [
        IMAGE_SENT
        if part.get("type") == "input_image"
        else clamp.text(part.get("text") or part.get("transcript"))
        for part in _list(item.get("content"))
        if isinstance(part, dict)
    ]
    parts = [part for part in parts if part]
    return " ".join(parts) if parts else None


def _mcp_text(item: dict) -> str:
    """A remote MCP server's part in the conversation, as one readable line."""
    field = {key: clamp.text(item.get(key)) or "" for key in _MCP_FIELDS}
    server, name = field["server_label"], field["name"]
    kind = item["type"]
    if kind == "mcp_call":
        result = field["error"] or field["output"]
        return f"{server}.{name}({field['arguments']})" + (f" -> {result}" if result else "")
    if kind == "mcp_list_tools":
        return f"listed the tools of {server}"
    if kind == "mcp_approval_request":
        return f"asked to approve {server}.{name}({field['arguments']})"
    if kind == "mcp_approval_response":
        return "approved" if item.get("approve") is True else "declined"
    return kind


_MCP_FIELDS = ("server_label", "name", "arguments", "output", "error")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _status(value) -> str | None:
    return _ITEM_STATUSES.get(value) if isinstance(value, str) else None


class TranscriptRecorder:
    """Never drops a line: a write the database refuses is retried with growing pauses (the
    changes held meanwhile are bounded by MAX_HELD, each line's text by clamp.MAX_TEXT,
    so at most about 8 MB per conversation); past MAX_HELD, or when the conversation is over and
    the database still does not answer, the changes go to a JSONL file in TRANSCRIPT_SPILL_DIR
    (`spilled_to`) that `manage.py replay_spilled_transcripts` stores later."""

    MAX_HELD = 256
    RETRY_PAUSE = 0.2
    MAX_RETRY_PAUSE = 5.0
    # How long one write may take before it counts as failed: during the conversation, and once
    # it is over (the end, and a server's shutdown, must not wait on a database that is away).
    WRITE_TIMEOUT = 30.0
    FINAL_WRITE_TIMEOUT = 3.0

    def __init__(self, *, conversation_id: int, price_model: str) -> None:
        """`price_model` names the REALTIME_PRICES entry usage is billed at ("" = free)."""
        self.conversation_id = conversation_id
        self.price_model = price_model
        self._batch = RecorderBatch()
        # Estimated cost of the responses seen so far, for the live budget check.
        self.cost_usd = Decimal(0)
        self._dirty = asyncio.Event()
        # Set while everything observed is stored (or held after a failure): for flushed().
        self._idle = asyncio.Event()
        self._closing = False
        self._close_requested = asyncio.Event()
        self._failures = 0
        self._backlog = metrics.RecorderBacklog()
        # The file this conversation's transcript went to because the database was away (None
        # while everything is stored): the end detail should say so.
        self.spilled_to: Path | None = None
        # The ids of items replayed from a resumed conversation (voicechat/gateway/resume.py):
        # stored with that one already, so not again with this one.
        self.replayed_prefix = ""
        self._writer: asyncio.Task | None = None
        # The user's words so far, by item, while their transcription streams in.
        self._partials: dict[str, str] = {}
        # The input transcription model the session reports, for billing its transcriptions.
        self._transcription_model = settings.REALTIME_TRANSCRIPTION_MODEL
        # Out-of-band responses (conversation "none"), whose output is kept apart; the latest.
        self._out_of_band: collections.deque[str] = collections.deque(maxlen=64)
        self._handlers = {
            "session.created": self._on_session,
            "session.updated": self._on_session,
            "input_audio_buffer.committed": self._on_committed,
            "conversation.item.added": self._on_item,
            "conversation.item.created": self._on_item,
            "conversation.item.done": self._on_item,
            "conversation.item.retrieved": self._on_item,
            "conversation.item.input_audio_transcription.delta": self._on_user_partial,
            "conversation.item.input_audio_transcription.segment": self._on_user_segment,
            "input_audio_buffer.timeout_triggered": self._on_idle_timeout,
            "response.created": self._on_response_created,
            "conversation.item.input_audio_transcription.completed": self._on_user_transcript,
            "conversation.item.input_audio_transcription.failed": self._on_transcription_failed,
            "response.output_audio_transcript.done": self._on_assistant_transcript,
            "response.output_text.done": self._on_assistant_text,
            "conversation.item.truncated": self._on_truncated,
            "conversation.item.deleted": self._on_deleted,
            "response.done": self._on_response_done,
        }

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever())

    def observe(self, etype: str | None, frame: str) -> None:
        """Take note of one server frame of type `etype` (called for every frame: stay cheap)."""
        handler = self._handlers.get(etype)
        if handler is None:
            return
        try:
            handler(orjson.loads(frame))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            # A malformed event is the client's to see; it must not break recording.
            logger.warning("recorder skipped a malformed %s event", etype)
            return
        self._idle.clear()
        self._dirty.set()

    def reply_latency(self, first_audio: str, latency: TurnLatency) -> None:
        """Store `latency` (measured by the metrics.ConversationMeter) on the assistant item
        whose first audio delta is `first_audio` (once per turn, so parsing it costs nothing)."""
        try:
            item_id = orjson.loads(first_audio).get("item_id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        self._change(
            item_id,
            latency_ms=latency.first_audio_ms,
            transcript_ms=latency.transcript_ms,
            first_token_ms=latency.first_token_ms,
        )
        self._idle.clear()
        self._dirty.set()

    async def flushed(self, timeout: float) -> bool:
        """Wait until everything observed so far has been written (at most `timeout` s);
        False if it has not been (the database is slow or away: it stays held, not lost)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Store everything observed so far; returns when it is in the database or, if the
        database does not answer within FINAL_WRITE_TIMEOUT, in the spill file (`spilled_to`)."""
        self._closing = True
        self._close_requested.set()
        self._dirty.set()
        if self._writer is not None:
            await self._writer

    def end_detail(self, detail: str) -> str:
        """`detail` for the conversation's end, saying where its transcript went if it spilled
        (call after close())."""
        if self.spilled_to is None:
            return detail
        note = f"transcript spilled to {self.spilled_to} (manage.py replay_spilled_transcripts)"
        return f"{detail}; {note}" if detail else note

    # --- event handlers ----------------------------------------------------------------

    def _change(
        self,
        item_id,
        *,
        previous_item_id=None,
        role=None,
        kind=None,
        text=None,
        status: str | None = None,
        audio_end_ms=None,
        latency_ms: int | None = None,
        transcript_ms: int | None = None,
        first_token_ms: int | None = None,
        segment: dict | None = None,
        out_of_band: bool | None = None,
    ) -> None:
        """Note what was learned about one item, each raw field checked and clamped first."""
        item_id = clamp.identifier(item_id)
        if item_id is None or (self.replayed_prefix and item_id.startswith(self.replayed_prefix)):
            return
        self._batch.items.append(
            ItemChange(
                item_id=item_id,
                previous_item_id=(
                    None if previous_item_id is None else clamp.identifier(previous_item_id) or ""
                ),
                role=clamp.role(role),
                kind=clamp.label(kind, length=clamp.KIND_LENGTH),
                text=clamp.text(text),
                status=status,
                audio_end_ms=clamp.whole_number(audio_end_ms),
                latency_ms=clamp.whole_number(latency_ms),
                transcript_ms=clamp.whole_number(transcript_ms),
                first_token_ms=clamp.whole_number(first_token_ms),
                segment=segment,
                out_of_band=out_of_band,
            )
        )

    def _on_session(self, event: dict) -> None:
        session = _dict(event.get("session"))
        voice = _dict(_dict(session.get("audio")).get("output")).get("voice")
        self._batch.voice = clamp.label(voice, length=clamp.VOICE_LENGTH) or self._batch.voice
        self._batch.upstream_session_id = (
            clamp.identifier(session.get("id"), length=clamp.SESSION_ID_LENGTH)
            or self._batch.upstream_session_id
        )
        transcription = _dict(_dict(_dict(session.get("audio")).get("input")).get("transcription"))
        if isinstance(transcription.get("model"), str):
            self._transcription_model = transcription["model"]

    def _on_committed(self, event: dict) -> None:
        self._change(
            event.get("item_id"),
            previous_item_id=event.get("previous_item_id") or "",
            role=Role.USER,
            kind="message",
        )

    def _on_item(self, event: dict) -> None:
        item = _dict(event.get("item"))
        kind = item.get("type") if isinstance(item.get("type"), str) else "message"
        fields = {"kind": kind, "role": item.get("role") or _ITEM_ROLES.get(kind, Role.ASSISTANT)}
        if "previous_item_id" in event:
            fields["previous_item_id"] = event.get("previous_item_id") or ""
        text = _content_text(item)
        if text is not None:
            fields["text"] = text
        # conversation.item.added announces an item before its content: only .done is final.
        status = _status(item.get("status"))
        if status and (
            event["type"] != "conversation.item.added" or status != ItemStatus.COMPLETED
        ):
            fields["status"] = status
        self._change(item.get("id"), **fields)

    def _on_user_partial(self, event: dict) -> None:
        """A transcription delta: the words so far stand in until the final transcript."""
        item_id, delta = event.get("item_id"), event.get("delta")
        if not isinstance(item_id, str) or not isinstance(delta, str):
            return
        if item_id not in self._partials and len(self._partials) >= MAX_PARTIALS:
            self._partials.pop(next(iter(self._partials)))  # the oldest, long stalled
        words = self._partials[item_id] = self._partials.get(item_id, "") + delta
        self._change(item_id, role=Role.USER, text=words)

    def _on_user_segment(self, event: dict) -> None:
        """A diarized transcription's segment: who said what, and when."""
        segment = {
            "id": clamp.identifier(event.get("id")) or "",
            "speaker": clamp.label(event.get("speaker"), length=32) or "",
            "text": clamp.text(event.get("text")) or "",
            "start": clamp.seconds(event.get("start")),
            "end": clamp.seconds(event.get("end")),
        }
        self._change(event.get("item_id"), role=Role.USER, segment=segment)

    def _on_idle_timeout(self, event: dict) -> None:
        """The user stayed silent past idle_timeout_ms: the turn the service made for it."""
        self._change(event.get("item_id"), role=Role.USER, kind="idle_timeout")

    def _on_response_created(self, event: dict) -> None:
        response = _dict(event.get("response"))
        if "conversation_id" in response and response["conversation_id"] is None:
            self._out_of_band.append(response.get("id"))

    def _on_user_transcript(self, event: dict) -> None:
        self._partials.pop(event.get("item_id"), None)
        if event.get("usage") and self.price_model:
            self._bill_transcription(event)
        self._change(
            event.get("item_id"),
            role=Role.USER,
            text=event.get("transcript") or "",
            status=ItemStatus.COMPLETED,
        )

    def _on_transcription_failed(self, event: dict) -> None:
        self._change(event.get("item_id"), role=Role.USER, status=ItemStatus.TRANSCRIPTION_FAILED)

    def _on_assistant_transcript(self, event: dict) -> None:
        self._on_reply(event, event.get("transcript"))

    def _on_assistant_text(self, event: dict) -> None:
        self._on_reply(event, event.get("text"))

    def _on_reply(self, event: dict, text) -> None:
        if event.get("response_id") in self._out_of_band:
            # Never added to the conversation: no conversation.item.done will complete it.
            self._change(
                event.get("item_id"),
                role=Role.ASSISTANT,
                text=text or "",
                out_of_band=True,
                status=ItemStatus.COMPLETED,
            )
            return
        self._change(event.get("item_id"), role=Role.ASSISTANT, text=text or "")

    def _on_truncated(self, event: dict) -> None:
        self._change(
            event.get("item_id"),
            status=ItemStatus.TRUNCATED,
            audio_end_ms=event.get("audio_end_ms"),
        )

    def _on_deleted(self, event: dict) -> None:
        self._change(event.get("item_id"), status=ItemStatus.DELETED)

    def _on_response_done(self, event: dict) -> None:
        response = _dict(event.get("response"))
        for item in _list(response.get("output")):
            if isinstance(item, dict) and item.get("status") == "incomplete":
                self._change(item.get("id"), status=ItemStatus.INTERRUPTED)
        if response.get("usage"):
            counts = TokenCounts.from_usage(response["usage"])
            cost = counts.cost(self.price_model)
            self.cost_usd += cost
            metrics.cost_added(self.price_model, cost)
            self._batch.usage.append(
                UsageChange(
                    response_id=clamp.identifier(
                        response.get("id"), length=clamp.RESPONSE_ID_LENGTH
                    )
                    or "",
                    status=clamp.label(response.get("status"), length=clamp.RESPONSE_STATUS_LENGTH)
                    or "",
                    counts=counts,
                )
            )

    def _bill_transcription(self, event: dict) -> None:
        """An input transcription is billed at its own model's rates, apart from the response."""
        model = self._transcription_model
        try:
            cost = services.transcription_cost(model, event["usage"])
        except services.UnpricedModel:
            logger.warning("transcription model %r has no price: its cost is not counted", model)
            return
        self.cost_usd += cost
        metrics.cost_added(model, cost)
        item_id = clamp.identifier(event.get("item_id")) or ""
        self._batch.usage.append(
            UsageChange(
                response_id=f"transcription:{item_id}"[: clamp.RESPONSE_ID_LENGTH],
                status="transcription",
                counts=TokenCounts.from_usage(event["usage"]),
                cost=cost,
            )
        )

    # --- the writer ----------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            if self._batch.is_empty():
                self._idle.set()
            await self._dirty.wait()
            self._dirty.clear()
            batch, self._batch = self._batch, RecorderBatch()
            if not batch.is_empty():
                self._backlog.set(batch.size())
                await self._store_or_hold(batch)
                # What is left is held for a retry (spilled or stored: nothing).
                self._backlog.set(self._batch.size() if self._failures else 0)
            if self._closing and not self._dirty.is_set():
                self._backlog.set(0)
                return

    async def _store_or_hold(self, batch: RecorderBatch) -> None:
        """Store `batch`; what the database cannot take now is held ahead of what came since
        and retried after a pause, or spilled to disk when too much is held or it is over."""
        if self.spilled_to is not None:
            # Once part of a conversation is on disk, the rest follows it there, so the replay
            # applies every change in the order it was learned.
            await self._spill(batch)
            return
        held = await self._store(batch)
        if held.is_empty():
            self._failures = 0
            return
        self._failures += 1
        self._batch = held.followed_by(self._batch)
        if self._closing or self._batch.size() > self.MAX_HELD:
            batch, self._batch = self._batch, RecorderBatch()
            await self._spill(batch)
            return
        pause = min(self.RETRY_PAUSE * 2 ** (self._failures - 1), self.MAX_RETRY_PAUSE)
        with contextlib.suppress(TimeoutError):  # a close cuts the pause short
            await asyncio.wait_for(self._close_requested.wait(), pause)
        self._dirty.set()

    async def _store(self, batch: RecorderBatch) -> RecorderBatch:
        """Write `batch`, row by row if the database refuses it whole; returns what it could
        not take because it is unavailable (a row it refuses on its own is set aside)."""
        try:
            await self._write(batch)
            return RecorderBatch()
        except DATABASE_UNAVAILABLE:
            logger.warning("transcript batch held: the database is unavailable", exc_info=True)
            return batch
        except Exception:
            logger.exception("the database refused a transcript batch; storing it row by row")
        rows = batch.rows()
        for index, row in enumerate(rows):
            try:
                await self._write(row)
            except DATABASE_UNAVAILABLE:
                held = RecorderBatch()
                for rest in rows[index:]:
                    held = held.followed_by(rest)
                return held
            except Exception:
                logger.exception("the database refused a transcript row; set aside on disk")
                await self._append(self._spill_path(REFUSED_SUFFIX), row)
        return RecorderBatch()

    async def _write(self, batch: RecorderBatch) -> None:
        """Write `batch` within WRITE_TIMEOUT, or FINAL_WRITE_TIMEOUT once close() is called
        (also for a write already waiting then: a shutdown must not outwait the database).

        A write still running after its timeout, and the retry (or the replay of the spill),
        both apply the batch; that is harmless: services.recorder_batch_write is idempotent.
        """
        write = asyncio.ensure_future(
            database_sync_to_async(services.recorder_batch_write)(
                conversation_id=self.conversation_id, model=self.price_model, batch=batch
            )
        )
        closing = asyncio.ensure_future(self._close_requested.wait())
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait(
                {write, closing}, timeout=self.WRITE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if write not in done and closing in done:
                done, _ = await asyncio.wait({write}, timeout=self.FINAL_WRITE_TIMEOUT)
        finally:
            closing.cancel()
        if write not in done:
            write.cancel()
            raise TimeoutError("the database did not answer in time")
        write.result()
        metrics.RECORDER_WRITE_SECONDS.observe(time.monotonic() - started)

    async def _spill(self, batch: RecorderBatch) -> None:
        path = self._spill_path(SPILL_SUFFIX)
        if self.spilled_to is None:
            logger.error(
                "the database is unavailable: conversation %s's transcript goes to %s "
                "(manage.py replay_spilled_transcripts stores it)",
                self.conversation_id,
                path,
            )
        self.spilled_to = path
        await self._append(path, batch)

    def _spill_path(self, suffix: str) -> Path:
        return Path(settings.TRANSCRIPT_SPILL_DIR) / f"conversation-{self.conversation_id}{suffix}"

    async def _append(self, path: Path, batch: RecorderBatch) -> None:
        record = {
            "conversation_id": self.conversation_id,
            "model": self.price_model,
            "at": now().isoformat(),
            "batch": batch.as_dict(),
        }
        try:
            await asyncio.to_thread(_append_line, path, orjson.dumps(record))
        except OSError:
            # Nowhere left to keep it: the log is the last copy.
            logger.exception("could not spill a transcript batch: %s", orjson.dumps(record))


# A spilled conversation's file, and the file of rows the database refused on their own (kept
# for a person to look at; the replay leaves them alone).
SPILL_SUFFIX = ".jsonl"
REFUSED_SUFFIX = ".refused.jsonl"
# Raised while the database cannot be reached or is locked; anything else is about the data.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, TimeoutError)


def _append_line(path: Path, line: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as file:
        file.write(line + b"\n")
        file.flush()
        os.fsync(file.fileno())


def replay_spill_file(path: Path, *, source: str) -> int:
    """Store a spill file's batches in order (sync; manage.py replay_spilled_transcripts), and
    note `source` (its name) in each conversation's end detail.

    Returns how many batches it applied. Safe to run twice: the writes are idempotent.
    """
    applied = 0
    conversation_ids = set()
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                # Only a line cut short by a crash while it was written: it was never whole.
                logger.warning("%s:%d is not a whole batch; skipped", path, number)
                continue
            if not Conversation.objects.filter(
                pk=record["conversation_id"], deleted__isnull=True
            ).exists():
                continue  # its owner deleted it (and its transcript) meanwhile
            conversation_ids.add(record["conversation_id"])
            services.recorder_batch_write(
                conversation_id=record["conversation_id"],
                model=record["model"],
                batch=RecorderBatch.from_dict(record["batch"]),
                stamp=datetime.fromisoformat(record["at"]),
            )
            applied += 1
    for conversation_id in conversation_ids:
        services.conversation_note_replayed(conversation_id=conversation_id, source=source)
    return applied
