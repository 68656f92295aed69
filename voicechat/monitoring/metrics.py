"""Prometheus metrics: every metric the gateway exports, the small calls that move them, /metrics.

Under `manage.py serve` each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set
up by the parent before the workers start) and /metrics on any worker reads them all, so a
scrape sees one coherent set. Without it (runserver, tests) the default registry is used.
Labels stay low-cardinality: backend, end reason, error code, direction; never a user.
"""

import hmac
import os
import time
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from voicechat.enums import Backend, EndReason

# Relayed frames are counted in plain ints and added to the counters this often: a counter
# increment costs ~0.4 µs (1.2 µs in multiprocess mode, an mmap write), two per frame.
FLUSH_EVERY = 64

# Seconds; voice-to-voice latency from ~0.2 s (local, fast) to several seconds (a slow turn).
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
CONNECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

OPEN = Gauge(
    "voicechat_open_conversations",
    "Conversations open now.",
    ["backend"],
    multiprocess_mode="livesum",
)
STARTED = Counter("voicechat_conversations_started", "Conversations started.", ["backend"])
ENDED = Counter("voicechat_conversations_ended", "Conversations ended.", ["backend", "reason"])
REFUSED = Counter(
    "voicechat_client_events_refused", "Client events refused by the gateway.", ["code"]
)
FRAMES = Counter(
    "voicechat_relayed_frames", "Frames relayed (to_upstream, to_client).", ["direction"]
)
# Characters of text frames: the same as bytes for the ASCII JSON (base64 audio) relayed.
BYTES = Counter("voicechat_relayed_bytes", "Bytes of frames relayed.", ["direction"])
CONNECT_SECONDS = Histogram(
    "voicechat_upstream_connect_seconds",
    "Time to open the upstream session.",
    ["backend"],
    buckets=CONNECT_BUCKETS,
)
VOICE_TO_VOICE = Histogram(
    "voicechat_voice_to_voice_seconds",
    "End of the user's turn (speech_stopped, else the commit or response.created) to the first "
    "reply audio sent to the client.",
    ["backend"],
    buckets=LATENCY_BUCKETS,
)
LOCAL_STAGES = Histogram(
    "voicechat_local_engine_stage_seconds",
    "Offline engine: end of the user's turn to the final transcript, the reply's first token "
    "and its first audio.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)

RECORDER_WRITE_SECONDS = Histogram(
    "voicechat_recorder_write_seconds",
    "Time to store one batch of transcript changes (successful writes).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0),
)
RECORDER_BACKLOG = Gauge(
    "voicechat_recorder_backlog_changes",
    "Transcript changes taken for storing and not stored yet (being written, or held while "
    "the database is away).",
    multiprocess_mode="livesum",
)
BUDGET_REFUSALS = Counter(
    "voicechat_budget_refusals",
    "Conversations refused (at_start) or cut short (during) by the daily budget.",
    ["when"],
)
# By model (the few of REALTIME_ALLOWED_MODELS); the offline engine is free and not counted.
COST_USD = Counter(
    "voicechat_estimated_cost_usd", "Estimated cost of the responses, in USD.", ["model"]
)

_TO_UPSTREAM_FRAMES = FRAMES.labels("to_upstream")
_TO_CLIENT_FRAMES = FRAMES.labels("to_client")
_TO_UPSTREAM_BYTES = BYTES.labels("to_upstream")
_TO_CLIENT_BYTES = BYTES.labels("to_client")


_AUDIO_DELTA = "response.output_audio.delta"


@dataclass(frozen=True)
class TurnLatency:
    """How long one reply took, in ms from the end of the user's turn (see ConversationMeter)."""

    first_audio_ms: int
    transcript_ms: int | None = None  # to the user's final transcript (offline engine)
    first_token_ms: int | None = None  # to the reply's first token (offline engine)


class ConversationMeter:
    """One conversation's metrics: the consumer calls these, each cheap on the relay path.

    It also measures each reply's latency, from the end of the user's turn to the first reply
    audio sent to the client. The turn ends at `input_audio_buffer.speech_stopped` (server VAD:
    the last one, if the user went on speaking), else at the first `input_audio_buffer.committed`
    (push-to-talk's release) or `response.created` (a typed turn, or a reply asked for by the
    client). A reply that finishes without audio (text only, cancelled) ends the measurement.
    For the offline engine the stages between are measured too: the final transcript
    (`...input_audio_transcription.completed`) and the first token (the engine opens the
    reply's message, `response.output_item.added`, when the language model's first token comes).
    """

    def __init__(self, backend: str) -> None:
        self.backend = str(backend)
        self.up_frames = self.up_bytes = self.down_frames = self.down_bytes = 0
        self.turn_ended_at: float | None = None  # monotonic; None: no reply awaited
        self.reply_started = False  # response.created seen since the turn ended
        self.stages: dict[str, int] = {}
        self.local = self.backend == Backend.LOCAL
        self.open = self.connected = False
        self._turn_events = {
            "input_audio_buffer.speech_stopped": self._speech_stopped,
            "input_audio_buffer.committed": self._turn_ended,
            "response.created": self._response_created,
            "response.done": self._response_done,
            "conversation.item.input_audio_transcription.completed": self._transcribed,
            "response.output_item.added": self._first_token,
        }

    def started(self) -> None:
        STARTED.labels(self.backend).inc()
        OPEN.labels(self.backend).inc()
        self.open = True

    def ended(self, reason: str) -> None:
        self.flush()
        if self.open:
            OPEN.labels(self.backend).dec()
            ENDED.labels(self.backend, str(reason)).inc()
            if reason == EndReason.BUDGET_EXCEEDED:
                BUDGET_REFUSALS.labels("during" if self.connected else "at_start").inc()
            self.open = False

    def connecting(self):
        """Context manager timing the upstream handshake."""
        self.connected = True  # the budget let it start
        return CONNECT_SECONDS.labels(self.backend).time()

    def to_upstream(self, frame: str) -> None:
        self.up_frames += 1
        self.up_bytes += len(frame)
        if self.up_frames >= FLUSH_EVERY:
            self.flush()

    def to_client(self, etype: str | None, frame: str) -> TurnLatency | None:
        """Count a frame sent to the client; returns the reply's latency at its first audio."""
        self.down_frames += 1
        self.down_bytes += len(frame)
        latency = None
        if etype == _AUDIO_DELTA:
            if self.turn_ended_at is not None:
                latency = self._first_audio()
        elif etype in self._turn_events:
            self._turn_events[etype]()
        if self.down_frames >= FLUSH_EVERY:
            self.flush()
        return latency

    # --- the turn being answered ----------------------------------------------------------

    def _since_turn_end(self) -> float:
        return time.monotonic() - self.turn_ended_at

    def _speech_stopped(self) -> None:
        self.turn_ended_at = None
        self._turn_ended()

    def _turn_ended(self) -> None:
        if self.turn_ended_at is None:
            self.turn_ended_at = time.monotonic()
            self.reply_started = False
            self.stages = {}

    def _response_created(self) -> None:
        self._turn_ended()
        self.reply_started = True

    def _response_done(self) -> None:
        # Only the reply to this turn: an earlier one may finish after the user spoke again.
        if self.reply_started:
            self.turn_ended_at = None

    def _transcribed(self) -> None:
        self._stage("transcript")

    def _first_token(self) -> None:
        if self.reply_started:
            self._stage("first_token")

    def _stage(self, stage: str) -> None:
        if self.local and self.turn_ended_at is not None and stage not in self.stages:
            seconds = self._since_turn_end()
            LOCAL_STAGES.labels(stage).observe(seconds)
            self.stages[stage] = round(seconds * 1000)

    def _first_audio(self) -> TurnLatency:
        seconds = self._since_turn_end()
        self.turn_ended_at = None
        VOICE_TO_VOICE.labels(self.backend).observe(seconds)
        if self.local:
            LOCAL_STAGES.labels("first_audio").observe(seconds)
        return TurnLatency(
            first_audio_ms=round(seconds * 1000),
            transcript_ms=self.stages.get("transcript"),
            first_token_ms=self.stages.get("first_token"),
        )

    def flush(self) -> None:
        """Add the frames counted since the last flush to the shared counters."""
        if self.up_frames:
            _TO_UPSTREAM_FRAMES.inc(self.up_frames)
            _TO_UPSTREAM_BYTES.inc(self.up_bytes)
            self.up_frames = self.up_bytes = 0
        if self.down_frames:
            _TO_CLIENT_FRAMES.inc(self.down_frames)
            _TO_CLIENT_BYTES.inc(self.down_bytes)
            self.down_frames = self.down_bytes = 0


def cost_added(model: str, usd) -> None:
    """Add a response's estimated cost (a Decimal) to the total."""
    if usd:
        COST_USD.labels(model).inc(float(usd))


class RecorderBacklog:
    """One recorder's share of RECORDER_BACKLOG: set its size, the gauge moves by the change."""

    def __init__(self) -> None:
        self.size = 0

    def set(self, size: int) -> None:
        if size != self.size:
            RECORDER_BACKLOG.inc(size - self.size)
            self.size = size


def refused(error: str) -> None:
    """Count a refused client event by the code in its `error` event (refusals are rare)."""
    try:
        code = str(orjson.loads(error)["error"]["code"])[:64]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = "unknown"
    REFUSED.labels(code).inc()


def _allowed(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    # Constant-time comparison; an empty METRICS_TOKEN turns token access off.
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition: staff sessions or `Authorization: Bearer METRICS_TOKEN`."""
    if not _allowed(request):
        return HttpResponseForbidden("Staff or METRICS_TOKEN only.\n")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
