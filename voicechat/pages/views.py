"""Pages: the voice chat and the user's conversation history."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Subquery
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.utils.translation import get_language, override
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_safe

from voicechat import services
from voicechat.enums import Backend, Role
from voicechat.gateway.backends import resolve_backend
from voicechat.gateway.resume import resumable
from voicechat.models import (
    Conversation,
    ConversationQuerySet,
    Recording,
    TranscriptItem,
    recordings_storage,
)
from voicechat.records.exports import attachment, conversation_as_markdown, conversations_as_zip
from voicechat.records.recordings import CONTENT_TYPE, recording_enabled

HISTORY_PAGE_SIZE = 20


def chat_config() -> dict:
    """What the chat page's JavaScript needs, handed over with json_script (never templated JS)."""
    return {
        "realtimePath": "/v1/realtime",
        "callsPath": "/v1/realtime/calls",
        # webrtc or websocket; the page's own switch (kept in the browser) can pick the other.
        "transport": settings.REALTIME_CHAT_TRANSPORT,
        "model": settings.REALTIME_MODEL,
        "voices": list(settings.REALTIME_VOICES),
        "voice": settings.REALTIME_VOICE,
        "voiceDescriptions": voice_descriptions(),
        "transcription": transcription_for_page(),
        "worklets": {
            "capture": static("voicechat/worklets/capture-processor.js"),
            "playback": static("voicechat/worklets/playback-processor.js"),
        },
    }


def transcription_for_page() -> dict | None:
    """The input transcription the page asks for, so the assistant listens for the language the
    page speaks (zh-hans -> zh); None when that is the server's own REALTIME_LANGUAGE.

    The whole object, with the server's model: a session.update replaces the transcription
    settings as a whole (the offline engine does; OpenAI documents no merge).
    """
    language = (get_language() or settings.LANGUAGE_CODE).split("-")[0]
    if language == settings.REALTIME_LANGUAGE:
        return None
    return {"model": settings.REALTIME_TRANSCRIPTION_MODEL, "language": language}


def voice_descriptions() -> dict[str, str]:
    """Which offline voice speaks each name, for the picker; none when OpenAI's voices speak."""
    if resolve_backend() != Backend.LOCAL:
        return {}
    # Imported here: the synthesizers' modules (numpy, soxr) serve only the offline engine.
    from voicechat.local_engine.tts import voice_descriptions as local_descriptions

    descriptions = local_descriptions()
    return {name: descriptions[name] for name in settings.REALTIME_VOICES if name in descriptions}


@login_required
def chat(request: HttpRequest) -> HttpResponse:
    config = chat_config()
    # History's "Continue this conversation": the page opens its socket with ?resume=.
    resumed = resumable(request.user, request.GET.get("resume", ""))
    if resumed is not None:
        config["resume"] = {"id": resumed.pk, "started": resumed.started.isoformat()}
    return render(
        request,
        "voicechat/chat.html",
        # Said on the page, before anyone speaks: what they say will be kept as audio.
        {"chat_config": config, "nav": "chat", "recording": recording_enabled(request.user)},
    )


@login_required
def history(request: HttpRequest) -> HttpResponse:
    # A conversation whose server process died is shown as ended, not as live.
    services.conversations_end_stale(user=request.user)
    # One query for the page: each row's line count, preview and last line come from
    # annotations. The preview is the first thing the user said (it names a conversation better
    # than the greeting); the last line tells apart conversations that opened the same way.
    said = TranscriptItem.objects.filter(conversation=OuterRef("pk")).exclude(text="")
    first_words = said.filter(role=Role.USER).order_by("created", "pk").values("text")[:1]
    last_line = said.order_by("-created", "-pk")
    conversations = (
        own_conversations(request)
        .recent()
        .annotate(
            item_count=Count("items"),
            preview=Subquery(first_words),
            last_text=Subquery(last_line.values("text")[:1]),
            last_role=Subquery(last_line.values("role")[:1]),
        )
    )
    page = Paginator(conversations, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "voicechat/history.html", {"page": page, "nav": "history"})


def own_conversations(request: HttpRequest) -> ConversationQuerySet:
    """The signed-in user's conversations, less those they deleted.

    Every history view reads through this: someone else's conversation is a 404, not a 403, so
    ids leak nothing.
    """
    return Conversation.objects.for_user(request.user).listed()


@login_required
@require_safe
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_object_or_404(own_conversations(request), pk=pk)
    items = conversation.ordered_items()
    # Each line's audio, played next to it (both sides' of a turn, when recording was on).
    recordings: dict[str, list[Recording]] = {}
    for recording in conversation.recordings.order_by("created", "pk"):
        recordings.setdefault(recording.item_id, []).append(recording)
    for item in items:
        item.recordings = recordings.get(item.item_id, [])
    return render(
        request,
        "voicechat/conversation_detail.html",
        {
            "conversation": conversation,
            "items": items,
            "has_recordings": bool(recordings),
            "nav": "history",
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET asks to confirm; POST (with its CSRF token) erases the conversation's transcript."""
    conversation = get_object_or_404(own_conversations(request), pk=pk)
    if request.method == "GET":
        return render(
            request,
            "voicechat/conversation_confirm_delete.html",
            {"conversation": conversation, "nav": "history"},
        )
    if not services.conversation_delete(conversation=conversation):
        messages.warning(request, _("This conversation is still going: end it before deleting it."))
        return redirect("conversation_detail", pk=pk)
    messages.success(request, _("Conversation deleted."))
    return redirect("history")


@login_required
@require_safe
def conversation_export(request: HttpRequest, pk: int) -> HttpResponse:
    """The user's own transcript as a Markdown file."""
    conversation = get_object_or_404(own_conversations(request).select_related("user"), pk=pk)
    # The file is written in English (exports.py), whatever the page's language: one language
    # per file, not English labels around translated phrases.
    with override("en"):
        markdown = conversation_as_markdown(conversation)
    return attachment(
        markdown,
        f"conversation-{conversation.pk}-{conversation.started:%Y%m%d-%H%M}.md",
        "text/markdown; charset=utf-8",
    )


@login_required
@require_safe
def conversation_export_zip(request: HttpRequest, pk: int) -> HttpResponse:
    """The user's own transcript (Markdown and JSON) with its recordings, as one ZIP file."""
    conversation = get_object_or_404(own_conversations(request).select_related("user"), pk=pk)
    with override("en"):
        archive = conversations_as_zip([conversation])
    return attachment(
        archive,
        f"conversation-{conversation.pk}-{conversation.started:%Y%m%d-%H%M}.zip",
        "application/zip",
    )


@login_required
@require_safe
def recording_audio(request: HttpRequest, pk: int) -> FileResponse:
    """One recorded turn, streamed to its conversation's owner, or to staff who may view
    recordings (admin); anyone else gets a 404. Never a public URL: files live in storage."""
    recording = get_object_or_404(Recording.objects.select_related("conversation"), pk=pk)
    conversation = recording.conversation
    owner = conversation.user_id == request.user.pk and conversation.deleted is None
    if not owner and not (
        request.user.is_staff and request.user.has_perm("voicechat.view_recording")
    ):
        raise Http404
    try:
        audio = recordings_storage().open(recording.file.name)
    except FileNotFoundError:
        raise Http404 from None
    response = FileResponse(audio, content_type=CONTENT_TYPE)
    response["Cache-Control"] = "private, no-store"
    return response
