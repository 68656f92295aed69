"""Template filters for the history pages and admin."""

from datetime import timedelta
from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def duration_short(value: timedelta | None) -> str:
    """A duration as people say it: "45 s", "3 min 05 s", "1 h 02 min"."""
    if value is None:
        return ""
    seconds = max(0, int(value.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def usd(value: Decimal | None) -> str:
    """An estimated cost as people read it: "$0.0012", "$1.25"; "—" when there is none."""
    if not value:
        return "—"
    # Realtime turns cost fractions of a cent: two decimals would show most of them as $0.00.
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
