"""The conversation: ordered GA items plus what the engine knows about each (audio, timing)."""

import asyncio
from dataclasses import dataclass, field

from voicechat.local_engine.events import ClientEventError

# Audio is 48 kB a second; an hour-long conversation would hold ~170 MB of it. Only the newest
# items keep their bytes (for conversation.item.retrieve); every item keeps its duration.
KEEP_AUDIO_ITEMS = 8


@dataclass
class Segment:
    """One spoken sentence of an assistant audio item, placed on the item's audio timeline."""

    text: str
    start_ms: float
    end_ms: float


@dataclass(eq=False)
class Entry:
    """A conversation item (GA shape, no audio) and the engine's private facts about it."""

    item: dict
    audio: bytes = b""  # user input audio (PCM16 24 kHz) or assistant output audio
    audio_ms: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    # Resolves to the transcript of a user audio item (STT runs in the background).
    transcript: asyncio.Future | None = None
    previous_item_id: str | None = None  # as reported when the item was added

    @property
    def id(self) -> str:
        return self.item["id"]


class Conversation:
    """Items in conversation order; lookups by id."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._by_id: dict[str, Entry] = {}

    def __iter__(self):
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def last_id(self) -> str | None:
        return self._entries[-1].id if self._entries else None

    def get(self, item_id: str) -> Entry | None:
        return self._by_id.get(item_id)

    def require(self, item_id: str, *, action: str, event_id: str | None) -> Entry:
        """The entry, or the error OpenAI gives for an unknown item id (`item_<action>_…`)."""
        entry = self._by_id.get(item_id)
        if entry is None:
            raise ClientEventError(
                f"Error {action.rstrip('e')}ing item: the item with id '{item_id}' does not exist.",
                code=f"item_{action}_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        return entry

    def contains(self, item_id: str) -> bool:
        return item_id in self._by_id

    def insert(self, entry: Entry, *, after: str | None, event_id: str | None = None) -> str | None:
        """Insert after `after` (None: append; "root": at the start); returns the previous id."""
        if entry.id in self._by_id:
            raise ClientEventError(
                f"Item with id '{entry.id}' already exists.",
                code="item_already_exists",
                param="item.id",
                event_id=event_id,
            )
        if after is None:
            index = len(self._entries)
        elif after == "root":
            index = 0
        else:
            previous = self._by_id.get(after)
            if previous is None:
                raise ClientEventError(
                    f"Invalid 'previous_item_id': the item with id '{after}' does not exist.",
                    code="previous_item_not_found",
                    param="previous_item_id",
                    event_id=event_id,
                )
            index = self._entries.index(previous) + 1
        self._entries.insert(index, entry)
        self._by_id[entry.id] = entry
        return self._entries[index - 1].id if index > 0 else None

    def prune_audio(self, keep: int = KEEP_AUDIO_ITEMS) -> None:
        """Drop the audio bytes of all but the newest `keep` audio items (durations stay)."""
        with_audio = [e for e in self._entries if e.audio]
        for entry in with_audio[:-keep] if keep else with_audio:
            entry.audio = b""

    def delete(self, item_id: str) -> None:
        entry = self._by_id.pop(item_id)
        self._entries.remove(entry)
