"""A conversation whose server process died: ended at its last known activity, never before."""

import asyncio
import json
import os
import signal
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils.timezone import now
from websockets.asyncio.client import connect

from voicechat import lifecycle
from voicechat.enums import EndReason, Role
from voicechat.models import Conversation, TranscriptItem
from voicechat.services import (
    ItemChange,
    RecorderBatch,
    conversation_start,
    conversations_end_stale,
    recorder_batch_write,
)
from voicechat.tests.conftest import db, free_port
from voicechat.tests.servers import children, serve_process, server_env

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


def test_a_line_stored_after_a_lost_end_moves_the_end_to_it(lost):
    """Swept as lost while its process was in fact still recording (the database was out of
    its reach): the end never stays before a line."""
    conversations_end_stale()
    lost.refresh_from_db()
    batch = RecorderBatch(items=[ItemChange(item_id="item_a1", role=Role.ASSISTANT, text="Late")])
    recorder_batch_write(conversation_id=lost.pk, model="", batch=batch)
    lost.refresh_from_db()
    line = TranscriptItem.objects.get(conversation=lost, item_id="item_a1")
    assert lost.end_reason == EndReason.PROCESS_LOST
    assert lost.ended == line.updated


async def _ended(conversation) -> Conversation | None:
    row = await db(Conversation.objects.get, pk=conversation.pk)
    return row if row.ended is not None else None


async def _until_ended(conversation, timeout: float = 30) -> Conversation:
    async with asyncio.timeout(timeout):
        while (row := await _ended(conversation)) is None:
            await asyncio.sleep(0.05)
    return row


@sync_to_async
def _lost_elsewhere(user, *, line_after: timedelta) -> tuple[Conversation, TranscriptItem]:
    """A conversation of a process on another host that died ten minutes ago, one line later."""
    conversation = conversation_start(
        user=user, backend="local", model="m", voice="v", process="elsewhere:4242"
    )
    started = now() - timedelta(minutes=10)
    Conversation.objects.filter(pk=conversation.pk).update(started=started, heartbeat=started)
    line = TranscriptItem.objects.create(
        conversation=conversation, item_id="u1", role=Role.USER, updated=started + line_after
    )
    conversation.refresh_from_db()
    return conversation, line


@pytest.mark.django_db(transaction=True)
async def test_an_idle_process_ends_a_dead_process_s_conversations_from_its_start(alice, settings):
    """No conversation is live anywhere: the server's start, then its beat, end them anyway,
    within one REALTIME_HEARTBEAT_INTERVAL (here 0.2 s; 30 s by default)."""
    settings.REALTIME_STALE_AFTER = 60
    settings.REALTIME_HEARTBEAT_INTERVAL = 0.2
    first, first_line = await _lost_elsewhere(alice, line_after=timedelta(minutes=2))
    messages: asyncio.Queue = asyncio.Queue()
    sent = []

    async def send(message) -> None:
        sent.append(message)

    async def not_called(scope, receive, send) -> None:
        raise AssertionError("lifespan events are the wrapper's")

    server = asyncio.create_task(
        lifecycle.keeping_alive(not_called)({"type": "lifespan"}, messages.get, send)
    )
    await messages.put({"type": "lifespan.startup"})
    try:
        ended = await _until_ended(first)
        assert ended.end_reason == EndReason.PROCESS_LOST
        assert ended.ended == first_line.updated
        assert ended.duration == timedelta(minutes=2)
        # Still idle: the next one is found by the beat, not only at the start.
        second, second_line = await _lost_elsewhere(alice, line_after=timedelta(seconds=30))
        ended = await _until_ended(second)
        assert ended.ended == second_line.updated >= ended.started
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(server, 10)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


@pytest.mark.django_db(transaction=True)
async def test_serve_ends_a_killed_worker_s_conversation_at_its_last_line(
    fake_upstream, alice, alice_token
):
    """kill -9 of a `serve` worker, no other conversation live: ended at once by `serve`."""
    port = free_port()
    proc = serve_process(
        port,
        server_env(upstream_url=fake_upstream.url, REALTIME_STALE_AFTER="3600"),
        workers=1,
    )
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    ws = await connect(
                        f"ws://127.0.0.1:{port}/v1/realtime",
                        additional_headers={"Authorization": f"Bearer {alice_token}"},
                    )
                    break
                except OSError:
                    assert proc.poll() is None, "serve exited early"
                    await asyncio.sleep(0.1)
        assert json.loads(await ws.recv())["type"] == "session.created"
        await fake_upstream.push(
            [
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": "item_u1",
                    "transcript": "Hello before the crash",
                }
            ]
        )
        async with asyncio.timeout(30):
            while not await db(TranscriptItem.objects.filter(item_id="item_u1").exists):
                await asyncio.sleep(0.05)
        conversation = await db(Conversation.objects.get, user=alice)
        # The worker holding it (serve's children also include multiprocessing's helper).
        worker = int(conversation.process.rpartition(":")[2])
        assert worker in children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        ended = await _until_ended(conversation)
        line = await db(TranscriptItem.objects.get, item_id="item_u1")
        assert ended.end_reason == EndReason.PROCESS_LOST
        assert ended.ended >= line.updated
        assert ended.ended >= ended.started
        await ws.close()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert "stopped with 1 conversation(s) open" in output, output
