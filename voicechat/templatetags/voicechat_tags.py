"""Template filters for the history pages and admin."""

from datetime import timedelta
from decimal import Decimal

from django import template
from django.utils.translation import gettext, gettext_lazy

from voicechat.enums import EndReason

register = template.Library()


@register.filter
def duration_short(value: timedelta | None) -> str:
    """A duration as people say it: "45 s", "3 min 05 s", "1 h 02 min"."""
    if value is None:
        return ""
    seconds = max(0, int(value.total_seconds()))
    if seconds < 60:
        return gettext("%(seconds)d s") % {"seconds": seconds}
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return gettext("%(minutes)d min %(seconds)02d s") % {"minutes": minutes, "seconds": seconds}
    hours, minutes = divmod(minutes, 60)
    return gettext("%(hours)d h %(minutes)02d min") % {"hours": hours, "minutes": minutes}


@register.filter
def usd(value: Decimal | None) -> str:
    """An estimated cost as people read it: "$0.0012", "$1.25"; "—" when there is none."""
    if not value:
        return "—"
    # Realtime turns cost fractions of a cent: two decimals would show most of them as $0.00.
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


_SPEAKERS = {"user": gettext_lazy("You"), "assistant": gettext_lazy("Assistant")}


@register.filter
def speaker(role: str) -> str:
    """Who said a line, as its owner reads it: "You", "Assistant", "Tool"."""
    return _SPEAKERS.get(role, role.capitalize())


@register.filter
def length_said(conversation) -> str:
    """How long a conversation lasted, "at least" when its end is only its last sign of life."""
    length = duration_short(conversation.duration)
    if conversation.end_reason == EndReason.PROCESS_LOST:
        return gettext("at least %(length)s") % {"length": length}
    return length
