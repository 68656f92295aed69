"""The monitor's health numbers (voicechat/monitoring/dashboard.py) and who may see them."""

from datetime import timedelta

import pytest
from django.utils.timezone import now

from voicechat.enums import EndReason, Role
from voicechat.models import Conversation, TranscriptItem
from voicechat.monitoring import dashboard
from voicechat.services import conversation_end, conversation_start

pytestmark = pytest.mark.django_db


def _conversation(user, process: str, *, ended: str | None = None) -> Conversation:
    conversation = conversation_start(
        user=user, backend="openai", model="gpt-realtime", voice="", process=process
    )
    if ended:
        conversation_end(conversation_id=conversation.pk, reason=ended)
    return conversation


def _replies(conversation, *latencies_ms: int, minutes_ago: int = 1) -> None:
    for n, ms in enumerate(latencies_ms):
        TranscriptItem.objects.create(
            conversation=conversation,
            item_id=f"a{conversation.pk}-{minutes_ago}-{n}",
            role=Role.ASSISTANT,
            latency_ms=ms,
            created=now() - timedelta(minutes=minutes_ago),
        )


def test_counts_latency_and_errors_per_process(alice):
    one = _conversation(alice, "web-1:10")
    _replies(one, 300, 400, 1200, 6000)
    _replies(one, 9999, minutes_ago=20)  # before the window: not counted
    two = _conversation(alice, "web-2:20", ended=EndReason.CLIENT_CLOSED)
    _replies(two, 800)
    _conversation(alice, "web-2:20", ended=EndReason.UPSTREAM_ERROR)
    stale = _conversation(alice, "web-2:20", ended=EndReason.SERVER_ERROR)
    Conversation.objects.filter(pk=stale.pk).update(ended=now() - timedelta(hours=2))

    health = dashboard.health()

    assert health.open == 1 and health.open_by_backend == {"openai": 1}
    assert health.latencies.values == [300, 400, 800, 1200, 6000]
    assert health.latencies.median_seconds == 0.8
    assert health.latencies.p90_seconds == 6.0
    assert [bar["count"] for bar in health.latencies.bars()] == [2, 1, 1, 0, 0, 0, 1]
    assert sorted(health.ends, key=lambda end: end["reason"]) == [
        {"reason": "client_closed", "count": 1, "error": False},
        {"reason": "upstream_error", "count": 1, "error": True},
    ]
    assert health.error_percent == 50
    web1, web2 = health.processes
    assert (web1.process, web1.open, web1.latencies.count, web1.ended) == ("web-1:10", 1, 4, 0)
    assert (web2.process, web2.open, web2.latencies.count, web2.ended, web2.errors) == (
        "web-2:20",
        0,
        1,
        2,
        1,
    )


def test_the_panel_is_for_staff_only(client, alice, staff_user):
    assert client.get("/monitor/health").status_code == 302  # to the sign-in page
    client.force_login(alice)
    assert client.get("/monitor/health").status_code == 302
    client.force_login(staff_user)
    page = client.get("/monitor/health").content.decode()
    assert 'data-testid="stat-open">0<' in page
