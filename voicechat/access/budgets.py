"""Daily budgets: conversation minutes and estimated cost per user per day.

Checked when a socket opens and re-checked while it lives (every REALTIME_BUDGET_CHECK_SECONDS
and after every response), from the shared database, so concurrent conversations of one user,
on any server process, draw from the same budget.
"""

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, Sum, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils.timezone import localtime, now

from voicechat.models import Conversation, UserLimits


@dataclass(frozen=True)
class DailyLimits:
    minutes: int  # 0 = unlimited
    cost_usd: Decimal  # 0 = unlimited


def limits_for(user) -> DailyLimits:
    limits = UserLimits.objects.filter(user=user).first()
    minutes, cost = settings.REALTIME_DAILY_MINUTES, settings.REALTIME_DAILY_COST_USD
    if limits is not None and limits.daily_minutes is not None:
        minutes = limits.daily_minutes
    if limits is not None and limits.daily_cost_usd is not None:
        cost = limits.daily_cost_usd
    return DailyLimits(minutes=minutes, cost_usd=cost)


def _start_of_today():
    return localtime().replace(hour=0, minute=0, second=0, microsecond=0)


@database_sync_to_async
def budget_problem(
    user, *, exclude_conversation: int | None = None, extra_cost=Decimal(0)
) -> str | None:
    """Why `user` may not talk any more today, or None while both budgets have room.

    `extra_cost` is spending the database has not seen yet (the live conversation's responses,
    counted by its recorder and left out of the sum through `exclude_conversation`).
    """
    limits = limits_for(user)
    if not limits.minutes and not limits.cost_usd:
        return None
    today, moment = _start_of_today(), now()
    conversations = Conversation.objects.for_user(user).since(today)
    if limits.minutes:
        # Time talked today: each conversation from the later of its start and midnight, to its
        # end (or now, while it is still going), summed by the database.
        talked = conversations.aggregate(
            total=Sum(
                ExpressionWrapper(
                    Coalesce("ended", Value(moment, output_field=DateTimeField()))
                    - Greatest("started", Value(today, output_field=DateTimeField())),
                    output_field=DurationField(),
                )
            )
        )["total"]
        if talked is not None and talked.total_seconds() >= limits.minutes * 60:
            return (
                f"You have used today's {limits.minutes} conversation minutes. "
                "The budget renews at midnight."
            )
    if limits.cost_usd:
        counted = (
            conversations.exclude(pk=exclude_conversation)
            if exclude_conversation
            else conversations
        )
        spent = (counted.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)) + extra_cost
        if spent >= limits.cost_usd:
            return (
                f"You have used today's budget of ${limits.cost_usd:.2f}. "
                "The budget renews at midnight."
            )
    return None


async def watch_budget(user, *, conversation_id: int, live_cost, wake: asyncio.Event) -> str:
    """Returns, with the reason, once `user` runs out of budget during a conversation.

    `live_cost()` gives the conversation's cost so far; `wake` is set after each response so a
    costly answer is noticed at once rather than at the next periodic check.
    """
    while True:
        try:
            async with asyncio.timeout(settings.REALTIME_BUDGET_CHECK_SECONDS):
                await wake.wait()
        except TimeoutError:
            pass
        wake.clear()
        problem = await budget_problem(
            user, exclude_conversation=conversation_id, extra_cost=live_cost()
        )
        if problem:
            return problem
