"""Staff "End" reaches a conversation through its process's one reader (live.EndRequests).

A reader per conversation, cancelled at the conversation's end, sometimes never stopped inside
channels_redis, and the end was never stored (issue 13). The scale-out test
(test_multiprocess.py) covers the same path across two real processes on Redis.
"""

import asyncio

import pytest

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.monitoring import live
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


def end_request_readers() -> list[asyncio.Task]:
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "EndRequests._read"
    ]


async def test_one_reader_serves_every_conversation_and_ends_only_the_one_asked_for(
    fake_upstream, alice, alice_token, connect, settings
):
    settings.REALTIME_MAX_CONCURRENT_PER_USER = 2
    _, first = await connect(token=alice_token)
    await first.receive_until("session.updated")
    _, second = await connect(token=alice_token)
    await second.receive_until("session.updated")
    rows = await db(lambda: list(Conversation.objects.order_by("pk")))
    assert rows[0].channel_name and rows[0].channel_name == rows[1].channel_name
    assert len(end_request_readers()) == 1

    assert await live.request_end(rows[0].pk, by="olga")
    events, code = await first.receive_close()
    assert code == CloseCode.ENDED_BY_STAFF
    assert events[-1]["error"]["code"] == "ended_by_staff"
    await first.communicator.disconnect()
    ended = await db(Conversation.objects.get, pk=rows[0].pk)
    assert (ended.end_reason, ended.end_detail) == (EndReason.ENDED_BY_STAFF, "ended by olga")

    # The other conversation goes on, still reachable; a second request for the first is moot.
    assert not await live.request_end(rows[0].pk, by="olga")
    await second.send({"type": "input_audio_buffer.commit"})
    await second.receive_until("input_audio_buffer.committed")
    assert len(end_request_readers()) == 1

    # Once the last conversation has left, the reader returns by itself (nothing cancels it).
    await second.communicator.disconnect()
    assert (await finished_conversation(alice)).end_reason == EndReason.CLIENT_CLOSED
    async with asyncio.timeout(5):
        while end_request_readers():
            await asyncio.sleep(0.01)


async def test_the_next_conversation_is_reachable_after_the_reader_stopped(
    fake_upstream, alice, alice_token, connect
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.communicator.disconnect()
    await finished_conversation(alice)
    async with asyncio.timeout(5):
        while end_request_readers():
            await asyncio.sleep(0.01)

    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    latest = await db(lambda: Conversation.objects.order_by("-pk").first())
    assert await live.request_end(latest.pk, by="olga")
    _, code = await client.receive_close()
    assert code == CloseCode.ENDED_BY_STAFF
