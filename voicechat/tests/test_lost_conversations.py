"""A conversation whose server process died: ended at its last known activity, never before."""

from datetime import timedelta

import pytest
from django.utils.timezone import now

from voicechat.models import Conversation, EndReason, Role, TranscriptItem
from voicechat.services import conversation_start, conversations_end_stale

pytestmark = pytest.mark.django_db


@pytest.fixture
def lost(alice, settings):
    """Alice's conversation, started ten minutes ago on a process that has since died."""
    settings.REALTIME_STALE_AFTER = 60
    conversation = conversation_start(user=alice, backend="local", model="m", voice="v")
    started = now() - timedelta(minutes=10)
    Conversation.objects.filter(pk=conversation.pk).update(started=started, heartbeat=started)
    conversation.refresh_from_db()
    return conversation


def test_a_new_conversation_is_not_seen_alive_before_it_started(alice):
    conversation = conversation_start(user=alice, backend="local", model="m", voice="v")
    assert conversation.heartbeat == conversation.started


def test_lost_conversation_ends_at_its_last_transcript_line(lost):
    # The process died before its first heartbeat, but it recorded what was said.
    last_line = lost.started + timedelta(minutes=3)
    TranscriptItem.objects.create(
        conversation=lost, item_id="item_u1", role=Role.USER, text="Hi", updated=last_line
    )
    assert conversations_end_stale() == 1
    lost.refresh_from_db()
    assert lost.end_reason == EndReason.PROCESS_LOST
    assert lost.ended == last_line
    assert lost.duration == timedelta(minutes=3)


def test_lost_conversation_ends_at_its_last_heartbeat_when_that_is_later(lost):
    last_beat = lost.started + timedelta(minutes=4)
    Conversation.objects.filter(pk=lost.pk).update(heartbeat=last_beat)
    TranscriptItem.objects.create(
        conversation=lost, item_id="item_u1", role=Role.USER, updated=lost.started
    )
    conversations_end_stale()
    lost.refresh_from_db()
    assert lost.ended == last_beat


def test_lost_conversation_never_ends_before_it_started(lost):
    Conversation.objects.filter(pk=lost.pk).update(heartbeat=lost.started - timedelta(seconds=1))
    conversations_end_stale()
    lost.refresh_from_db()
    assert lost.ended == lost.started


def test_a_stored_end_before_the_start_is_not_a_negative_duration(lost):
    lost.ended = lost.started - timedelta(seconds=5)
    assert lost.duration == timedelta(0)
