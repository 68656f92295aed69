"""Keeps the provider key out of everything that leaves the server: frames, pages, logs."""

import logging
import re

from django.conf import settings

# OpenAI keys (sk-..., sk-proj-...) and anything shaped like them, even if not ours.
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{6,}")
_MASK = "sk-***"

# The server events that cannot hold a key: base64 audio, most of the traffic, is left as is.
# Every other type is masked, text deltas included (an upstream that echoed the key in a reply
# had it relayed and stored). timeit on the shared 2-core machine: about 1.5 us per text delta
# and 1.5-3 us per error event (7 us when escapes spell a key in it), 0.07 us to skip an audio
# delta by its type, where masking a 13 KB audio delta would cost 20-60 us.
_UNREDACTED_TYPES = frozenset({"response.output_audio.delta"})


def redact(text: str) -> str:
    """`text` with the key masked, also where JSON escapes spell it.

    JSON may write any character as \\uXXXX: an upstream error quoting `sk\\u002d...` is the key
    to whoever parses it. Such escapes of printable ASCII are written out (the same JSON) only
    in a text that then shows a key: anything else is returned as it came.
    """
    cleaned = _mask(text)
    if not _ASCII_ESCAPE.search(cleaned):  # most texts: no such escape, not even escaped
        return cleaned
    unescaped = _ESCAPE.sub(_unescape, cleaned)
    masked = _mask(unescaped)
    return masked if masked != unescaped else cleaned


def redact_server_frame(etype: str | None, frame: str) -> str:
    """A server event as it may be relayed, stored and shown: redacted unless it is of a type
    that cannot hold the key (`etype` from protocol.peek_type)."""
    if etype in _UNREDACTED_TYPES:
        return frame
    return redact(frame)


def _mask(text: str) -> str:
    key = settings.OPENAI_API_KEY
    if key and key in text:
        text = text.replace(key, _MASK)
    return _KEY_PATTERN.sub(_MASK, text)


# One escape in a JSON string, taken left to right so that an escaped backslash is never read
# as the start of the next one; group 1 when it is a \\u00XX escape of printable ASCII.
_ESCAPE = re.compile(r"\\(?:u00([2-7][0-9a-fA-F])|.)")
# A quick test for one, with a literal prefix: it may be fooled by an escaped backslash before
# "u00", which costs only the full pass above.
_ASCII_ESCAPE = re.compile(r"\\u00[2-7]")


def _unescape(match: re.Match) -> str:
    """The character a printable-ASCII escape stands for, where JSON allows it unescaped (all
    but " and \\); any other escape as it was."""
    if match[1] is None:
        return match[0]
    character = chr(int(match[1], 16))
    return match[0] if character in '"\\\x7f' else character


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with the key masked, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, text
        return True
