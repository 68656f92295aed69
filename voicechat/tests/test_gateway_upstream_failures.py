"""A dead, refusing, slow or failing upstream: the client is told why and the socket closes cleanly."""

import pytest

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import PROVIDER_KEY, finished_conversation, free_port
from voicechat.tests.fake_upstream import FakeRealtimeServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Through the test communicator and both production paths (the shortcut, the general path).
    pytest.mark.over_every_transport,
]


async def _ended(alice) -> Conversation:
    """Alice's conversation once its end is stored (a real server stores it after the close)."""
    return await finished_conversation(alice)


async def test_refused_handshake(settings, alice, alice_token, connect):
    async with FakeRealtimeServer(reject_status=401) as refusing:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL = PROVIDER_KEY, refusing.url
        settings.REALTIME_BACKEND = "openai"
        connected, client = await connect(token=alice_token)
        assert connected
        events, code = await client.receive_close()
    assert code == CloseCode.UPSTREAM_REFUSED
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "upstream_refused"
    assert "HTTP 401" in events[-1]["error"]["message"]
    await client.communicator.disconnect()
    assert (await _ended(alice)).end_reason == EndReason.UPSTREAM_REFUSED


async def test_unreachable_upstream(settings, alice, alice_token, connect):
    settings.OPENAI_API_KEY, settings.REALTIME_BACKEND = PROVIDER_KEY, "openai"
    settings.OPENAI_REALTIME_URL = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    connected, client = await connect(token=alice_token)
    events, code = await client.receive_close()
    assert code == CloseCode.UPSTREAM_UNREACHABLE
    assert events[-1]["error"]["code"] == "upstream_unreachable"
    await client.communicator.disconnect()
    assert (await _ended(alice)).end_reason == EndReason.UPSTREAM_UNREACHABLE


async def test_upstream_that_never_finishes_its_handshake_times_out(
    settings, alice, alice_token, connect
):
    settings.REALTIME_CONNECT_TIMEOUT = 1
    async with FakeRealtimeServer(accept_delay=4) as stuck:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL = PROVIDER_KEY, stuck.url
        settings.REALTIME_BACKEND = "openai"
        connected, client = await connect(token=alice_token)
        events, code = await client.receive_close(timeout=4)
    assert code == CloseCode.UPSTREAM_UNREACHABLE
    await client.communicator.disconnect()


async def test_upstream_dropping_mid_conversation(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.drop(code=1011, reason="internal error")
    events, code = await client.receive_close()
    assert code == CloseCode.UPSTREAM_CLOSED
    assert events[-1]["error"]["code"] == "upstream_closed"
    await client.communicator.disconnect()
    conversation = await _ended(alice)
    assert conversation.end_reason == EndReason.UPSTREAM_CLOSED
    assert "1011" in conversation.end_detail


async def test_session_time_limit(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.drop(
        code=1001, reason="Your session hit the maximum duration of 60 minutes."
    )
    events, code = await client.receive_close()
    assert code == CloseCode.TIME_LIMIT
    assert events[-1]["error"]["code"] == "session_time_limit"
    await client.communicator.disconnect()
    assert (await _ended(alice)).end_reason == EndReason.TIME_LIMIT


async def test_fatal_error_event_then_close(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await fake_upstream.push(
        [
            {
                "type": "error",
                "error": {
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                    "message": "You exceeded your current quota.",
                    "param": None,
                    "event_id": None,
                },
            }
        ]
    )
    await fake_upstream.drop(code=1000)
    events, code = await client.receive_close()
    assert events[0]["error"]["code"] == "insufficient_quota"  # passed through as sent
    assert code == CloseCode.UPSTREAM_ERROR
    await client.communicator.disconnect()
    assert (await _ended(alice)).end_reason == EndReason.UPSTREAM_ERROR


async def test_openai_backend_without_a_key_explains_itself(settings, alice, alice_token, connect):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "openai", ""
    connected, client = await connect(token=alice_token)
    events, code = await client.receive_close()
    assert code == CloseCode.NOT_CONFIGURED
    assert "OPENAI_API_KEY" in events[-1]["error"]["message"]
    await client.communicator.disconnect()
    assert (await _ended(alice)).end_reason == EndReason.NOT_CONFIGURED


async def test_model_outside_the_allowed_list(fake_upstream, alice, alice_token, connect):
    connected, client = await connect(token=alice_token, path="/v1/realtime?model=gpt-4-expensive")
    events, code = await client.receive_close()
    assert code == CloseCode.MODEL_NOT_ALLOWED
    assert "gpt-realtime" in events[-1]["error"]["message"]
    assert fake_upstream.request_headers == []
    await client.communicator.disconnect()


async def test_client_may_choose_an_allowed_model(fake_upstream, alice_token, connect):
    connected, client = await connect(
        token=alice_token, path="/v1/realtime?model=gpt-realtime-mini"
    )
    assert (await client.receive())["type"] == "session.created"
    assert fake_upstream.request_paths[0] == "/v1/realtime?model=gpt-realtime-mini"
