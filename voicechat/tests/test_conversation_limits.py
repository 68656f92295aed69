"""Per-user concurrency and conversation length limits (across processes), and stale rows."""

import asyncio
from datetime import timedelta

import pytest
from django.utils.timezone import now

from voicechat import services
from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_user_may_hold_only_so_many_conversations(
    fake_upstream, settings, alice, alice_token, bob, connect
):
    settings.REALTIME_MAX_CONCURRENT_PER_USER = 2
    clients = []
    for _ in range(2):
        connected, client = await connect(token=alice_token)
        await client.receive_until("session.updated")
        clients.append(client)

    connected, refused = await connect(token=alice_token)
    events, code = await refused.receive_close()
    assert code == CloseCode.TOO_MANY_CONVERSATIONS
    assert events[-1]["error"]["code"] == "too_many_conversations"
    assert "2 conversation" in events[-1]["error"]["message"]
    await refused.communicator.disconnect()
    assert await db(Conversation.objects.for_user(alice).count) == 2
    assert len(fake_upstream.request_headers) == 2  # no upstream for the refused one

    # Another user has a limit of their own.
    bob_token = await db(lambda: services.api_token_create(user=bob)[1])
    _, bobs = await connect(token=bob_token)
    await bobs.receive_until("session.updated")

    # Once one ends, there is room again.
    await clients[0].communicator.disconnect()
    _, again = await connect(token=alice_token)
    await again.receive_until("session.updated")


async def test_rows_of_a_lost_process_do_not_count_and_are_ended(
    fake_upstream, settings, alice, alice_token, connect
):
    settings.REALTIME_MAX_CONCURRENT_PER_USER = 1
    settings.REALTIME_STALE_AFTER = 60
    lost = await db(services.conversation_start, user=alice, backend="openai", model="m", voice="v")
    last_seen = now() - timedelta(minutes=5)
    await db(Conversation.objects.filter(pk=lost.pk).update, heartbeat=last_seen)

    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    lost = await db(Conversation.objects.get, pk=lost.pk)
    assert lost.end_reason == EndReason.PROCESS_LOST
    # Its last heartbeat is older than its start: it ends where it started, never before.
    assert lost.ended == lost.started


async def test_heartbeat_keeps_live_rows_fresh_and_ends_lost_ones(
    fake_upstream, settings, alice, alice_token, bob, connect
):
    settings.REALTIME_HEARTBEAT_INTERVAL = 0.05
    settings.REALTIME_STALE_AFTER = 60
    lost = await db(services.conversation_start, user=bob, backend="openai", model="m", voice="v")
    await db(Conversation.objects.filter(pk=lost.pk).update, heartbeat=now() - timedelta(minutes=5))
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    live = await db(Conversation.objects.get, user=alice)
    old_beat = now() - timedelta(seconds=30)
    await db(Conversation.objects.filter(pk=live.pk).update, heartbeat=old_beat)

    async with asyncio.timeout(10):
        while (await db(Conversation.objects.get, pk=live.pk)).heartbeat <= old_beat:
            await asyncio.sleep(0.05)
        while (await db(Conversation.objects.get, pk=lost.pk)).ended is None:
            await asyncio.sleep(0.05)
    assert (await db(Conversation.objects.get, pk=lost.pk)).end_reason == EndReason.PROCESS_LOST
    assert (await db(Conversation.objects.get, pk=live.pk)).ended is None


async def test_conversation_length_limit(fake_upstream, settings, alice, alice_token, connect):
    settings.REALTIME_MAX_DURATION = 1
    _, client = await connect(token=alice_token)
    events, code = await client.receive_close(timeout=10)
    assert code == CloseCode.DURATION_LIMIT
    assert events[-1]["error"]["code"] == "conversation_too_long"
    assert "length limit" in events[-1]["error"]["message"]
    await client.communicator.disconnect()
    conversation = await db(Conversation.objects.get, user=alice)
    assert conversation.end_reason == EndReason.DURATION_LIMIT
    await fake_upstream.closed.wait()
