import json

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Case, Count, IntegerField, Max, Q, Value, When
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime, now

from voicechat import services
from voicechat.access.scopes import ScopeKind
from voicechat.models import (
    ApiToken,
    Conversation,
    Recording,
    TranscriptItem,
    UsageRecord,
    UserLimits,
    order_by_chain,
)
from voicechat.monitoring import live
from voicechat.records.exports import (
    attachment,
    conversation_as_dict,
    conversation_as_markdown,
    conversations_as_zip,
)
from voicechat.templatetags.voicechat_tags import usd


@admin.display(description="Cost", ordering="cost_usd")
def cost(obj: "Conversation | UsageRecord") -> str:
    return usd(obj.cost_usd)


class ReadOnlyInline(admin.TabularInline):
    template = "admin/voicechat/readonly_tabular.html"
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def _seconds(ms: int | None) -> str:
    return "" if ms is None else f"{ms / 1000:.2f} s"


@admin.display(description="Answered in")
def answered_in(item: TranscriptItem) -> str:
    """A reply's latency (end of the user's turn to its first audio), with the offline
    engine's stages when they were measured."""
    if item.latency_ms is None:
        return ""
    stages = [
        f"{name} {_seconds(ms)}"
        for name, ms in [("transcript", item.transcript_ms), ("first token", item.first_token_ms)]
        if ms is not None
    ]
    return _seconds(item.latency_ms) + (f" ({', '.join(stages)})" if stages else "")


class TranscriptInline(ReadOnlyInline):
    model = TranscriptItem
    fields = [
        "role",
        "text",
        "status",
        answered_in,
        "audio_end_ms",
        "item_id",
        "previous_item_id",
        "created",
    ]
    readonly_fields = fields
    verbose_name_plural = "Transcript (in conversation order)"

    def get_queryset(self, request):
        # The inline lists rows in queryset order; conversation order comes from the chains.
        queryset = super().get_queryset(request)
        conversation_id = request.resolver_match.kwargs.get("object_id")
        items = order_by_chain(list(queryset.filter(conversation_id=conversation_id)))
        if not items:
            return queryset.none()
        position = Case(
            *[When(pk=item.pk, then=Value(index)) for index, item in enumerate(items)],
            output_field=IntegerField(),
        )
        return queryset.filter(pk__in=[item.pk for item in items]).order_by(position)


class UsageInline(ReadOnlyInline):
    model = UsageRecord
    fields = [
        "response_id",
        "status",
        "input_text_tokens",
        "input_audio_tokens",
        "input_cached_tokens",
        "output_text_tokens",
        "output_audio_tokens",
        cost,
        "created",
    ]
    readonly_fields = fields


@admin.display(description="Audio")
def player(recording: Recording) -> str:
    """Played through the same view as History's (never a public URL): staff need the
    "view recording" permission."""
    url = reverse("recording_audio", args=[recording.pk])
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


class RecordingInline(ReadOnlyInline):
    model = Recording
    fields = ["role", "item_id", player, "duration_ms", "created"]
    readonly_fields = fields
    ordering = ["created", "pk"]
    verbose_name_plural = "Recordings (when recording was on)"


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "started_display",
        "duration_display",
        "turns",
        "tokens",
        cost,
        "slowest_reply",
        "end_reason",
    ]
    list_filter = ["end_reason", "backend", "model", "started"]
    list_select_related = ["user"]
    search_fields = ["items__text", "user__username"]
    date_hierarchy = "started"
    inlines = [TranscriptInline, RecordingInline, UsageInline]
    actions = ["export_json", "export_markdown", "export_zip", "end_conversations"]
    readonly_fields = [
        "user",
        "auth_method",
        "client_ip",
        "user_agent",
        "backend",
        "model",
        "engine",
        "voice",
        "upstream_session_id",
        "started",
        "ended",
        "end_reason",
        "end_detail",
        "resumed_from",
        "recycles",
        "last_recycled",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        cost,
        "process",
        "heartbeat",
        "channel_name",
        "deleted",
    ]
    # Only these, in this order: otherwise the model's own fields (the raw cost) come first.
    fields = readonly_fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                turn_count=Count("items", filter=Q(items__role="user"), distinct=True),
                slowest_ms=Max("items__latency_ms"),
            )
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # A record of what was said: readable (view permission), never edited.
        return False

    # Compact, so the row fits beside the filters at 1280 px without clipping the end reason.
    @admin.display(description="Started", ordering="started")
    def started_display(self, obj: Conversation) -> str:
        return date_format(localtime(obj.started), "Y-m-d H:i")

    @admin.display(description="Duration")
    def duration_display(self, obj: Conversation) -> str:
        seconds = int(obj.duration.total_seconds())
        return f"{seconds // 60}:{seconds % 60:02d}"

    @admin.display(description="Turns", ordering="turn_count")
    def turns(self, obj: Conversation) -> int:
        return obj.turn_count

    # Sortable, so the conversations with a slow turn are found first.
    @admin.display(description="Slowest", ordering="slowest_ms")
    def slowest_reply(self, obj: Conversation) -> str:
        return _seconds(obj.slowest_ms)

    @admin.display(description="Tokens")
    def tokens(self, obj: Conversation) -> int:
        return obj.total_tokens

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request, queryset):
        data = [
            conversation_as_dict(c) for c in queryset.select_related("user").order_by("started")
        ]
        return attachment(
            json.dumps(data, indent=2, ensure_ascii=False),
            f"conversations-{now():%Y%m%d-%H%M%S}.json",
            "application/json",
        )

    @admin.action(description="Export selected conversations as Markdown")
    def export_markdown(self, request, queryset):
        text = "\n\n---\n\n".join(
            conversation_as_markdown(c) for c in queryset.select_related("user").order_by("started")
        )
        return attachment(
            text, f"conversations-{now():%Y%m%d-%H%M%S}.md", "text/markdown; charset=utf-8"
        )

    @admin.action(
        description="Export selected conversations with their recordings (ZIP)",
        permissions=["recordings"],
    )
    def export_zip(self, request, queryset):
        conversations = queryset.select_related("user").order_by("started")
        return attachment(
            conversations_as_zip(conversations, folders=True),
            f"conversations-{now():%Y%m%d-%H%M%S}.zip",
            "application/zip",
        )

    def has_recordings_permission(self, request) -> bool:
        return request.user.has_perm("voicechat.view_recording")

    @admin.action(description="End selected open conversations (on any server process)")
    def end_conversations(self, request, queryset):
        by = request.user.get_username()
        asked = [
            pk
            for pk in queryset.filter(ended__isnull=True).values_list("pk", flat=True)
            if async_to_sync(live.request_end)(pk, by=by)
        ]
        self.message_user(request, f"Asked {len(asked)} open conversation(s) to end.")


class ApiTokenForm(forms.ModelForm):
    """A token's scope, with its model lists offered as checkboxes from the site's own lists."""

    transcription_models = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple
    )
    realtime_models = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read per form, not at import: the site's lists are settings.
        self.fields["transcription_models"].choices = [
            (model, model) for model in settings.REALTIME_TRANSCRIPTION_MODELS
        ]
        self.fields["realtime_models"].choices = [
            (model, model) for model in settings.REALTIME_ALLOWED_MODELS
        ]

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("scope_kind") == ScopeKind.CUSTOM and not cleaned.get("realtime_models"):
            self.add_error(
                "realtime_models",
                "A custom scope needs at least one realtime model, or its holder cannot connect.",
            )
        return cleaned


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ["hint", "name", "user", "scope_kind", "created", "last_used", "revoked"]
    list_filter = ["revoked", "scope_kind"]
    list_select_related = ["user"]
    search_fields = ["name", "user__username", "hint"]
    readonly_fields = ["user", "hint", "digest", "created", "last_used", "revoked"]
    fieldsets = [
        (None, {"fields": ["name", *readonly_fields]}),
        ("What the holder may set in their session", {"fields": ["scope_kind"]}),
        (
            "Custom scope",
            {
                "fields": [
                    "may_set_instructions",
                    "may_set_tools",
                    "may_set_prompt",
                    "transcription_models",
                    "realtime_models",
                    "max_output_tokens",
                ],
                "description": "Used only when the scope above is Custom.",
            },
        ),
    ]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        # Tokens are shown once, so they are made with `manage.py create_api_token`.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for api_token in queryset:
            services.api_token_revoke(api_token=api_token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


class UserLimitsInline(admin.StackedInline):
    model = UserLimits
    can_delete = True
    # One row per user, so the admin titles it with the singular name.
    verbose_name = "Daily limits and recording (empty = site default, 0 = unlimited)"


# The budgets are edited where the user is: on the user's own admin page.
User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class UserWithLimitsAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, UserLimitsInline]


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    list_display = ["user", "daily_minutes", "daily_cost_usd", "record_audio"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
