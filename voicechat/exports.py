"""Conversations as JSON and Markdown, for the admin export actions."""

from voicechat.models import Conversation


def conversation_as_dict(conversation: Conversation) -> dict:
    return {
        "id": conversation.pk,
        "user": conversation.user.get_username(),
        "backend": conversation.backend,
        "model": conversation.model,
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


def conversation_as_markdown(conversation: Conversation) -> str:
    lines = [
        f"# Conversation {conversation.pk}",
        "",
        f"- User: {conversation.user.get_username()}",
        f"- Started: {conversation.started:%Y-%m-%d %H:%M:%S %Z}",
        f"- Model: {conversation.model} ({conversation.get_backend_display()})",
        f"- Ended: {conversation.get_end_reason_display() or 'still open'}",
        f"- Tokens: {conversation.input_tokens} in, {conversation.output_tokens} out;"
        f" estimated cost ${conversation.cost_usd:.4f}",
        "",
    ]
    for item in conversation.ordered_items():
        if item.status == "deleted":
            continue
        marker = " *(interrupted)*" if item.status in ("truncated", "interrupted") else ""
        lines.append(f"**{item.get_role_display()}:** {item.text or '…'}{marker}")
        lines.append("")
    return "\n".join(lines)
