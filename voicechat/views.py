"""Pages: the voice chat and the user's conversation history."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.templatetags.static import static

from voicechat.models import Backend, Conversation, Role, TranscriptItem
from voicechat.upstream import resolve_backend

HISTORY_PAGE_SIZE = 20


def chat_config() -> dict:
    """What the chat page's JavaScript needs, handed over with json_script (never templated JS)."""
    return {
        "realtimePath": "/v1/realtime",
        "model": settings.REALTIME_MODEL,
        "voices": list(settings.REALTIME_VOICES),
        "voice": settings.REALTIME_VOICE,
        "voiceDescriptions": voice_descriptions(),
        "worklets": {
            "capture": static("voicechat/worklets/capture-processor.js"),
            "playback": static("voicechat/worklets/playback-processor.js"),
        },
    }


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
    return render(request, "voicechat/chat.html", {"chat_config": chat_config(), "nav": "chat"})


@login_required
def history(request: HttpRequest) -> HttpResponse:
    # One query for the page: each row's line count and preview (the first thing the user said,
    # which names a conversation better than the greeting) come from annotations.
    first_words = (
        TranscriptItem.objects.filter(conversation=OuterRef("pk"), role=Role.USER)
        .exclude(text="")
        .order_by("created", "pk")
        .values("text")[:1]
    )
    conversations = (
        Conversation.objects.for_user(request.user)
        .recent()
        .annotate(item_count=Count("items"), preview=Subquery(first_words))
    )
    page = Paginator(conversations, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "voicechat/history.html", {"page": page, "nav": "history"})


@login_required
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Scoped to the user: someone else's conversation is a 404, not a 403, so ids leak nothing.
    conversation = get_object_or_404(Conversation.objects.for_user(request.user), pk=pk)
    return render(
        request,
        "voicechat/conversation_detail.html",
        {"conversation": conversation, "items": conversation.ordered_items(), "nav": "history"},
    )
