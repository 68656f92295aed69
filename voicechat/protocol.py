"""Small facts of the Realtime wire protocol that the gateway needs: event ids, error events,
close codes, and a cheap look at an event's type."""

import enum
import itertools
import os

import orjson

from voicechat.enums import EndReason

# Unique per process and cheap: a random prefix and a counter.
_event_ids = itertools.count(1)
_EVENT_ID_PREFIX = f"event_gw{os.urandom(4).hex()}_"


def new_event_id() -> str:
    return f"{_EVENT_ID_PREFIX}{next(_event_ids)}"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (daphne only allows 1000 and 3000-4999)."""

    NORMAL = 1000
    UPSTREAM_UNREACHABLE = 4001
    UPSTREAM_REFUSED = 4002
    UPSTREAM_CLOSED = 4003
    UPSTREAM_ERROR = 4004
    TIME_LIMIT = 4005
    ENDED_BY_STAFF = 4006
    SERVER_SHUTDOWN = 4007
    DURATION_LIMIT = 4008
    # Refused before the conversation began: the user already holds their maximum.
    TOO_MANY_CONVERSATIONS = 4012
    BUDGET_EXCEEDED = 4020
    RATE_LIMITED = 4029
    ABUSE = 4030
    NOT_CONFIGURED = 4010
    MODEL_NOT_ALLOWED = 4011
    SERVER_ERROR = 4500
    # The credential it opened with is no longer valid (voicechat/access/revocation.py), like
    # HTTP 401.
    ACCESS_REVOKED = 4401
    # ?resume= named a conversation that is not the user's (or does not exist): nothing started.
    RESUME_NOT_ALLOWED = 4404


CLOSE_CODE_FOR = {
    EndReason.CLIENT_CLOSED: CloseCode.NORMAL,
    EndReason.UPSTREAM_UNREACHABLE: CloseCode.UPSTREAM_UNREACHABLE,
    EndReason.UPSTREAM_REFUSED: CloseCode.UPSTREAM_REFUSED,
    EndReason.UPSTREAM_CLOSED: CloseCode.UPSTREAM_CLOSED,
    EndReason.UPSTREAM_ERROR: CloseCode.UPSTREAM_ERROR,
    EndReason.TIME_LIMIT: CloseCode.TIME_LIMIT,
    EndReason.BUDGET_EXCEEDED: CloseCode.BUDGET_EXCEEDED,
    EndReason.RATE_LIMITED: CloseCode.RATE_LIMITED,
    EndReason.ABUSE: CloseCode.ABUSE,
    EndReason.NOT_CONFIGURED: CloseCode.NOT_CONFIGURED,
    EndReason.MODEL_NOT_ALLOWED: CloseCode.MODEL_NOT_ALLOWED,
    EndReason.SERVER_ERROR: CloseCode.SERVER_ERROR,
    EndReason.ENDED_BY_STAFF: CloseCode.ENDED_BY_STAFF,
    EndReason.SERVER_SHUTDOWN: CloseCode.SERVER_SHUTDOWN,
    EndReason.DURATION_LIMIT: CloseCode.DURATION_LIMIT,
    EndReason.ACCESS_REVOKED: CloseCode.ACCESS_REVOKED,
}


class EndConversation(Exception):
    """Ends a conversation: `message` is shown to the user, `code` goes in the error event."""

    def __init__(self, reason: EndReason, message: str, *, code: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


# Error codes after which OpenAI ends the session; any other error event is recoverable.
FATAL_ERROR_CODES = frozenset(
    {"invalid_api_key", "insufficient_quota", "account_deactivated", "billing_hard_limit_reached"}
)


def error_event(
    message: str,
    *,
    code: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> str:
    """A GA `error` server event; `event_id` names the client event that caused it."""
    return orjson.dumps(
        {
            "type": "error",
            "event_id": new_event_id(),
            "error": {
                "type": type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        }
    ).decode()


def peek_type(frame: str) -> str | None:
    """The `type` of a trusted server frame, without parsing it when `type` comes first.

    OpenAI and the local engine put `type` first, so audio deltas (most of the traffic) are
    recognised from their first bytes. Anything else falls back to a full parse.
    """
    if frame.startswith('{"type":"'):
        end = frame.find('"', 9)
        if end > 0:
            return frame[9:end]
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return event.get("type") if isinstance(event, dict) else None
