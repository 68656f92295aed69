"""JSON-lines log records (LOG_FORMAT=json), for log shippers that parse each line."""

import contextvars
import logging
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    # uvicorn repeats its message with terminal colours.
    "color_message",
}


# The conversation and user this task serves: set by the gateway, copied into the tasks and
# database threads it starts (asyncio and asgiref copy context variables).
_ids: contextvars.ContextVar[dict | None] = contextvars.ContextVar("voicechat_ids", default=None)


def bind(**ids: int | str | None) -> None:
    """Name the conversation or user (conversation_id=, user_id=) on this task's log lines."""
    _ids.set({**(_ids.get() or {}), **ids})


class ConversationContext(logging.Filter):
    """Adds the bound conversation_id and user_id to every record logged in that context."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_ids.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        # The redaction filter has already turned exc_info into (redacted) exc_text.
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()
