"""The fixed vocabularies of conversations: backends, how they end, roles and item states.

Stored as text in the models' columns (voicechat/models.py) and used by the gateway, the pages
and the offline engine, none of which needs the models to name them.
"""

from django.db import models
from django.utils.translation import gettext_lazy


class Backend(models.TextChoices):
    OPENAI = "openai", "OpenAI Realtime"
    LOCAL = "local", "Local engine"


class EndReason(models.TextChoices):
    CLIENT_CLOSED = "client_closed", "Client closed the connection"
    NOT_CONFIGURED = "not_configured", "No backend configured"
    MODEL_NOT_ALLOWED = "model_not_allowed", "Model not allowed"
    UPSTREAM_UNREACHABLE = "upstream_unreachable", "Upstream unreachable"
    UPSTREAM_REFUSED = "upstream_refused", "Upstream refused the connection"
    UPSTREAM_CLOSED = "upstream_closed", "Upstream closed the connection"
    UPSTREAM_ERROR = "upstream_error", "Upstream reported a fatal error"
    TIME_LIMIT = "time_limit", "Session time limit reached"
    BUDGET_EXCEEDED = "budget_exceeded", "Daily budget used up"
    RATE_LIMITED = "rate_limited", "Too many connections"
    ABUSE = "abuse", "Too many refused events"
    SERVER_ERROR = "server_error", "Server error"
    ENDED_BY_STAFF = "ended_by_staff", "Ended by staff"
    SERVER_SHUTDOWN = "server_shutdown", "Server shut down"
    DURATION_LIMIT = "duration_limit", "Conversation length limit reached"
    # The process holding it stopped without ending it (found by its missing heartbeat).
    PROCESS_LOST = "process_lost", "Server process lost"
    # The token was revoked, the user deactivated or signed out while the socket was open.
    ACCESS_REVOKED = "access_revoked", "Access revoked"


# How each end reads on the user's own history page; the labels above are for staff.
END_REASON_WORDS = {
    EndReason.CLIENT_CLOSED: gettext_lazy("You ended it"),
    EndReason.NOT_CONFIGURED: gettext_lazy("The server is not set up to answer"),
    EndReason.MODEL_NOT_ALLOWED: gettext_lazy("That model is not allowed here"),
    EndReason.UPSTREAM_UNREACHABLE: gettext_lazy("The assistant could not be reached"),
    EndReason.UPSTREAM_REFUSED: gettext_lazy("The assistant refused to connect"),
    EndReason.UPSTREAM_CLOSED: gettext_lazy("The assistant hung up"),
    EndReason.UPSTREAM_ERROR: gettext_lazy("The assistant ran into an error"),
    EndReason.TIME_LIMIT: gettext_lazy("It reached the session time limit"),
    EndReason.BUDGET_EXCEEDED: gettext_lazy("Today's allowance ran out"),
    EndReason.RATE_LIMITED: gettext_lazy("Too many connections at once"),
    EndReason.ABUSE: gettext_lazy("Stopped after too many refused messages"),
    EndReason.SERVER_ERROR: gettext_lazy("Something went wrong on the server"),
    EndReason.ENDED_BY_STAFF: gettext_lazy("An administrator ended it"),
    EndReason.SERVER_SHUTDOWN: gettext_lazy("The server restarted"),
    EndReason.DURATION_LIMIT: gettext_lazy("It reached the length limit"),
    EndReason.PROCESS_LOST: gettext_lazy("The server stopped unexpectedly"),
    EndReason.ACCESS_REVOKED: gettext_lazy("Your access was withdrawn"),
}


class Role(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    SYSTEM = "system", "System"
    TOOL = "tool", "Tool"


class ItemStatus(models.TextChoices):
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    # The assistant was cut off (barge-in): the client truncated it to what was heard.
    TRUNCATED = "truncated", "Truncated"
    # The response ended before the item finished (cancelled or failed).
    INTERRUPTED = "interrupted", "Interrupted"
    TRANSCRIPTION_FAILED = "transcription_failed", "Transcription failed"
    DELETED = "deleted", "Deleted"
