"""Budgets, connection rates and frame limits trip with a clear message, and reset."""

import base64
import datetime
from decimal import Decimal

import pytest
from django.utils.timezone import now

from voicechat.access import ratelimit
from voicechat.enums import EndReason
from voicechat.models import Conversation, UserLimits
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db
from voicechat.tests.fake_upstream import USAGE

pytestmark = pytest.mark.django_db(transaction=True)


def _audio(ms: int) -> str:
    return base64.b64encode(b"\x00\x00" * 24 * ms).decode()


async def _past_conversation(user, *, minutes: float, cost: str = "0", days_ago: int = 0) -> None:
    end = now() - datetime.timedelta(days=days_ago)
    await db(
        Conversation.objects.create,
        user=user,
        backend="openai",
        model="gpt-realtime",
        started=end - datetime.timedelta(minutes=minutes),
        ended=end,
        end_reason=EndReason.CLIENT_CLOSED,
        cost_usd=Decimal(cost),
    )


async def test_minutes_budget_is_checked_at_connect(
    fake_upstream, settings, alice, alice_token, connect
):
    settings.REALTIME_DAILY_MINUTES = 10
    await _past_conversation(alice, minutes=11)
    connected, client = await connect(token=alice_token)
    events, code = await client.receive_close()
    assert code == CloseCode.BUDGET_EXCEEDED
    assert "10 conversation minutes" in events[-1]["error"]["message"]
    assert fake_upstream.request_headers == []
    await client.communicator.disconnect()
    latest = await db(lambda: Conversation.objects.filter(user=alice).latest("started"))
    assert latest.end_reason == EndReason.BUDGET_EXCEEDED


async def test_yesterdays_use_does_not_count(fake_upstream, settings, alice, alice_token, connect):
    settings.REALTIME_DAILY_MINUTES = 10
    await _past_conversation(alice, minutes=50, days_ago=2)
    connected, client = await connect(token=alice_token)
    assert (await client.receive())["type"] == "session.created"


async def test_per_user_override_in_admin_wins(
    fake_upstream, settings, alice, alice_token, connect
):
    settings.REALTIME_DAILY_MINUTES = 10
    await _past_conversation(alice, minutes=11)
    await db(UserLimits.objects.create, user=alice, daily_minutes=0)  # unlimited for alice
    connected, client = await connect(token=alice_token)
    assert (await client.receive())["type"] == "session.created"


async def test_cost_budget_is_enforced_during_a_conversation(
    fake_upstream, settings, alice, alice_token, connect
):
    settings.REALTIME_DAILY_COST_USD = Decimal("0.03")
    await _past_conversation(alice, minutes=1, cost="0.01")
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    # One response costs $0.02452: with the earlier $0.01 that is over $0.03.
    done = {
        "type": "response.done",
        "response": {
            "object": "realtime.response",
            "id": "resp_1",
            "status": "completed",
            "output": [],
            "usage": USAGE,
        },
    }
    await fake_upstream.push([done])
    events, code = await client.receive_close()
    assert code == CloseCode.BUDGET_EXCEEDED
    assert events[0]["type"] == "response.done"
    assert "$0.03" in events[-1]["error"]["message"]
    await client.communicator.disconnect()
    conversation = await db(lambda: Conversation.objects.filter(user=alice).latest("started"))
    assert conversation.end_reason == EndReason.BUDGET_EXCEEDED
    assert conversation.cost_usd == Decimal("0.024520")  # the usage itself was stored


async def test_connection_rate_per_user(fake_upstream, settings, alice, alice_token, connect):
    settings.REALTIME_CONNECTS_PER_MINUTE_PER_USER = 2
    for _ in range(2):
        connected, client = await connect(token=alice_token)
        assert (await client.receive())["type"] == "session.created"
    connected, client = await connect(token=alice_token)
    assert connected
    events, code = await client.receive_close()
    assert code == CloseCode.RATE_LIMITED and events[-1]["error"]["code"] == "rate_limited"
    assert len(fake_upstream.request_headers) == 2


async def test_connection_rate_per_ip_refuses_even_before_authentication(
    fake_upstream, settings, alice_token, connect
):
    settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP = 3
    for _ in range(3):
        connected, _ = await connect(token="vc_guess")
        assert not connected
    connected, _ = await connect(token=alice_token)  # a valid token, but this address is done
    assert not connected
    assert fake_upstream.request_headers == []


async def test_rate_limit_window_resets():
    assert await ratelimit.allow("test:reset", limit=1, per_seconds=1)
    assert not await ratelimit.allow("test:reset", limit=1, per_seconds=1)
    import asyncio

    await asyncio.sleep(1.05)
    assert await ratelimit.allow("test:reset", limit=1, per_seconds=1)


async def test_oversized_frame_gets_an_error_and_the_socket_survives(
    fake_upstream, settings, alice_token, connect
):
    settings.REALTIME_MAX_FRAME_BYTES = 10_000
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.send({"type": "input_audio_buffer.append", "audio": _audio(200)})  # 12.8 kB
    error = await client.receive()
    assert error["error"]["code"] == "frame_too_large"
    await client.send({"type": "input_audio_buffer.append", "audio": _audio(40)})
    await client.send({"type": "input_audio_buffer.commit"})
    assert (await client.receive())["type"] == "input_audio_buffer.committed"
    assert [e["type"] for e in fake_upstream.received[1:]] == [
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]


async def test_audio_faster_than_real_time_is_dropped(
    fake_upstream, settings, alice_token, connect
):
    settings.REALTIME_AUDIO_BURST_MS = 1000
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    for n in range(30):  # 3 s of audio in one go: the first second passes, the rest is refused
        await client.send(
            {"type": "input_audio_buffer.append", "event_id": f"a{n}", "audio": _audio(100)}
        )
    await client.send({"type": "input_audio_buffer.commit"})
    events = await client.receive_until("input_audio_buffer.committed")
    refused = [e["error"]["event_id"] for e in events if e["type"] == "error"]
    assert all(e["error"]["code"] == "audio_rate_exceeded" for e in events if e["type"] == "error")
    forwarded = [
        e["event_id"] for e in fake_upstream.received if e["type"] == "input_audio_buffer.append"
    ]
    assert 9 <= len(forwarded) <= 12 and len(forwarded) + len(refused) == 30
    assert forwarded[0] == "a0"


async def test_too_many_refused_events_close_the_socket(
    fake_upstream, settings, alice, alice_token, connect
):
    settings.REALTIME_MAX_REFUSED_PER_MINUTE = 5
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    for _ in range(6):
        await client.communicator.send_to(text_data="{oops")
    events, code = await client.receive_close()
    assert code == CloseCode.ABUSE
    assert [e["error"]["code"] for e in events][-2:] == ["invalid_json", "too_many_invalid_events"]
    await client.communicator.disconnect()
    conversation = await db(Conversation.objects.get, user=alice)
    assert conversation.end_reason == EndReason.ABUSE


async def test_audit_fields(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive()
    await client.communicator.disconnect()
    conversation = await db(Conversation.objects.get, user=alice)
    assert conversation.auth_method == "token"
    assert conversation.client_ip == "127.0.0.1"
