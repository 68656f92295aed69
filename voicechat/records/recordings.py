"""Recordings: both sides' audio of a conversation, stored per turn, when recording is on.

Off by default (RECORDING_ENABLED, or a user's own override in UserLimits). The gateway hands a
ConversationRecorder every client frame it relays and every server event it observes; the
recorder keeps the PCM16 of the turn being spoken, and once a turn is complete (the user's input
committed as an item, the assistant's audio of an item done) an encoder thread compresses it to
Opus in Ogg (PyAV, already a dependency of faster-whisper) and saves it through the
"recordings" storage (STORAGES["recordings"], so a deployer can put it on object storage).

Memory is bounded: at most RECORDING_MAX_TURN_SECONDS of audio are kept per open turn (the
user's pending input and each assistant item, at most MAX_OPEN_REPLIES of them; audio beyond
that is dropped: a reply keeps its start, the user's input its latest part), and at most
MAX_QUEUED_TURNS finished turns wait for the encoder, which holds one more: a turn that finds
the queue full is dropped and logged. So one conversation holds at most
1 + MAX_OPEN_REPLIES + MAX_QUEUED_TURNS + 1 = 8 turns of audio: 8 x 2 minutes x 48 kB/s, about
46 MB in the worst case, a few hundred kB in a normal exchange.

A storage that fails (a full disk: OSError) is logged and recording stops for that
conversation; the conversation itself goes on. Only PCM16 at 24 kHz (audio/pcm, the default) is
recorded: a side set to G.711 (audio/pcmu, audio/pcma) is not.
"""

import asyncio
import base64
import binascii
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import orjson
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils.timezone import now

from voicechat.enums import Role
from voicechat.models import Conversation, Recording, UserLimits, recordings_storage
from voicechat.protocol import peek_type

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # the Realtime API's audio/pcm rate
BYTES_PER_SECOND = SAMPLE_RATE * 2  # PCM16 mono
BYTES_PER_MS = BYTES_PER_SECOND // 1000
MAX_OPEN_REPLIES = 2  # assistant items being spoken at once (one, in practice)
MAX_QUEUED_TURNS = 4
OPUS_BIT_RATE = 32000  # speech at 24 kHz: clear, about 4 kB per second
CONTENT_TYPE = "audio/ogg"
_ID_LIMIT = 64  # longest item id kept (the TranscriptItem column's size)

# Encoding is CPU work: a thread of its own per process, so it never runs on the event loop
# nor holds up the thread the ORM calls share. One thread: turns are encoded in order.
_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-encoder")


def recording_enabled(user) -> bool:
    """Whether `user`'s conversations are recorded: their own setting, else the site's."""
    override = UserLimits.objects.filter(user=user).values_list("record_audio", flat=True).first()
    return settings.RECORDING_ENABLED if override is None else override


def encode_opus(pcm: bytes) -> bytes:
    """PCM16 mono 24 kHz as Opus in an Ogg file."""
    import av  # here: the gateway imports this module, and only recording encodes

    samples = len(pcm) // 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = OPUS_BIT_RATE
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.sample_rate = SAMPLE_RATE
        frame.planes[0].update(pcm[: samples * 2])
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _item_id(value) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _ID_LIMIT else None


def _pcm(value) -> bytes | None:
    """The PCM16 of a base64 field (whole samples), or None when it is not base64 text."""
    if not isinstance(value, str):
        return None
    try:
        pcm = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return pcm[: len(pcm) - len(pcm) % 2]


class _Turn:
    """One side's audio of one turn, at most RECORDING_MAX_TURN_SECONDS of it: the first ones
    (a reply), or the latest ones (`latest`: the user's input, which may be a long silence
    before the words)."""

    def __init__(self, *, latest: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.latest = latest

    def add(self, pcm: bytes) -> None:
        limit = settings.RECORDING_MAX_TURN_SECONDS * BYTES_PER_SECOND
        if not self.latest:
            pcm = pcm[: max(0, limit - self.size)]
        if pcm:
            self.chunks.append(pcm)
            self.size += len(pcm)
        if self.size > limit:
            self.keep_last(limit)

    def keep_last(self, size: int) -> None:
        """Drop all but the last `size` bytes (an even number: whole samples)."""
        while self.chunks and self.size - len(self.chunks[0]) >= size:
            self.size -= len(self.chunks.pop(0))
        if self.chunks and self.size > size:
            self.chunks[0] = self.chunks[0][self.size - size :]
            self.size = size

    def audio(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class _Finished:
    item_id: str
    role: Role
    pcm: bytes


class ConversationRecorder:
    """Cuts one conversation's audio into turns and stores each, off the relay path."""

    def __init__(self, *, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.stopped = False  # storage failed: nothing more is recorded
        self._user = _Turn(latest=True)  # input audio since the last commit or clear
        # Input audio appended in this upstream session, in bytes: where its speech_started
        # audio_start_ms falls.
        self._appended = 0
        self._replies: dict[str, _Turn] = {}  # assistant audio by output item id
        self._queue: asyncio.Queue[_Finished | None] = asyncio.Queue(MAX_QUEUED_TURNS)
        self._writer: asyncio.Task | None = None
        # Formats each side is in (session.created/updated): only audio/pcm is recorded.
        self._pcm_in = self._pcm_out = True

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever())

    # --- the relay path: note audio, cut turns; never waits ---------------------------------

    def client_frame(self, frame: str) -> None:
        """A client event the gateway relays upstream."""
        if self.stopped:
            return
        etype = peek_type(frame)
        if etype == "input_audio_buffer.append":
            pcm = _pcm(_event(frame).get("audio")) if self._pcm_in else None
            if pcm:
                self._user.add(pcm)
                self._appended += len(pcm)
        elif etype == "input_audio_buffer.clear":
            self._user = _Turn(latest=True)
        elif etype == "conversation.item.create":
            self._client_item(_event(frame).get("item"))

    def _client_item(self, item) -> None:
        """A user message holding audio of its own (not the buffer's), saved under its id."""
        if not isinstance(item, dict) or not self._pcm_in:
            return
        item_id = _item_id(item.get("id"))
        content = item.get("content")
        if item_id is None or not isinstance(content, list):
            return  # an id the server will choose: no line to put it next to yet
        turn = _Turn()
        for part in content:
            if isinstance(part, dict) and part.get("type") == "input_audio":
                turn.add(_pcm(part.get("audio")) or b"")
        if turn.size:
            self._finish(item_id, Role.USER, turn)

    def server_event(self, etype: str | None, frame: str) -> None:
        """A server event the gateway relays to the client."""
        if self.stopped or etype not in _SERVER_EVENTS:
            return
        event = _event(frame)
        if etype == "response.output_audio.delta":
            item_id = _item_id(event.get("item_id"))
            pcm = _pcm(event.get("delta")) if self._pcm_out else None
            if item_id is None or not pcm:
                return
            turn = self._replies.get(item_id)
            if turn is None:
                if len(self._replies) >= MAX_OPEN_REPLIES:
                    return
                turn = self._replies[item_id] = _Turn()
            turn.add(pcm)
        elif etype in ("response.output_audio.done", "response.output_item.done"):
            item = event.get("item")
            item_id = _item_id(item.get("id") if isinstance(item, dict) else event.get("item_id"))
            turn = self._replies.pop(item_id, None)
            if turn is not None:
                self._finish(item_id, Role.ASSISTANT, turn)
        elif etype == "input_audio_buffer.speech_started":
            # The words start here: the silence before them is not kept.
            start_ms = event.get("audio_start_ms")
            if isinstance(start_ms, int) and 0 <= start_ms * BYTES_PER_MS <= self._appended:
                self._user.keep_last(self._appended - start_ms * BYTES_PER_MS)
        elif etype == "input_audio_buffer.committed":
            turn, self._user = self._user, _Turn(latest=True)
            item_id = _item_id(event.get("item_id"))
            if item_id is not None and turn.size:
                self._finish(item_id, Role.USER, turn)
        elif etype == "input_audio_buffer.cleared":
            self._user = _Turn(latest=True)
        else:  # session.created / session.updated: which formats are PCM
            if etype == "session.created":  # a fresh upstream session counts from 0
                self._appended = self._user.size
            self._note_formats(event.get("session"))

    def _note_formats(self, session) -> None:
        audio = session.get("audio") if isinstance(session, dict) else None
        if not isinstance(audio, dict):
            return
        for side in ("input", "output"):
            config = audio.get(side)
            fmt = config.get("format") if isinstance(config, dict) else None
            if isinstance(fmt, dict) and "type" in fmt:
                pcm = fmt.get("type") == "audio/pcm"
                setattr(self, "_pcm_in" if side == "input" else "_pcm_out", pcm)

    def _finish(self, item_id: str, role: Role, turn: _Turn) -> None:
        try:
            self._queue.put_nowait(_Finished(item_id, role, turn.audio()))
        except asyncio.QueueFull:
            logger.warning(
                "recording of %s turn %s dropped: the encoder is behind (conversation %s)",
                role,
                item_id,
                self.conversation_id,
            )

    # --- off the relay path: encode, store -----------------------------------------------------

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while (turn := await self._queue.get()) is not None:
            if self.stopped:
                continue
            try:
                name, duration_ms = await loop.run_in_executor(_encoder, self._save_file, turn)
                await database_sync_to_async(Recording.objects.create)(
                    conversation_id=self.conversation_id,
                    item_id=turn.item_id,
                    role=turn.role,
                    file=name,
                    duration_ms=duration_ms,
                )
            except OSError:
                # A full disk (or a storage that is away): this conversation is no longer
                # recorded; the conversation itself goes on.
                logger.exception(
                    "recording stopped: could not store audio (conversation %s)",
                    self.conversation_id,
                )
                self._stop()
                continue
            except Exception:
                logger.exception("could not record a turn (conversation %s)", self.conversation_id)

    def _save_file(self, turn: _Finished) -> tuple[str, int]:
        """Encode and store one turn (in the encoder thread); returns the stored name."""
        name = f"{self.conversation_id}/{turn.role}-{turn.item_id}.ogg"
        stored = recordings_storage().save(name, ContentFile(encode_opus(turn.pcm)))
        return stored, len(turn.pcm) * 1000 // BYTES_PER_SECOND

    def _stop(self) -> None:
        self.stopped = True
        self._user = _Turn(latest=True)
        self._replies.clear()

    async def close(self) -> None:
        """Store what the assistant said until the end (its last reply may have been cut off),
        then wait until every finished turn is stored."""
        if not self.stopped:
            for item_id, turn in list(self._replies.items()):
                if turn.size:
                    self._finish(item_id, Role.ASSISTANT, turn)
        self._replies.clear()
        if self._writer is None:
            return
        await self._queue.put(None)
        await self._writer


# The server events the recorder reads; every other one is passed over at a dict lookup.
_SERVER_EVENTS = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_item.done",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "session.created",
        "session.updated",
    }
)


def _event(frame: str) -> dict:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


# --- keeping and erasing ----------------------------------------------------------------------


def recordings_delete(*, conversation: Conversation) -> int:
    """Erase a conversation's recordings, files first; returns how many there were."""
    return _delete(Recording.objects.filter(conversation=conversation))


def recordings_purge(*, days: int) -> int:
    """Erase recordings older than `days` days; returns how many."""
    return _delete(Recording.objects.filter(created__lt=now() - timedelta(days=days)))


def recordings_orphans_delete() -> int:
    """Erase files whose conversation is gone altogether (deleted in admin, or with its user):
    the database cascade removed their rows, but no database removes files. Returns how many."""
    storage = recordings_storage()
    try:
        folders, _ = storage.listdir("")
    except FileNotFoundError:
        return 0  # nothing was ever recorded
    ids = {int(folder) for folder in folders if folder.isdigit()}
    gone = ids - set(Conversation.objects.filter(pk__in=ids).values_list("pk", flat=True))
    count = 0
    for pk in sorted(gone):
        for name in storage.listdir(str(pk))[1]:
            storage.delete(f"{pk}/{name}")
            count += 1
    return count


def _delete(recordings) -> int:
    storage = recordings_storage()
    count = 0
    for recording in recordings.iterator():
        # The file first: a row without its file is only a broken player, a file without its
        # row would never be found again.
        storage.delete(recording.file.name)
        with transaction.atomic():
            recording.delete()
        count += 1
    return count
