import hashlib
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils.timezone import now
from django.utils.translation import gettext

from voicechat.access.scopes import ScopeKind
from voicechat.enums import END_REASON_WORDS, Backend, EndReason, ItemStatus, Role


def stale_cutoff() -> datetime:
    """Open conversations not marked alive since this moment belong to a lost process."""
    return now() - timedelta(seconds=settings.REALTIME_STALE_AFTER)


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> "ConversationQuerySet":
        return self.filter(user=user)

    def active(self) -> "ConversationQuerySet":
        return self.filter(ended__isnull=True)

    def recent(self) -> "ConversationQuerySet":
        return self.order_by("-started")

    def _seen(self) -> "ConversationQuerySet":
        # Rows from before heartbeats existed count from their start.
        return self.alias(seen=Coalesce("heartbeat", "started"))

    def live(self) -> "ConversationQuerySet":
        """Open conversations whose server process is still alive (recent heartbeat)."""
        return self.active()._seen().filter(seen__gte=stale_cutoff())

    def stale(self) -> "ConversationQuerySet":
        """Open conversations whose process stopped without ending them."""
        return self.active()._seen().filter(seen__lt=stale_cutoff())

    def listed(self) -> "ConversationQuerySet":
        """Conversations their owner has not deleted (deleted rows stay for the budgets)."""
        return self.filter(deleted__isnull=True)

    def since(self, moment) -> "ConversationQuerySet":
        """Conversations that were still going at `moment` or started after it."""
        return self.filter(Q(ended__isnull=True) | Q(ended__gte=moment))


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    backend = models.CharField(max_length=16, choices=Backend)
    model = models.CharField(max_length=64)
    voice = models.CharField(max_length=32, blank=True)
    # The offline engine's models when it started (voicechat/local_engine/model_names.py);
    # "" for OpenAI.
    engine = models.CharField(max_length=200, blank=True)
    upstream_session_id = models.CharField(max_length=128, blank=True)
    # Audit: how and from where the socket was opened.
    auth_method = models.CharField(max_length=16, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    started = models.DateTimeField(default=now)
    ended = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=EndReason, blank=True)
    end_detail = models.TextField(blank=True)
    # Totals over the conversation's responses, kept in step with UsageRecord rows.
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    # Which server process holds the live socket, and its channel-layer address, so staff on
    # any process can reach it; the process refreshes `heartbeat` while the socket is open.
    process = models.CharField(max_length=100, blank=True)
    channel_name = models.CharField(max_length=200, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    # When its owner deleted it: the transcript is gone, the row stays for the daily budgets.
    deleted = models.DateTimeField(null=True, blank=True)
    # The conversation this one continues (History's "Continue", ?resume=): its transcript was
    # replayed to the model as context when this one started.
    resumed_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="continuations"
    )
    # Upstream sessions it outlived (gateway/conversation.py, REALTIME_RECYCLE_AFTER_SECONDS): how
    # many times it moved to a fresh one, and when it last did.
    recycles = models.PositiveIntegerField(default=0)
    last_recycled = models.DateTimeField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [
            # The history page and budgets read a user's conversations newest first.
            models.Index(fields=["user", "-started"]),
            # The concurrency limit counts a user's open conversations on every connect.
            models.Index(
                fields=["user"], condition=Q(ended__isnull=True), name="conversation_open_by_user"
            ),
        ]

    def __str__(self) -> str:
        return f"Conversation {self.pk} ({self.user}, {self.started:%Y-%m-%d %H:%M})"

    @property
    def duration(self) -> timedelta:
        """How long it lasted (so far, while open); never negative, even for a row whose stored
        end is before its start (process_lost ends stored before that was fixed)."""
        return max((self.ended or now()) - self.started, timedelta(0))

    @property
    def answered_by(self) -> str:
        """What answered, in words. The offline engine stores the model name the client asked
        for (e.g. gpt-realtime), which it does not run, so it is not shown as the model."""
        if self.backend == Backend.LOCAL:
            if self.engine:
                return gettext("Offline assistant (%(models)s)") % {"models": self.engine}
            return gettext("Offline assistant")
        return f"{self.get_backend_display()} · {self.model}"

    @property
    def end_reason_words(self) -> str:
        """Why it ended, in words for its owner ("" while it is open)."""
        return END_REASON_WORDS.get(self.end_reason, self.get_end_reason_display())

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def ordered_items(self) -> list["TranscriptItem"]:
        """The transcript in conversation order (previous_item_id chains), not arrival order;
        without out-of-band responses, which are not part of the conversation."""
        return order_by_chain(list(self.items.filter(out_of_band=False)))

    def out_of_band_items(self) -> list["TranscriptItem"]:
        """Responses made outside the conversation (conversation "none"), in arrival order."""
        return list(self.items.filter(out_of_band=True).order_by("created", "pk"))


def order_by_chain(items: list["TranscriptItem"]) -> list["TranscriptItem"]:
    """Order items by their previous_item_id links; items arrive out of order (late transcripts).

    An item whose predecessor is unknown (or null) starts a chain; chains follow in the order
    their first item arrived, and any item left over (a cycle) keeps its arrival position.
    """
    items = sorted(items, key=lambda item: (item.created, item.pk))
    by_previous: dict[str, list[TranscriptItem]] = {}
    known = {item.item_id for item in items}
    for item in items:
        by_previous.setdefault(item.previous_item_id, []).append(item)
    ordered: list[TranscriptItem] = []
    placed: set[int] = set()

    def place_chain(start: "TranscriptItem") -> None:
        stack = [start]
        while stack:
            item = stack.pop()
            if item.pk in placed:
                continue
            placed.add(item.pk)
            ordered.append(item)
            # Reverse so the earliest-arriving successor is placed first.
            stack.extend(reversed(by_previous.get(item.item_id, [])))

    for item in items:
        if item.previous_item_id not in known:
            place_chain(item)
    for item in items:
        if item.pk not in placed:
            place_chain(item)
    return ordered


class TranscriptItem(models.Model):
    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="items")
    item_id = models.CharField(max_length=64)
    previous_item_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=32, default="message")
    role = models.CharField(max_length=16, choices=Role)
    text = models.TextField(blank=True)
    status = models.CharField(max_length=24, choices=ItemStatus, default=ItemStatus.IN_PROGRESS)
    # For truncated assistant audio: how much the user actually heard.
    audio_end_ms = models.PositiveIntegerField(null=True, blank=True)
    # For an assistant reply, measured where the gateway relays it (metrics.ConversationMeter):
    # from the end of the user's turn to the first reply audio sent to the client, and, for the
    # offline engine, to the final transcript of the user's words and to the reply's first token.
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    transcript_ms = models.PositiveIntegerField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    # A diarized transcript's segments, in order: [{"id", "speaker", "text", "start", "end"}].
    segments = models.JSONField(null=True, blank=True)
    # The output of a response made out of band (response.create with conversation "none"): it
    # is not part of the conversation, so it is kept apart from the transcript.
    out_of_band = models.BooleanField(default=False)
    created = models.DateTimeField(default=now)
    updated = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "item_id"], name="unique_item_per_conversation"
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"

    @property
    def latency_seconds(self) -> float | None:
        return None if self.latency_ms is None else self.latency_ms / 1000


def recordings_storage():
    """Where recordings are kept: STORAGES["recordings"] (config/settings.py)."""
    from django.core.files.storage import storages

    return storages["recordings"]


class Recording(models.Model):
    """One turn's audio, one side of it, when recording is on (voicechat/records/recordings.py)."""

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="recordings")
    # The transcript line it is the audio of (TranscriptItem.item_id).
    item_id = models.CharField(max_length=64)
    role = models.CharField(max_length=16, choices=Role)
    file = models.FileField(storage=recordings_storage, max_length=200)
    duration_ms = models.PositiveIntegerField()
    created = models.DateTimeField(default=now)

    class Meta:
        # The retention purge reads by age.
        indexes = [models.Index(fields=["created"], name="recording_created")]

    def __str__(self) -> str:
        return f"{self.role} {self.item_id} ({self.duration_ms} ms)"


class UsageRecord(models.Model):
    """Token usage of one response, from its response.done event."""

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="usage")
    response_id = models.CharField(max_length=64)
    status = models.CharField(max_length=24, blank=True)
    input_text_tokens = models.PositiveIntegerField(default=0)
    input_audio_tokens = models.PositiveIntegerField(default=0)
    input_cached_tokens = models.PositiveIntegerField(default=0)
    input_cached_audio_tokens = models.PositiveIntegerField(default=0)
    input_image_tokens = models.PositiveIntegerField(default=0)
    input_cached_image_tokens = models.PositiveIntegerField(default=0)
    output_text_tokens = models.PositiveIntegerField(default=0)
    output_audio_tokens = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    created = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return f"{self.response_id}: {self.input_tokens} in / {self.output_tokens} out"


class ApiTokenQuerySet(models.QuerySet):
    def usable(self) -> "ApiTokenQuerySet":
        return self.filter(revoked__isnull=True, user__is_active=True)


class ApiToken(models.Model):
    """A bearer token for scripts and OpenAI's SDK; only its SHA-256 digest is stored."""

    PREFIX = "vc_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    # The first characters of the token, so a person can tell their tokens apart in admin.
    hint = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)
    # What the holder may set in their session (voicechat/access/scopes.py). The fields below
    # it count for the custom scope only.
    scope_kind = models.CharField("scope", max_length=8, choices=ScopeKind, default=ScopeKind.SITE)
    may_set_instructions = models.BooleanField(default=False)
    may_set_tools = models.BooleanField(default=False)
    may_set_prompt = models.BooleanField(default=False)
    transcription_models = models.JSONField(
        default=list, blank=True, help_text="From REALTIME_TRANSCRIPTION_MODELS."
    )
    realtime_models = models.JSONField(
        default=list, blank=True, help_text="From REALTIME_ALLOWED_MODELS (?model= on connect)."
    )
    max_output_tokens = models.PositiveIntegerField(
        default=0, help_text="The most a client may set per response; 0 means no limit."
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(digest=""), name="api_token_digest_not_empty")
        ]

    def __str__(self) -> str:
        return f"{self.hint}… ({self.user})"

    @staticmethod
    def digest_of(token: str) -> str:
        # Tokens are 256 random bits, so a fast unsalted hash is safe to store and look up.
        return hashlib.sha256(token.encode()).hexdigest()


class UserLimits(models.Model):
    """Per-user overrides of the daily budgets; an empty field means the site default."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, related_name="limits")
    daily_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Conversation minutes per day; 0 means unlimited."
    )
    daily_cost_usd = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Estimated US dollars per day; 0 means unlimited.",
    )
    record_audio = models.BooleanField(
        "record audio",
        null=True,
        blank=True,
        help_text="Store both sides' audio of this user's conversations; empty means the"
        " site default (RECORDING_ENABLED).",
    )

    class Meta:
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"Limits for {self.user}"
