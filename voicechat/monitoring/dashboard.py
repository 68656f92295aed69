"""The monitor's health numbers: open conversations, reply latency, ends and errors, per process.

Read from the database, so every server process shows the same numbers: the open conversations
(`Conversation.objects.live()`), the latency stored with each spoken reply in the last
LATENCY_WINDOW (TranscriptItem.latency_ms, measured by metrics.ConversationMeter), and the end
reasons of the last ERROR_WINDOW. /metrics has the same measurements for Prometheus.
"""

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils.timezone import now
from django.utils.translation import gettext as _

from voicechat.enums import EndReason, Role
from voicechat.models import Conversation, TranscriptItem

LATENCY_WINDOW = timedelta(minutes=15)
ERROR_WINDOW = timedelta(hours=1)
# Ends that say something went wrong on our side or the provider's (not the user leaving, a
# limit doing its job, or staff).
ERROR_REASONS = frozenset(
    {
        EndReason.NOT_CONFIGURED,
        EndReason.UPSTREAM_UNREACHABLE,
        EndReason.UPSTREAM_REFUSED,
        EndReason.UPSTREAM_CLOSED,
        EndReason.UPSTREAM_ERROR,
        EndReason.SERVER_ERROR,
        EndReason.PROCESS_LOST,
    }
)
# Upper edges of the latency bars, in seconds (the last bar is everything slower).
LATENCY_EDGES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
# Enough replies for the percentiles of a busy quarter hour, without reading a table's worth.
MAX_REPLIES = 20_000


def _percentile(values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile of sorted `values` (None when there are none)."""
    if not values:
        return None
    return values[max(0, math.ceil(fraction * len(values)) - 1)]


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


@dataclass
class Latencies:
    """Reply latencies (ms) and what the dashboard shows of them."""

    values: list[int] = field(default_factory=list)

    def add(self, ms: int) -> None:
        self.values.append(ms)

    def done(self) -> "Latencies":
        self.values.sort()
        return self

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def median_seconds(self) -> float | None:
        return _seconds(_percentile(self.values, 0.5))

    @property
    def p90_seconds(self) -> float | None:
        return _seconds(_percentile(self.values, 0.9))

    def bars(self) -> list[dict]:
        """One bar per LATENCY_EDGES bucket: its label, count, and share of the tallest (%)."""
        counts = [0] * (len(LATENCY_EDGES) + 1)
        for ms in self.values:
            counts[sum(ms >= edge * 1000 for edge in LATENCY_EDGES)] += 1
        tallest = max(counts) or 1
        return [
            {"label": _bucket_label(index), "count": count, "percent": round(100 * count / tallest)}
            for index, count in enumerate(counts)
        ]


def _bucket_label(index: int) -> str:
    if index == 0:
        return _("under %(high)s s") % {"high": LATENCY_EDGES[0]}
    if index == len(LATENCY_EDGES):
        return _("%(low)s s or more") % {"low": LATENCY_EDGES[-1]}
    return _("%(low)s–%(high)s s") % {"low": LATENCY_EDGES[index - 1], "high": LATENCY_EDGES[index]}


@dataclass
class ProcessHealth:
    process: str
    open: int = 0
    ended: int = 0
    errors: int = 0
    latencies: Latencies = field(default_factory=Latencies)


@dataclass
class Health:
    at: datetime
    open_by_backend: dict[str, int]
    latencies: Latencies
    ends: list[dict]  # {"reason", "count", "error"}, most frequent first
    processes: list[ProcessHealth]

    @property
    def open(self) -> int:
        return sum(self.open_by_backend.values())

    @property
    def ended(self) -> int:
        return sum(end["count"] for end in self.ends)

    @property
    def errors(self) -> int:
        return sum(end["count"] for end in self.ends if end["error"])

    @property
    def error_percent(self) -> float | None:
        return 100 * self.errors / self.ended if self.ended else None


def health(moment: datetime | None = None) -> Health:
    """The dashboard's numbers as of `moment` (now)."""
    moment = moment or now()
    processes: dict[str, ProcessHealth] = {}

    def of(process: str) -> ProcessHealth:
        return processes.setdefault(process or "–", ProcessHealth(process or "–"))

    open_by_backend: Counter[str] = Counter()
    for backend, process in Conversation.objects.live().values_list("backend", "process"):
        open_by_backend[backend] += 1
        of(process).open += 1

    latencies = Latencies()
    replies = TranscriptItem.objects.filter(
        role=Role.ASSISTANT, latency_ms__isnull=False, created__gte=moment - LATENCY_WINDOW
    ).order_by("-created")[:MAX_REPLIES]
    for ms, process in replies.values_list("latency_ms", "conversation__process"):
        latencies.add(ms)
        of(process).latencies.add(ms)

    reasons: Counter[str] = Counter()
    ended = Conversation.objects.filter(ended__gte=moment - ERROR_WINDOW)
    for reason, process in ended.values_list("end_reason", "process"):
        reasons[reason] += 1
        of(process).ended += 1
        of(process).errors += reason in ERROR_REASONS

    for process in processes.values():
        process.latencies.done()
    return Health(
        at=moment,
        open_by_backend=dict(open_by_backend),
        latencies=latencies.done(),
        ends=[
            {"reason": reason, "count": count, "error": reason in ERROR_REASONS}
            for reason, count in reasons.most_common()
        ],
        processes=sorted(processes.values(), key=lambda p: p.process),
    )
