"""Keeps the provider key out of everything that leaves the server: frames, pages, logs."""

import logging
import re

from django.conf import settings

# OpenAI keys (sk-..., sk-proj-...) and anything shaped like them, even if not ours.
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{6,}")
_MASK = "sk-***"


def redact(text: str) -> str:
    key = settings.OPENAI_API_KEY
    if key and key in text:
        text = text.replace(key, _MASK)
    return _KEY_PATTERN.sub(_MASK, text)


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
