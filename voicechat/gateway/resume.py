"""Continuing a past conversation: its transcript replayed to the model as context.

A new conversation started with `?resume=<id>` (History's "Continue this conversation") is
linked to the old one, and before anything the client sends, the old transcript goes upstream
as conversation items: the user's lines as input_text, the assistant's as output_text, in
conversation order. Only the most recent lines that fit REALTIME_RESUME_CONTEXT_TOKENS go (at
about four characters per token, the usual estimate for English; a line that would overflow the
budget is dropped whole, never cut), so a long conversation costs a bounded prompt. Their item
ids start with a prefix of the new conversation's own, so it does not store them a second time.
"""

import secrets

import orjson
from django.conf import settings

from voicechat.enums import Role
from voicechat.models import Conversation

CHARACTERS_PER_TOKEN = 4
_CONTENT_TYPE = {Role.USER: "input_text", Role.ASSISTANT: "output_text"}


def resumable(user, conversation_id: str) -> Conversation | None:
    """The user's own, undeleted conversation `conversation_id` (None for anyone else's)."""
    if not conversation_id.isdigit() or len(conversation_id) > 18:
        return None
    return Conversation.objects.for_user(user).listed().filter(pk=int(conversation_id)).first()


def context_item_prefix() -> str:
    """Item ids for one conversation's replayed lines (OpenAI allows 32 characters)."""
    return f"ctx_{secrets.token_hex(4)}_"


def context_frames(conversation: Conversation, *, id_prefix: str) -> list[str]:
    """conversation.item.create frames replaying `conversation`'s latest lines, oldest first."""
    budget = settings.REALTIME_RESUME_CONTEXT_TOKENS * CHARACTERS_PER_TOKEN
    lines = []
    for item in reversed(conversation.ordered_items()):
        if item.role not in _CONTENT_TYPE or not item.text:
            continue
        if len(item.text) > budget:
            break
        budget -= len(item.text)
        lines.append(item)
    frames = []
    for n, item in enumerate(reversed(lines)):
        content = [{"type": _CONTENT_TYPE[item.role], "text": item.text}]
        frames.append(
            orjson.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "id": f"{id_prefix}{n}",
                        "type": "message",
                        "role": item.role,
                        "content": content,
                    },
                }
            ).decode()
        )
    return frames
