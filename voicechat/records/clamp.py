"""Values taken from upstream events, checked for type and clamped to what the tables hold.

The provider (or the offline engine, or whatever sits at OPENAI_REALTIME_URL) is trusted to
speak the protocol, not to keep every field the size and type the database wants: one 100-character
item id or a negative `audio_end_ms` used to make the database refuse a whole transcript batch
(issue 13). Each function takes one raw JSON value and returns one that fits its column.
"""

import hashlib
import math

import orjson

from voicechat.enums import Role
from voicechat.models import Conversation, TranscriptItem, UsageRecord

# The largest value a PositiveIntegerField holds on every backend (PostgreSQL's `integer`).
MAX_WHOLE_NUMBER = 2**31 - 1
# A transcript line longer than this is cut (a minute of speech is about 1,000 characters); it
# also bounds what the recorder holds in memory while the database is away.
MAX_TEXT = 32_000


def _max_length(model, name: str) -> int:
    return model._meta.get_field(name).max_length


ITEM_ID_LENGTH = _max_length(TranscriptItem, "item_id")
KIND_LENGTH = _max_length(TranscriptItem, "kind")
RESPONSE_ID_LENGTH = _max_length(UsageRecord, "response_id")
RESPONSE_STATUS_LENGTH = _max_length(UsageRecord, "status")
VOICE_LENGTH = _max_length(Conversation, "voice")
SESSION_ID_LENGTH = _max_length(Conversation, "upstream_session_id")


def identifier(value, *, length: int = ITEM_ID_LENGTH) -> str | None:
    """An id that fits `length`: a longer one keeps its start and a hash of the whole, so every
    event about the same long id still finds the same row, and two long ids never share one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None
    value = _no_nul(value)
    if len(value) <= length:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{value[: length - len(digest) - 1]}~{digest}"


def text(value, *, length: int = MAX_TEXT) -> str | None:
    """Readable text of at most `length` characters; a non-string (a number, a nested object)
    is kept as its JSON rather than lost; None stays None (nothing learned)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    value = _no_nul(value)
    if len(value) <= length:
        return value
    return value[: length - 1] + "…"


def label(value, *, length: int) -> str | None:
    """A short name (a voice, a status): a string cut to `length`, anything else None."""
    if not isinstance(value, str):
        return None
    return _no_nul(value)[:length]


def whole_number(value) -> int | None:
    """A count or a millisecond offset: a number, made whole and put in 0..MAX_WHOLE_NUMBER;
    anything else (a string, a list, a boolean) is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN
        return None
    return int(min(max(value, 0), MAX_WHOLE_NUMBER))


def seconds(value) -> float | None:
    """A time offset in seconds (diarized segments), finite and not negative; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return min(max(float(value), 0.0), 1e7)


def role(value) -> str | None:
    """One of the transcript's roles, or None for anything else."""
    return value if value in Role.values else None


def _no_nul(value: str) -> str:
    # PostgreSQL's text types cannot hold NUL; SQLite would, so both store the same line.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value
