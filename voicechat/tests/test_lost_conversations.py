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


@pytest.mark.django_db(transaction=True)
def test_ends_stored_before_the_start_are_repaired_by_migration(alice):
    """Rows ended the old way (before their start) are re-ended at their last line."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, repair = (
        ("voicechat", "0004_conversation_engine"),
        ("voicechat", "0005_repair_lost_conversation_ends"),
    )
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([before])
    try:
        apps = executor.loader.project_state([before]).apps
        started = now() - timedelta(minutes=10)
        conversation = apps.get_model("voicechat", "Conversation").objects.create(
            user_id=alice.pk,
            backend="local",
            model="m",
            started=started,
            heartbeat=started - timedelta(milliseconds=1),
            ended=started - timedelta(milliseconds=1),
            end_reason=EndReason.PROCESS_LOST,
        )
        apps.get_model("voicechat", "TranscriptItem").objects.create(
            conversation_id=conversation.pk,
            item_id="u1",
            role=Role.USER,
            updated=started + timedelta(seconds=90),
        )
        MigrationExecutor(connection).migrate([repair])
    finally:
        MigrationExecutor(connection).migrate(latest)
    repaired = Conversation.objects.get(pk=conversation.pk)
    assert repaired.ended == started + timedelta(seconds=90)
