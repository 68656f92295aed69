"""Conversations as JSON and Markdown, for the admin export actions and the owner's download;
and as a ZIP of both with the conversation's recordings, when asked for."""

import io
import re
import zipfile

import orjson
from django.http import HttpResponse

from voicechat.enums import EndReason
from voicechat.models import Conversation, recordings_storage

# Characters that are Markdown markup anywhere in a line (emphasis, code, links, HTML, tables,
# and entities: "&#35;" would show as "#").
_INLINE_MARKUP = re.compile(r"([\\`*_{}\[\]<>|~&])")
# Markup that counts only at the start of a line and can interrupt a paragraph: headings,
# quotes, lists, rules and setext underlines. Only the punctuation is escaped ("12\." for
# "12."): a backslash before a digit is not an escape in Markdown.
_LINE_START_MARKUP = re.compile(r"^(\s*\d*)([#>+=.)-])", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n")


def attachment(content: str | bytes, filename: str, content_type: str) -> HttpResponse:
    """A download the browser saves as `filename` instead of showing it."""
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def model_used(conversation: Conversation) -> str | None:
    """The model that answered, or None when the client's ?model= was refused (it is stored as
    asked, for the audit, but nothing ran it)."""
    if conversation.end_reason == EndReason.MODEL_NOT_ALLOWED:
        return None
    return conversation.model


def conversation_as_dict(conversation: Conversation) -> dict:
    return {
        "id": conversation.pk,
        "user": conversation.user.get_username(),
        "backend": conversation.backend,
        "model": model_used(conversation),
        "voice": conversation.voice,
        "started": conversation.started.isoformat(),
        "ended": conversation.ended.isoformat() if conversation.ended else None,
        "end_reason": conversation.end_reason,
        "input_tokens": conversation.input_tokens,
        "output_tokens": conversation.output_tokens,
        "cached_tokens": conversation.cached_tokens,
        "cost_usd": str(conversation.cost_usd),
        "transcript": [
            {
                "item_id": item.item_id,
                "previous_item_id": item.previous_item_id or None,
                "role": item.role,
                "kind": item.kind,
                "status": item.status,
                "text": item.text,
                "audio_end_ms": item.audio_end_ms,
                "created": item.created.isoformat(),
            }
            for item in conversation.ordered_items()
        ],
    }


def markdown_text(text: str) -> str:
    """Transcript text as literal Markdown: what someone said can never become a heading, a
    list or a forged "**Assistant:**" label, and a multi-line line stays one paragraph."""
    # Every line break first becomes "\n": a Markdown reader also starts a new line at "\r",
    # which the line-start escaping below would not see.
    text = "\n".join(text.strip().splitlines())
    text = _INLINE_MARKUP.sub(r"\\\1", text)
    text = _LINE_START_MARKUP.sub(r"\1\\\2", text)
    return _BLANK_LINES.sub("\n", text)


def conversation_as_markdown(conversation: Conversation) -> str:
    if model_used(conversation) is None:
        answered_by = "nothing (the model asked for was refused)"
    else:
        answered_by = markdown_text(conversation.answered_by)
    lines = [
        f"# Conversation {conversation.pk}",
        "",
        f"- User: {markdown_text(conversation.user.get_username())}",
        f"- Started: {conversation.started:%Y-%m-%d %H:%M:%S %Z}",
        f"- Answered by: {answered_by}",
        f"- Ended: {conversation.get_end_reason_display() or 'still open'}",
        f"- Tokens: {conversation.input_tokens} in, {conversation.output_tokens} out;"
        f" estimated cost ${conversation.cost_usd:.4f}",
        "",
    ]
    for item in conversation.ordered_items():
        if item.status == "deleted":
            continue
        marker = " *(interrupted)*" if item.status in ("truncated", "interrupted") else ""
        text = markdown_text(item.text) or "…"
        lines.append(f"**{item.get_role_display()}:** {text}{marker}")
        lines.append("")
    return "\n".join(lines)


def conversations_as_zip(conversations, *, folders: bool = False) -> bytes:
    """Each conversation's transcript as Markdown and JSON, and each recorded turn as
    audio/<role>-<item>-<n>.ogg (the JSON's "recordings" says which line each file is the audio
    of); with `folders`, each conversation in a folder conversation-<id>/ of its own."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for conversation in conversations:
            prefix = f"conversation-{conversation.pk}/" if folders else ""
            _write_conversation(archive, conversation, prefix)
    return buffer.getvalue()


def _write_conversation(archive: zipfile.ZipFile, conversation: Conversation, prefix: str) -> None:
    storage = recordings_storage()
    data = conversation_as_dict(conversation)
    data["recordings"] = []
    for recording in conversation.recordings.order_by("created", "pk"):
        name = f"audio/{recording.role}-{recording.item_id}-{recording.pk}.ogg"
        try:
            with storage.open(recording.file.name) as audio:
                # Stored, not deflated: Opus is compressed already.
                archive.writestr(prefix + name, audio.read(), zipfile.ZIP_STORED)
        except FileNotFoundError:
            continue  # erased meanwhile (retention): the transcript still goes
        data["recordings"].append(
            {
                "item_id": recording.item_id,
                "role": recording.role,
                "duration_ms": recording.duration_ms,
                "file": name,
            }
        )
    archive.writestr(prefix + "conversation.md", conversation_as_markdown(conversation))
    archive.writestr(
        prefix + "conversation.json", orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    )
