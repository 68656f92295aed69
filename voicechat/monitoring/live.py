"""Live monitoring across server processes, through the channel layer.

Each conversation publishes a few events: when it starts and ends (to MONITOR_GROUP, which
every open monitor page joins), and its transcript lines and status changes (to its own watch
group, joined by the pages watching it). Never one per audio frame: `observe()` returns after one
dict lookup for everything else, and sending happens in a task of its own, so the relay never
waits on Redis. Staff end a conversation by sending a message to the channel name the holding
process stored on its Conversation row, whichever process that is (EndRequests).
"""

import asyncio
import collections
import logging
import weakref
from collections.abc import Awaitable, Callable

import orjson
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from voicechat.models import Conversation

logger = logging.getLogger(__name__)

MONITOR_GROUP = "voicechat.monitoring.live"
# Events held for the layer when it is slow; beyond this the newest are dropped (logged).
MAX_QUEUED = 1000

# Status changes worth showing, by server event type (no parsing needed).
_STATUS = {
    "input_audio_buffer.speech_started": "speech_started",
    "input_audio_buffer.speech_stopped": "speech_stopped",
    "response.created": "response_started",
    "response.done": "response_done",
}


def watch_group(conversation_id: int) -> str:
    """The group of the pages watching one conversation."""
    return f"voicechat.watch.{conversation_id}"


def conversation_summary(conversation: Conversation) -> dict:
    """What a monitor page shows about one conversation in its list."""
    return {
        "id": conversation.pk,
        "user": conversation.user.get_username(),
        "backend": conversation.backend,
        "model": conversation.model,
        "started": conversation.started.isoformat(),
        "process": conversation.process,
        "ended": conversation.ended.isoformat() if conversation.ended else None,
        "end_reason": conversation.end_reason or None,
    }


def _line(item_id, role: str, text) -> dict | None:
    if not isinstance(item_id, str) or not isinstance(text, str):
        return None
    return {"item_id": item_id, "role": role, "text": text}


def _user_transcript(event: dict) -> dict | None:
    return _line(event.get("item_id"), "user", event.get("transcript"))


def _assistant_transcript(event: dict) -> dict | None:
    return _line(event.get("item_id"), "assistant", event.get("transcript"))


def _assistant_text(event: dict) -> dict | None:
    return _line(event.get("item_id"), "assistant", event.get("text"))


def _typed_message(event: dict) -> dict | None:
    """A message a client typed (user or system); assistant items come from their .done events."""
    item = event.get("item") or {}
    if item.get("type") != "message" or item.get("role") not in ("user", "system"):
        return None
    texts = [
        part.get("text")
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "input_text"
    ]
    texts = [text for text in texts if isinstance(text, str) and text]
    return _line(item.get("id"), item["role"], " ".join(texts)) if texts else None


# Transcript lines, by server event type: the same moments the recorder stores a line.
_LINES = {
    "conversation.item.input_audio_transcription.completed": _user_transcript,
    "response.output_audio_transcript.done": _assistant_transcript,
    "response.output_text.done": _assistant_text,
    "conversation.item.done": _typed_message,
}


class ConversationPublisher:
    """Publishes one conversation's lifecycle, lines and status to the channel layer."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.group = watch_group(conversation.pk)
        self.layer = get_channel_layer()
        self._queue: collections.deque[tuple[str, dict]] = collections.deque()
        self._ready = asyncio.Event()
        self._closing = False
        self._sender: asyncio.Task | None = None

    def start(self) -> None:
        if self.layer is None:
            return
        self._sender = asyncio.create_task(self._send_forever())
        self._put(MONITOR_GROUP, {"kind": "started", **conversation_summary(self.conversation)})

    def observe(self, etype: str | None, frame: str) -> None:
        """Called for every upstream frame: publish only lines and status changes."""
        status = _STATUS.get(etype)
        if status is not None:
            self._put(self.group, {"kind": "status", "status": status})
            return
        make_line = _LINES.get(etype)
        if make_line is None:
            return
        try:
            line = make_line(orjson.loads(frame))
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return
        if line is not None:
            self._put(self.group, {"kind": "line", **line})

    async def close(self, *, reason: str) -> None:
        """Announce the end to list and watchers, then send what is queued and stop."""
        if self._sender is None:
            return
        ended = {"kind": "ended", "end_reason": reason}
        self._put(self.group, ended)
        self._put(MONITOR_GROUP, ended)
        self._closing = True
        self._ready.set()
        try:
            # A dead layer must not hold a closing conversation for long.
            await asyncio.wait_for(asyncio.shield(self._sender), timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            self._sender.cancel()

    def _put(self, group: str, event: dict) -> None:
        if self._sender is None or self._closing:
            return
        if len(self._queue) >= MAX_QUEUED:
            logger.warning("monitor queue full: dropped a %s event", event["kind"])
            return
        event["conversation"] = self.conversation.pk
        self._queue.append((group, event))
        self._ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                group, event = self._queue.popleft()
                try:
                    await self.layer.group_send(group, {"type": "monitor.event", "event": event})
                except Exception:
                    # Monitoring is best effort; the conversation goes on without it.
                    logger.warning("monitor event not published", exc_info=True)
            if self._closing:
                return


# --- what staff pages read and do ---------------------------------------------------------


def live_conversations() -> list[dict]:
    """Summaries of every open conversation on every process, newest first."""
    return [
        conversation_summary(c) for c in Conversation.objects.live().select_related("user").recent()
    ]


def transcript_lines(conversation_id: int) -> dict | None:
    """A conversation's stored lines so far, in conversation order (None if it does not exist)."""
    conversation = Conversation.objects.select_related("user").filter(pk=conversation_id).first()
    if conversation is None:
        return None
    return {
        **conversation_summary(conversation),
        "lines": [
            {"item_id": item.item_id, "role": item.role, "text": item.text}
            for item in conversation.ordered_items()
            if item.text
        ],
    }


async def request_end(conversation_id: int, *, by: str) -> bool:
    """Ask the process holding an open conversation, whichever it is, to end it."""
    conversation = await database_sync_to_async(
        Conversation.objects.active().filter(pk=conversation_id).first
    )()
    layer = get_channel_layer()
    if conversation is None or not conversation.channel_name or layer is None:
        return False
    await layer.send(
        conversation.channel_name,
        {"type": END_REQUEST, "conversation": conversation_id, "by": by},
    )
    logger.info("staff %s asked to end conversation %s", by, conversation_id)
    return True


# --- where end requests arrive: one reader per process ------------------------------------

END_REQUEST = "gateway.end"
_IDLE = "gateway.idle"  # sent to itself by the last conversation leaving: the reader may stop


class EndRequests:
    """Staff "End" requests for the conversations of this process (of one event loop).

    One channel and one reading task serve all of them. A reader per conversation, cancelled
    when its conversation ended, is what channels_redis cannot take: a receive() cancelled at
    the wrong moment waits out its 5 s BZPOPMIN, and under load one stayed "cancelling" for
    good, so the conversation's end was never stored (issue 13: a staff end across processes
    hung; SIGTERM under `serve` waited for such tasks). This reader is never cancelled: once
    the last conversation has left, a message it sends itself lets it return, and the next
    conversation starts a new one on the same channel.
    """

    def __init__(self, layer) -> None:
        self.layer = layer
        self.channel = ""
        self._ends: dict[int, Callable[[str], Awaitable[None]]] = {}
        self._reader: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # ends in progress, kept from the GC

    async def channel_name(self) -> str:
        """The address to store on a conversation's row, for request_end() to use."""
        if not self.channel:
            self.channel = await self.layer.new_channel()
        return self.channel

    def register(self, conversation_id: int, end: Callable[[str], Awaitable[None]]) -> None:
        """Route end requests for `conversation_id` to end(by), run in a task of its own."""
        self._ends[conversation_id] = end
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

    def handler(self, conversation_id: int) -> Callable[[str], Awaitable[None]] | None:
        """The end(by) registered for `conversation_id`: None once it has ended (or never was)."""
        return self._ends.get(conversation_id)

    async def unregister(self, conversation_id: int) -> None:
        self._ends.pop(conversation_id, None)
        if not self._ends and self.channel:
            try:
                await self.layer.send(self.channel, {"type": _IDLE})
            except Exception:
                logger.warning("could not stop the end-request reader", exc_info=True)

    async def _read(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception:
                logger.warning("channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == _IDLE:
                if not self._ends:
                    return
                continue
            end = self._ends.get(message.get("conversation"))
            if end is None:
                continue  # already ended here, or a stale request
            task = asyncio.create_task(end(str(message.get("by") or "staff")[:150]))
            self._running.add(task)
            task.add_done_callback(self._end_done)

    def _end_done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a staff end failed", exc_info=task.exception())


_end_requests: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EndRequests]" = (
    weakref.WeakKeyDictionary()
)


def end_requests() -> EndRequests | None:
    """This event loop's EndRequests (None without a channel layer: nothing to reach)."""
    layer = get_channel_layer()
    if layer is None:
        return None
    loop = asyncio.get_running_loop()
    requests = _end_requests.get(loop)
    if requests is None or requests.layer is not layer:
        requests = _end_requests[loop] = EndRequests(layer)
    return requests
