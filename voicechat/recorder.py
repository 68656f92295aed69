"""Turns the server events of one conversation into stored transcript lines and usage.

`observe()` runs on the relay path for every upstream frame, so it only peeks at the type and
returns at once for audio and deltas. What it learns goes into a pending batch; one writer task
stores batches through the sync ORM in a worker thread, so the relay never waits on the database.
While a batch is being written, new changes collect in the next one (natural batching).
"""

import asyncio
import logging
from decimal import Decimal

import orjson
from channels.db import database_sync_to_async

from voicechat import services
from voicechat.models import ItemStatus, Role
from voicechat.services import ItemChange, RecorderBatch, TokenCounts

logger = logging.getLogger(__name__)

_ITEM_ROLES = {"function_call": Role.ASSISTANT, "function_call_output": Role.TOOL}
_ITEM_STATUSES = {
    "completed": ItemStatus.COMPLETED,
    "in_progress": ItemStatus.IN_PROGRESS,
    "incomplete": ItemStatus.INTERRUPTED,
}


def _content_text(item: dict) -> str | None:
    """The readable text of an item's content parts, or None when it has none yet."""
    if item.get("type") == "function_call":
        return f"{item.get('name', '')}({item.get('arguments') or ''})"
    if item.get("type") == "function_call_output":
        return item.get("output") or ""
    parts = [
        part.get("text") or part.get("transcript")
        for part in item.get("content") or ()
        if isinstance(part, dict)
    ]
    parts = [part for part in parts if part]
    return " ".join(parts) if parts else None


class TranscriptRecorder:
    def __init__(self, *, conversation_id: int, price_model: str) -> None:
        """`price_model` names the REALTIME_PRICES entry usage is billed at ("" = free)."""
        self.conversation_id = conversation_id
        self.price_model = price_model
        self._batch = RecorderBatch()
        # Estimated cost of the responses seen so far, for the live budget check.
        self.cost_usd = Decimal(0)
        self._dirty = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task | None = None
        self._handlers = {
            "session.created": self._on_session,
            "session.updated": self._on_session,
            "input_audio_buffer.committed": self._on_committed,
            "conversation.item.added": self._on_item,
            "conversation.item.created": self._on_item,
            "conversation.item.done": self._on_item,
            "conversation.item.retrieved": self._on_item,
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
        self._dirty.set()

    async def close(self) -> None:
        """Store everything observed so far; returns when it is in the database."""
        self._closing = True
        self._dirty.set()
        if self._writer is not None:
            await self._writer

    # --- event handlers ----------------------------------------------------------------

    def _change(self, item_id: str, **fields) -> None:
        if item_id:
            self._batch.items.append(ItemChange(item_id=item_id, **fields))

    def _on_session(self, event: dict) -> None:
        session = event.get("session") or {}
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        if isinstance(voice, str):
            self._batch.voice = voice
        if isinstance(session.get("id"), str):
            self._batch.upstream_session_id = session["id"]

    def _on_committed(self, event: dict) -> None:
        self._change(
            event.get("item_id"),
            previous_item_id=event.get("previous_item_id") or "",
            role=Role.USER,
            kind="message",
        )

    def _on_item(self, event: dict) -> None:
        item = event.get("item") or {}
        kind = item.get("type") or "message"
        fields = {"kind": kind, "role": item.get("role") or _ITEM_ROLES.get(kind, Role.ASSISTANT)}
        if "previous_item_id" in event:
            fields["previous_item_id"] = event.get("previous_item_id") or ""
        text = _content_text(item)
        if text is not None:
            fields["text"] = text
        # conversation.item.added announces an item before its content: only .done is final.
        status = _ITEM_STATUSES.get(item.get("status"))
        if status and (
            event["type"] != "conversation.item.added" or status != ItemStatus.COMPLETED
        ):
            fields["status"] = status
        self._change(item.get("id"), **fields)

    def _on_user_transcript(self, event: dict) -> None:
        self._change(
            event.get("item_id"),
            role=Role.USER,
            text=event.get("transcript") or "",
            status=ItemStatus.COMPLETED,
        )

    def _on_transcription_failed(self, event: dict) -> None:
        self._change(event.get("item_id"), role=Role.USER, status=ItemStatus.TRANSCRIPTION_FAILED)

    def _on_assistant_transcript(self, event: dict) -> None:
        self._change(event.get("item_id"), role=Role.ASSISTANT, text=event.get("transcript") or "")

    def _on_assistant_text(self, event: dict) -> None:
        self._change(event.get("item_id"), role=Role.ASSISTANT, text=event.get("text") or "")

    def _on_truncated(self, event: dict) -> None:
        self._change(
            event.get("item_id"),
            status=ItemStatus.TRUNCATED,
            audio_end_ms=int(event.get("audio_end_ms") or 0),
        )

    def _on_deleted(self, event: dict) -> None:
        self._change(event.get("item_id"), status=ItemStatus.DELETED)

    def _on_response_done(self, event: dict) -> None:
        response = event.get("response") or {}
        for item in response.get("output") or ():
            if isinstance(item, dict) and item.get("status") == "incomplete":
                self._change(item.get("id"), status=ItemStatus.INTERRUPTED)
        if response.get("usage"):
            self.cost_usd += TokenCounts.from_usage(response["usage"]).cost(self.price_model)
            self._batch.usage.append(
                {
                    "response_id": response.get("id") or "",
                    "status": response.get("status") or "",
                    "usage": response["usage"],
                }
            )

    # --- the writer ----------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            batch, self._batch = self._batch, RecorderBatch()
            if batch.items or batch.usage or batch.voice or batch.upstream_session_id:
                await self._write(batch)
            if self._closing and not self._dirty.is_set():
                return

    async def _write(self, batch: RecorderBatch) -> None:
        for attempt in range(3):
            try:
                await database_sync_to_async(services.recorder_batch_write)(
                    conversation_id=self.conversation_id, model=self.price_model, batch=batch
                )
                return
            except Exception:
                # A locked SQLite file or a failover: worth another try before giving up.
                logger.exception("storing transcript batch failed (attempt %d)", attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
