"""Named write functions: everything the gateway stores goes through here."""

import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils.timezone import now

from voicechat.access.scopes import ScopeKind
from voicechat.enums import Backend, EndReason, ItemStatus
from voicechat.local_engine.model_names import offline_models
from voicechat.models import ApiToken, Conversation, TranscriptItem, UsageRecord
from voicechat.records import clamp
from voicechat.records.recordings import recordings_delete


def api_token_create(
    *,
    user,
    name: str = "",
    scope_kind: ScopeKind = ScopeKind.SITE,
    may_set_instructions: bool = False,
    may_set_tools: bool = False,
    may_set_prompt: bool = False,
    transcription_models: Iterable[str] = (),
    realtime_models: Iterable[str] = (),
    max_output_tokens: int = 0,
) -> tuple[ApiToken, str]:
    """A new token for `user`, with its scope (voicechat/access/scopes.py; the permissions count
    for the custom scope only); the plain token is returned once and never stored."""
    token = ApiToken.PREFIX + secrets.token_urlsafe(32)
    api_token = ApiToken.objects.create(
        user=user,
        name=name,
        hint=token[:10],
        digest=ApiToken.digest_of(token),
        scope_kind=scope_kind,
        may_set_instructions=may_set_instructions,
        may_set_tools=may_set_tools,
        may_set_prompt=may_set_prompt,
        transcription_models=sorted(transcription_models),
        realtime_models=sorted(realtime_models),
        max_output_tokens=max_output_tokens,
    )
    return api_token, token


def api_token_revoke(*, api_token: ApiToken) -> None:
    if api_token.revoked is None:
        api_token.revoked = now()
        api_token.save(update_fields=["revoked"])


class TooManyConversations(Exception):
    """The user already holds as many open conversations as they may."""


def conversation_start(
    *,
    user,
    backend: str,
    model: str,
    voice: str,
    process: str = "",
    channel_name: str = "",
    max_open: int = 0,
    auth_method: str = "",
    client_ip: str | None = None,
    user_agent: str = "",
    resumed_from: Conversation | None = None,
) -> Conversation:
    """A new conversation; with `max_open`, refused (TooManyConversations) at the user's limit.

    The count and the insert happen under a lock on the user's row (PostgreSQL) or the
    database's write lock (SQLite's IMMEDIATE transactions), so two server processes cannot
    both let a user past the limit.
    """
    with transaction.atomic():
        if max_open:
            # Evaluated for the lock it takes; the row itself is not needed.
            list(get_user_model().objects.select_for_update().filter(pk=user.pk).values("pk"))
            conversations_end_stale(user=user)
            if Conversation.objects.for_user(user).live().count() >= max_open:
                raise TooManyConversations(
                    f"You already have {max_open} conversation(s) open; "
                    "close one before starting another."
                )
        # One moment for both, so the first heartbeat is not stamped before the start.
        started = now()
        return Conversation.objects.create(
            user=user,
            backend=backend,
            model=model,
            voice=voice,
            engine=offline_models() if backend == Backend.LOCAL else "",
            process=process,
            channel_name=channel_name,
            started=started,
            heartbeat=started,
            auth_method=auth_method,
            client_ip=client_ip,
            user_agent=user_agent[:300],
            resumed_from=resumed_from,
        )


def conversation_recycled(*, conversation_id: int) -> None:
    """Note that a conversation moved to a fresh upstream session."""
    Conversation.objects.filter(pk=conversation_id).update(
        recycles=F("recycles") + 1, last_recycled=now()
    )


def conversation_end(*, conversation_id: int, reason: str, detail: str = "") -> None:
    # Only the first end counts: a late second call (e.g. from disconnect) must not overwrite it.
    Conversation.objects.filter(pk=conversation_id, ended__isnull=True).update(
        ended=now(), end_reason=reason, end_detail=detail[:2000]
    )


# The rates every REALTIME_PRICES entry needs, in US dollars per million tokens.
PRICE_RATES = (
    "text_input",
    "text_cached_input",
    "text_output",
    "audio_input",
    "audio_cached_input",
    "audio_output",
)


class UnpricedModel(LookupError):
    """A model with no complete REALTIME_PRICES entry: billing it would count it as free."""


def unpriced_models(models: Iterable[str]) -> list[str]:
    """Those of `models` that REALTIME_PRICES does not price at every rate."""
    return [
        model
        for model in models
        if not all(rate in settings.REALTIME_PRICES.get(model, {}) for rate in PRICE_RATES)
    ]


# Audio input tokens per second of speech, to price a duration at token rates (OpenAI's GPT-4o
# audio models count about one token per 100 ms of input audio).
AUDIO_TOKENS_PER_SECOND = 10


def unpriced_transcription_models(models: Iterable[str]) -> list[str]:
    """Those of `models` that REALTIME_TRANSCRIPTION_PRICES does not price."""
    prices = settings.REALTIME_TRANSCRIPTION_PRICES
    return [
        model
        for model in models
        if not (
            {"input", "output"} <= set(prices.get(model, {}))
            or "per_minute" in prices.get(model, {})
        )
    ]


def transcription_cost(model: str, usage) -> Decimal:
    """Estimated USD cost of one input transcription from its `usage` (tokens or duration);
    an unpriced model raises UnpricedModel rather than being billed at zero."""
    if unpriced_transcription_models([model]):
        raise UnpricedModel(f"Model {model!r} has no entry in REALTIME_TRANSCRIPTION_PRICES.")
    prices, usage = settings.REALTIME_TRANSCRIPTION_PRICES[model], _mapping(usage)
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        seconds = (
            seconds if isinstance(seconds, int | float) and not isinstance(seconds, bool) else 0
        )
        seconds = Decimal(str(min(max(seconds, 0), 86_400)))
        if "per_minute" in prices:
            cost = seconds / 60 * prices["per_minute"]
        else:  # a token-priced model that reported seconds: estimated, never free
            cost = seconds * AUDIO_TOKENS_PER_SECOND * prices["input"] / Decimal(1_000_000)
    else:
        cost = (
            _count(usage.get("input_tokens")) * prices.get("input", 0)
            + _count(usage.get("output_tokens")) * prices.get("output", 0)
        ) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"))


def prices_for(model: str) -> dict[str, Decimal]:
    """The model's REALTIME_PRICES entry; raises UnpricedModel rather than billing it at zero."""
    if unpriced_models([model]):
        raise UnpricedModel(f"Model {model!r} has no complete entry in REALTIME_PRICES.")
    return settings.REALTIME_PRICES[model]


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> bool:
    """Erase an ended conversation for its owner: its transcript, its recordings and where it
    came from.

    The row itself stays, hidden (`deleted`), with its times and cost: the daily budgets sum
    them, and deleting a conversation must not hand the day's minutes back. An open
    conversation is refused (False): its recorder would go on writing lines.
    """
    erased = Conversation.objects.filter(
        pk=conversation.pk, ended__isnull=False, deleted__isnull=True
    ).update(deleted=now(), client_ip=None, user_agent="", end_detail="")
    if erased:
        conversation.items.all().delete()
        recordings_delete(conversation=conversation)
    return bool(erased)


@dataclass(frozen=True)
class TokenCounts:
    """The token counts of one response.done `usage`, with cached tokens split out."""

    input_tokens: int
    output_tokens: int
    text_in: int
    audio_in: int
    cached_text_in: int
    cached_audio_in: int
    text_out: int
    audio_out: int
    image_in: int = 0
    cached_image_in: int = 0

    @classmethod
    def from_usage(cls, usage) -> "TokenCounts":
        """The counts of an upstream `usage` object; a count that is not a number counts 0."""
        usage = _mapping(usage)
        inp = _mapping(usage.get("input_token_details"))
        out = _mapping(usage.get("output_token_details"))
        cached = _mapping(inp.get("cached_tokens_details"))
        cached_audio = _count(cached.get("audio_tokens"))
        cached_image = _count(cached.get("image_tokens"))
        # Older payloads give only the cached total; treat the rest of it as text.
        if cached.get("text_tokens") is None:
            cached_text = max(_count(inp.get("cached_tokens")) - cached_audio - cached_image, 0)
        else:
            cached_text = _count(cached.get("text_tokens"))
        return cls(
            input_tokens=_count(usage.get("input_tokens")),
            output_tokens=_count(usage.get("output_tokens")),
            text_in=_count(inp.get("text_tokens")),
            audio_in=_count(inp.get("audio_tokens")),
            cached_text_in=cached_text,
            cached_audio_in=cached_audio,
            text_out=_count(out.get("text_tokens")),
            audio_out=_count(out.get("audio_tokens")),
            image_in=_count(inp.get("image_tokens")),
            cached_image_in=cached_image,
        )

    @property
    def cached_in(self) -> int:
        """Cached input tokens of every modality."""
        return self.cached_text_in + self.cached_audio_in + self.cached_image_in

    def cost(self, model: str) -> Decimal:
        """Estimated cost in USD at the model's REALTIME_PRICES; "" (the offline engine) is free."""
        if not model:
            return Decimal(0)
        prices = prices_for(model)
        # Cached tokens are a subset of input tokens, billed at the cached rate instead.
        total = (
            max(self.text_in - self.cached_text_in, 0) * prices["text_input"]
            + self.cached_text_in * prices["text_cached_input"]
            + max(self.audio_in - self.cached_audio_in, 0) * prices["audio_input"]
            + self.cached_audio_in * prices["audio_cached_input"]
            + self.text_out * prices["text_output"]
            + self.audio_out * prices["audio_output"]
        )
        return (total / Decimal(1_000_000)).quantize(Decimal("0.000001"))


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value) -> int:
    return clamp.whole_number(value) or 0


@dataclass
class ItemChange:
    """What the recorder learned about one conversation item; None fields are left as they are."""

    item_id: str
    previous_item_id: str | None = None
    role: str | None = None
    kind: str | None = None
    text: str | None = None
    status: str | None = None
    audio_end_ms: int | None = None
    # An assistant reply's latency (recorder.TranscriptRecorder.reply_latency).
    latency_ms: int | None = None
    transcript_ms: int | None = None
    first_token_ms: int | None = None
    # One diarized segment to add to the item's (by its id), and whether the item is the
    # output of an out-of-band response.
    segment: dict | None = None
    out_of_band: bool | None = None


@dataclass
class UsageChange:
    """The usage of one response, as its response.done reported it (or of one input
    transcription, whose cost comes priced at its own model's rates)."""

    response_id: str
    status: str
    counts: TokenCounts
    cost: Decimal | None = None  # None: the counts at the conversation's model's prices


@dataclass
class RecorderBatch:
    """Changes to one conversation, applied in order; a batch held for a retry is followed by
    what was learned since (`followed_by`), so a late write never undoes a newer one."""

    items: list[ItemChange] = field(default_factory=list)
    usage: list[UsageChange] = field(default_factory=list)
    voice: str | None = None
    upstream_session_id: str | None = None

    def is_empty(self) -> bool:
        return not (self.items or self.usage or self.voice or self.upstream_session_id)

    def size(self) -> int:
        """How many changes it holds (each line's text is at most clamp.MAX_TEXT)."""
        return len(self.items) + len(self.usage)

    def followed_by(self, later: "RecorderBatch") -> "RecorderBatch":
        return RecorderBatch(
            items=self.items + later.items,
            usage=self.usage + later.usage,
            voice=later.voice or self.voice,
            upstream_session_id=later.upstream_session_id or self.upstream_session_id,
        )

    def rows(self) -> list["RecorderBatch"]:
        """One batch per change, in order, so a row the database refuses costs no other."""
        rows = [RecorderBatch(items=[item]) for item in self.items]
        rows += [RecorderBatch(usage=[usage]) for usage in self.usage]
        if self.voice or self.upstream_session_id:
            rows.append(
                RecorderBatch(voice=self.voice, upstream_session_id=self.upstream_session_id)
            )
        return rows

    def as_dict(self) -> dict:
        data = asdict(self)
        for usage in data["usage"]:  # JSON has no decimals: an exact string instead
            if usage["cost"] is not None:
                usage["cost"] = str(usage["cost"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RecorderBatch":
        return cls(
            items=[ItemChange(**item) for item in data["items"]],
            usage=[
                UsageChange(
                    **{
                        **usage,
                        "counts": TokenCounts(**usage["counts"]),
                        "cost": None if usage.get("cost") is None else Decimal(usage["cost"]),
                    }
                )
                for usage in data["usage"]
            ],
            voice=data["voice"],
            upstream_session_id=data["upstream_session_id"],
        )


# An item's status only moves forward, so late events (a transcript arriving after the
# barge-in, response.done after the truncation) never undo what was learned.
_STATUS_RANK = {
    ItemStatus.IN_PROGRESS: 0,
    ItemStatus.COMPLETED: 1,
    ItemStatus.TRANSCRIPTION_FAILED: 1,
    ItemStatus.INTERRUPTED: 2,
    ItemStatus.TRUNCATED: 3,
    ItemStatus.DELETED: 4,
}


@transaction.atomic
def recorder_batch_write(
    *, conversation_id: int, model: str, batch: RecorderBatch, stamp: datetime | None = None
) -> None:
    """Apply a batch of transcript changes and usage to one conversation, in one transaction.

    Writing the same batch twice changes nothing more (a retry after a write whose commit was
    not confirmed, a replayed spill file): items are keyed by their id, usage by its response.
    `stamp` is when the changes were learned (a replay's), else now.
    """
    stamp = stamp or now()
    existing = {
        item.item_id: item
        for item in TranscriptItem.objects.filter(
            conversation_id=conversation_id, item_id__in={c.item_id for c in batch.items}
        )
    }
    for change in batch.items:
        item = existing.get(change.item_id)
        if item is None:
            item = TranscriptItem(
                conversation_id=conversation_id, item_id=change.item_id, created=stamp
            )
            existing[change.item_id] = item
        _apply(item, change)
        item.updated = stamp
        item.save()
    for usage in batch.usage:
        _usage_add(conversation_id=conversation_id, model=model, usage=usage)
    fields = {}
    if batch.voice:
        fields["voice"] = batch.voice
    if batch.upstream_session_id:
        fields["upstream_session_id"] = batch.upstream_session_id
    if fields:
        Conversation.objects.filter(pk=conversation_id).update(**fields)
    if batch.items:
        # Ended as process_lost while its process was in fact still recording (the database
        # was out of its reach): the end is its last sign of life, never before a line.
        Conversation.objects.filter(
            pk=conversation_id, end_reason=EndReason.PROCESS_LOST, ended__lt=stamp
        ).update(ended=stamp)


def _apply(item: TranscriptItem, change: ItemChange) -> None:
    if change.previous_item_id is not None:
        item.previous_item_id = change.previous_item_id
    if change.role:
        item.role = change.role
    if change.kind:
        item.kind = change.kind
    if change.text is not None and item.status != ItemStatus.DELETED:
        item.text = change.text
    if change.audio_end_ms is not None:
        item.audio_end_ms = change.audio_end_ms
    for name in ("latency_ms", "transcript_ms", "first_token_ms"):
        if getattr(change, name) is not None:
            setattr(item, name, getattr(change, name))
    if change.segment is not None:
        segments = [s for s in item.segments or [] if s.get("id") != change.segment.get("id")]
        item.segments = [*segments, change.segment]
    if change.out_of_band:
        item.out_of_band = True
    if change.status and _STATUS_RANK[change.status] >= _STATUS_RANK[item.status]:
        item.status = change.status


def _usage_add(*, conversation_id: int, model: str, usage: UsageChange) -> None:
    if (
        usage.response_id
        and UsageRecord.objects.filter(
            conversation_id=conversation_id, response_id=usage.response_id
        ).exists()
    ):
        return  # already counted (a retried or replayed write)
    counts = usage.counts
    cost = counts.cost(model) if usage.cost is None else usage.cost
    UsageRecord.objects.create(
        conversation_id=conversation_id,
        response_id=usage.response_id,
        status=usage.status,
        input_text_tokens=counts.text_in,
        input_audio_tokens=counts.audio_in,
        input_cached_tokens=_total(counts.cached_in),
        input_cached_audio_tokens=counts.cached_audio_in,
        input_image_tokens=counts.image_in,
        input_cached_image_tokens=counts.cached_image_in,
        output_text_tokens=counts.text_out,
        output_audio_tokens=counts.audio_out,
        input_tokens=counts.input_tokens,
        output_tokens=counts.output_tokens,
        cost_usd=cost,
    )
    Conversation.objects.filter(pk=conversation_id).update(
        input_tokens=_total(F("input_tokens") + counts.input_tokens),
        output_tokens=_total(F("output_tokens") + counts.output_tokens),
        cached_tokens=_total(F("cached_tokens") + counts.cached_in),
        cost_usd=F("cost_usd") + cost,
    )


def _total(value):
    """A running total capped at what its column holds (absurd counts must not fail the write)."""
    if isinstance(value, int):
        return min(value, clamp.MAX_WHOLE_NUMBER)
    return Least(value, clamp.MAX_WHOLE_NUMBER)


def conversation_note_replayed(*, conversation_id: int, source: str) -> None:
    """Say in the conversation's end detail that part of its transcript was stored late."""
    note = f"transcript stored late from {source}"
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None or note in conversation.end_detail:
        return
    detail = f"{conversation.end_detail}; {note}" if conversation.end_detail else note
    Conversation.objects.filter(pk=conversation_id).update(end_detail=detail[:2000])


def conversations_heartbeat(*, conversation_ids: list[int]) -> None:
    """Mark open conversations as still held by a live server process."""
    Conversation.objects.filter(pk__in=conversation_ids, ended__isnull=True).update(heartbeat=now())


def conversations_end_stale(*, user=None) -> int:
    """End open conversations whose process died without ending them (of `user`, or all)."""
    stale = Conversation.objects.stale()
    if user is not None:
        stale = stale.for_user(user)
    return _end_as_lost(stale)


def conversations_end_lost(*, process: str) -> int:
    """End the open conversations of `process` (host:pid), known to have died: `serve` saw its
    worker exit, so there is no need to wait for the heartbeat to go stale."""
    return _end_as_lost(Conversation.objects.active().filter(process=process))


def _end_as_lost(conversations) -> int:
    last_line = (
        TranscriptItem.objects.filter(conversation=OuterRef("pk"))
        .order_by("-updated")
        .values("updated")[:1]
    )
    # The end is the last moment the conversation was known to be alive: its last heartbeat or
    # its last transcript line, whichever is later (a process that dies before its first
    # heartbeat still recorded lines), and never before it started (older rows stamped their
    # first heartbeat a moment before `started`). Each term is coalesced: SQLite's MAX() is NULL
    # if any argument is.
    return conversations.update(
        ended=Greatest(
            "started",
            Coalesce("heartbeat", "started"),
            Coalesce(Subquery(last_line), "started"),
        ),
        end_reason=EndReason.PROCESS_LOST,
        end_detail="its server process stopped without ending it",
    )
