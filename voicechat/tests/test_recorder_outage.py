"""The database goes away under a conversation: nothing is lost.

The outage is real: another connection holds the database's write lock, and the gateway's
writes give up after 50 ms ("database is locked" in SQLite, a lock timeout in PostgreSQL), as
they would against a database that is down, failing over, or locked by a migration.
"""

import asyncio
import contextlib
import inspect
import json
import logging
import sqlite3
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import connection

from voicechat.models import Conversation, TranscriptItem, UsageRecord
from voicechat.records.recorder import TranscriptRecorder
from voicechat.services import conversation_end, conversation_start, conversations_end_stale
from voicechat.tests.conftest import db
from voicechat.tests.fake_upstream import USAGE

pytestmark = pytest.mark.django_db(transaction=True)

LOCKED_TABLES = ("voicechat_transcriptitem", "voicechat_usagerecord", "voicechat_conversation")


@contextlib.asynccontextmanager
async def database_locked(writers_wait: float = 0.05):
    """While inside, another connection holds the write lock; writers wait `writers_wait`
    seconds for it, then fail."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    saved = dict(options)
    if connection.vendor == "sqlite":
        options["timeout"] = writers_wait
        locker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
    else:
        import psycopg

        options["options"] = f"-c lock_timeout={int(writers_wait * 1000)}"
        params = connection.settings_dict
        locker = psycopg.connect(
            dbname=params["NAME"],
            user=params["USER"],
            password=params["PASSWORD"],
            host=params["HOST"],
            port=params["PORT"] or None,
        )
        locker.execute(f"LOCK TABLE {', '.join(LOCKED_TABLES)} IN EXCLUSIVE MODE")
    await _reconnect()
    try:
        yield
    finally:
        locker.rollback()
        locker.close()
        options.clear()
        options.update(saved)
        await _reconnect()


async def _reconnect() -> None:
    """The database thread's next query opens a connection with the options now set."""

    def close() -> None:
        connection.close()
        if getattr(connection, "pool", None) is not None:
            connection.close_pool()

    await database_sync_to_async(close)()


def _line(item_id: str, transcript: str) -> tuple[str, str]:
    event = {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": item_id,
        "transcript": transcript,
    }
    return event["type"], json.dumps(event)


def _response_done(response_id: str) -> tuple[str, str]:
    event = {"type": "response.done", "response": {"id": response_id, "usage": USAGE}}
    return event["type"], json.dumps(event)


async def _start(alice) -> tuple[Conversation, TranscriptRecorder]:
    conversation = await db(
        conversation_start, user=alice, backend="openai", model="gpt-realtime", voice="marin"
    )
    recorder = TranscriptRecorder(conversation_id=conversation.pk, price_model="gpt-realtime")
    recorder.start()
    return conversation, recorder


async def _until(condition, timeout: float = 30) -> None:
    """Wait for `condition()` (a value, or an awaitable one) to be true."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


def _failed_writes(caplog) -> int:
    return sum(
        record.name == "voicechat.records.recorder" and record.levelno >= logging.WARNING
        for record in caplog.records
    )


async def _stored(conversation) -> dict[str, str]:
    return await db(
        lambda: dict(
            TranscriptItem.objects.filter(conversation=conversation).values_list("item_id", "text")
        )
    )


async def _stored_line(conversation, item_id: str) -> bool:
    return item_id in await _stored(conversation)


@pytest.fixture
def spill_dir(settings, tmp_path):
    settings.TRANSCRIPT_SPILL_DIR = str(tmp_path / "spill")
    return tmp_path / "spill"


async def test_lines_learned_while_the_database_is_away_are_stored_when_it_is_back(
    alice, spill_dir, caplog
):
    conversation, recorder = await _start(alice)
    recorder.observe(*_line("item_u1", "Before the outage"))
    await _until(lambda: _stored_line(conversation, "item_u1"))
    async with database_locked():
        recorder.observe(*_line("item_u2", "During the outage"))
        recorder.observe(*_response_done("resp_1"))
        # More than the old three attempts: it used to give up and drop the batch here.
        await _until(lambda: _failed_writes(caplog) >= 4)
        recorder.observe(*_line("item_u3", "Still during the outage"))
    await recorder.close()

    assert recorder.spilled_to is None
    assert recorder.end_detail("client closed") == "client closed"
    assert not spill_dir.exists()
    assert await _stored(conversation) == {
        "item_u1": "Before the outage",
        "item_u2": "During the outage",
        "item_u3": "Still during the outage",
    }
    assert await db(UsageRecord.objects.filter(conversation=conversation).count) == 1


async def test_too_much_held_goes_to_disk_in_order_and_the_rest_follows(alice, spill_dir):
    conversation, recorder = await _start(alice)
    recorder.MAX_HELD = 3
    async with database_locked():
        for n in range(5):
            recorder.observe(*_line(f"item_u{n}", f"Line {n}"))
        await _until(lambda: recorder.spilled_to is not None)
        # Held memory is bounded: what was held is on disk now.
        assert recorder._batch.size() <= recorder.MAX_HELD
    recorder.observe(*_line("item_u0", "Line 0, corrected later"))
    await recorder.close()

    # The correction followed the earlier lines to disk, so the replay cannot undo it.
    assert await _stored(conversation) == {}
    await db(call_command, "replay_spilled_transcripts")
    stored = await _stored(conversation)
    assert stored == {"item_u0": "Line 0, corrected later"} | {
        f"item_u{n}": f"Line {n}" for n in range(1, 5)
    }


async def test_database_down_past_the_end_spills_and_the_replay_stores_it_once(
    alice, spill_dir, capsys
):
    conversation, recorder = await _start(alice)
    recorder.observe(*_line("item_u1", "Said before the outage"))
    await _until(lambda: _stored_line(conversation, "item_u1"))
    async with database_locked():
        recorder.observe(*_line("item_u2", "Said during the outage"))
        recorder.observe(*_response_done("resp_1"))
        recorder.observe(*_line("item_u3", "Said last"))
        await recorder.close()
    assert recorder.spilled_to == spill_dir / f"conversation-{conversation.pk}.jsonl"
    assert recorder.spilled_to.exists()
    # As the consumer stores the end, once the database answers again.
    await db(
        conversation_end,
        conversation_id=conversation.pk,
        reason="client_closed",
        detail=recorder.end_detail("client closed"),
    )
    assert await _stored(conversation) == {"item_u1": "Said before the outage"}

    await db(call_command, "replay_spilled_transcripts")
    expected = {
        "item_u1": "Said before the outage",
        "item_u2": "Said during the outage",
        "item_u3": "Said last",
    }
    assert await _stored(conversation) == expected
    replayed = await db(Conversation.objects.get, pk=conversation.pk)
    assert replayed.end_detail == (
        f"client closed; transcript spilled to {recorder.spilled_to} "
        "(manage.py replay_spilled_transcripts); "
        f"transcript stored late from {recorder.spilled_to.name}"
    )
    assert await db(UsageRecord.objects.filter(conversation=conversation).count) == 1
    assert replayed.input_tokens == USAGE["input_tokens"]
    # Every line is stamped no later than the end: the replay keeps when it was learned.
    last_line = await db(
        lambda: TranscriptItem.objects.filter(conversation=conversation).latest("updated")
    )
    assert last_line.updated <= replayed.ended

    # A second run finds nothing; replaying the same file again by hand duplicates nothing.
    capsys.readouterr()
    await db(call_command, "replay_spilled_transcripts")
    assert "nothing to replay" in capsys.readouterr().out
    (done,) = spill_dir.glob("*.replayed-*")
    done.rename(spill_dir / f"conversation-{conversation.pk}.jsonl")
    await db(call_command, "replay_spilled_transcripts")
    again = await db(Conversation.objects.get, pk=conversation.pk)
    assert await _stored(conversation) == expected
    assert await db(UsageRecord.objects.filter(conversation=conversation).count) == 1
    assert again.input_tokens == USAGE["input_tokens"]
    assert again.end_detail == replayed.end_detail


async def test_a_spilled_conversation_whose_end_was_never_stored_ends_at_its_last_line(
    alice, spill_dir, settings
):
    """The database was still away when the consumer stored the end; swept as lost later at its
    last heartbeat, the replay moves the end to its last line and says where it came from."""
    settings.REALTIME_STALE_AFTER = 60
    conversation, recorder = await _start(alice)
    async with database_locked():
        recorder.observe(*_line("item_u1", "Said while the database was away"))
        await recorder.close()
    assert recorder.spilled_to is not None
    await db(
        lambda: Conversation.objects.filter(pk=conversation.pk).update(
            started=conversation.started - timedelta(minutes=10),
            heartbeat=conversation.started - timedelta(minutes=5),
        )
    )
    assert await db(conversations_end_stale) == 1

    await db(call_command, "replay_spilled_transcripts")
    ended = await db(Conversation.objects.get, pk=conversation.pk)
    line = await db(TranscriptItem.objects.get, conversation=conversation, item_id="item_u1")
    assert ended.end_reason == "process_lost"
    assert ended.ended == line.updated
    assert ended.end_detail.endswith(f"transcript stored late from {recorder.spilled_to.name}")


async def test_a_write_stuck_on_the_database_does_not_hold_up_the_end(alice, spill_dir):
    """A write waiting on a lock for minutes when the conversation ends (a server shutting
    down has REALTIME_SHUTDOWN_TIMEOUT, 10 s): close() cuts it short and spills."""
    conversation, recorder = await _start(alice)
    recorder.WRITE_TIMEOUT = 600
    async with database_locked(writers_wait=600):
        recorder.observe(*_line("item_u1", "Said while the write hangs"))
        await asyncio.sleep(0.2)  # let the writer start its write (it cannot finish)
        async with asyncio.timeout(60):
            await recorder.close()
        assert recorder.spilled_to is not None
    await db(call_command, "replay_spilled_transcripts")
    assert await _stored(conversation) == {"item_u1": "Said while the write hangs"}
