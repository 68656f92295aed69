"""Named write functions: everything the gateway stores goes through here."""

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils.timezone import now

from voicechat.models import (
    ApiToken,
    Backend,
    Conversation,
    EndReason,
    ItemStatus,
    TranscriptItem,
    UsageRecord,
)
from voicechat.offline_models import offline_models
from voicechat.scopes import ScopeKind


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
    """A new token for `user`, with its scope (voicechat/scopes.py; the permissions count for the
    custom scope only); the plain token is returned once and never stored."""
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


def prices_for(model: str) -> dict[str, Decimal]:
    """The model's REALTIME_PRICES entry; raises UnpricedModel rather than billing it at zero."""
    if unpriced_models([model]):
        raise UnpricedModel(f"Model {model!r} has no complete entry in REALTIME_PRICES.")
    return settings.REALTIME_PRICES[model]


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> bool:
    """Erase an ended conversation for its owner: its transcript and where it came from.

    The row itself stays, hidden (`deleted`), with its times and cost: the daily budgets sum
    them, and deleting a conversation must not hand the day's minutes back. An open
    conversation is refused (False): its recorder would go on writing lines.
    """
    erased = Conversation.objects.filter(
        pk=conversation.pk, ended__isnull=False, deleted__isnull=True
    ).update(deleted=now(), client_ip=None, user_agent="", end_detail="")
    if erased:
        conversation.items.all().delete()
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

    @classmethod
    def from_usage(cls, usage: dict) -> "TokenCounts":
        inp = usage.get("input_token_details") or {}
        out = usage.get("output_token_details") or {}
        cached = inp.get("cached_tokens_details") or {}
        cached_audio = cached.get("audio_tokens") or 0
        # Older payloads give only the cached total; treat the rest of it as text.
        cached_text = cached.get("text_tokens")
        if cached_text is None:
            cached_text = max((inp.get("cached_tokens") or 0) - cached_audio, 0)
        return cls(
            input_tokens=usage.get("input_tokens") or 0,
            output_tokens=usage.get("output_tokens") or 0,
            text_in=inp.get("text_tokens") or 0,
            audio_in=inp.get("audio_tokens") or 0,
            cached_text_in=cached_text,
            cached_audio_in=cached_audio,
            text_out=out.get("text_tokens") or 0,
            audio_out=out.get("audio_tokens") or 0,
        )

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


@dataclass
class RecorderBatch:
    items: list[ItemChange] = field(default_factory=list)
    usage: list[dict] = field(default_factory=list)
    voice: str | None = None
    upstream_session_id: str | None = None


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
def recorder_batch_write(*, conversation_id: int, model: str, batch: RecorderBatch) -> None:
    """Apply a batch of transcript changes and usage to one conversation, in one transaction."""
    stamp = now()
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
        _usage_add(conversation_id=conversation_id, model=model, **usage)
    fields = {}
    if batch.voice:
        fields["voice"] = batch.voice
    if batch.upstream_session_id:
        fields["upstream_session_id"] = batch.upstream_session_id
    if fields:
        Conversation.objects.filter(pk=conversation_id).update(**fields)


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
    if change.status and _STATUS_RANK[change.status] >= _STATUS_RANK[item.status]:
        item.status = change.status


def _usage_add(
    *, conversation_id: int, model: str, response_id: str, status: str, usage: dict
) -> None:
    counts = TokenCounts.from_usage(usage)
    cost = counts.cost(model)
    UsageRecord.objects.create(
        conversation_id=conversation_id,
        response_id=response_id,
        status=status,
        input_text_tokens=counts.text_in,
        input_audio_tokens=counts.audio_in,
        input_cached_tokens=counts.cached_text_in + counts.cached_audio_in,
        input_cached_audio_tokens=counts.cached_audio_in,
        output_text_tokens=counts.text_out,
        output_audio_tokens=counts.audio_out,
        input_tokens=counts.input_tokens,
        output_tokens=counts.output_tokens,
        cost_usd=cost,
    )
    Conversation.objects.filter(pk=conversation_id).update(
        input_tokens=F("input_tokens") + counts.input_tokens,
        output_tokens=F("output_tokens") + counts.output_tokens,
        cached_tokens=F("cached_tokens") + counts.cached_text_in + counts.cached_audio_in,
        cost_usd=F("cost_usd") + cost,
    )


def conversations_heartbeat(*, conversation_ids: list[int]) -> None:
    """Mark open conversations as still held by a live server process."""
    Conversation.objects.filter(pk__in=conversation_ids, ended__isnull=True).update(heartbeat=now())


def conversations_end_stale(*, user=None) -> int:
    """End open conversations whose process died without ending them (of `user`, or all)."""
    stale = Conversation.objects.stale()
    if user is not None:
        stale = stale.for_user(user)
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
    return stale.update(
        ended=Greatest(
            "started",
            Coalesce("heartbeat", "started"),
            Coalesce(Subquery(last_line), "started"),
        ),
        end_reason=EndReason.PROCESS_LOST,
        end_detail="its server process stopped without ending it",
    )
