"""Relaying both ways: session defaults first, early frames queued in order, events unchanged."""

import base64

import pytest

from voicechat.enums import EndReason
from voicechat.tests.conftest import finished_conversation
from voicechat.tests.fake_upstream import FakeRealtimeServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Through the test communicator and both production paths (the shortcut, the general path).
    pytest.mark.over_every_transport,
]

AUDIO = base64.b64encode(b"\x01\x00" * 960).decode()  # 40 ms of 24 kHz PCM16


async def test_session_defaults_then_client_events_in_order(
    fake_upstream, alice_token, connect, settings
):
    settings.REALTIME_INSTRUCTIONS = "Answer like a pirate."
    settings.REALTIME_VOICE = "cedar"
    connected, client = await connect(token=alice_token)
    assert connected
    created = await client.receive()
    assert created["type"] == "session.created"
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}},
        }
    )
    await client.send({"type": "input_audio_buffer.append", "event_id": "evt_a", "audio": AUDIO})
    await client.send({"type": "input_audio_buffer.commit"})
    events = await client.receive_until("input_audio_buffer.committed")
    updated = [e for e in events if e["type"] == "session.updated"]
    # The server's defaults arrive first, then the client's own update on top of them.
    assert [u["session"]["audio"]["output"]["voice"] for u in updated] == ["cedar", "marin"]
    assert updated[-1]["session"]["instructions"] == "Answer like a pirate."
    types = [e["type"] for e in fake_upstream.received]
    assert types == [
        "session.update",
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]
    assert (
        fake_upstream.received[0]["session"]["audio"]["input"]["turn_detection"]["type"]
        == "server_vad"
    )
    assert fake_upstream.received[2] == {
        "type": "input_audio_buffer.append",
        "event_id": "evt_a",
        "audio": AUDIO,
    }


async def test_frames_sent_before_the_upstream_opens_are_queued(settings, alice_token, connect):
    async with FakeRealtimeServer(accept_delay=0.5) as slow:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL, settings.REALTIME_BACKEND = (
            "sk-x",
            slow.url,
            "openai",
        )
        connected, client = await connect(token=alice_token)
        assert connected
        for n in range(20):
            await client.send(
                {"type": "input_audio_buffer.append", "event_id": f"evt_{n}", "audio": AUDIO}
            )
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        await client.receive_until("input_audio_buffer.committed")
        appends = await slow.wait_for("input_audio_buffer.append", 20)
        assert [e["event_id"] for e in appends] == [f"evt_{n}" for n in range(20)]
        # The defaults go first, before anything the client queued.
        assert slow.received[0]["type"] == "session.update"


async def test_pending_queue_is_bounded(settings, alice_token, connect):
    settings.REALTIME_PENDING_FRAMES = 3
    async with FakeRealtimeServer(accept_delay=1.0) as slow:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL, settings.REALTIME_BACKEND = (
            "sk-x",
            slow.url,
            "openai",
        )
        connected, client = await connect(token=alice_token)
        for n in range(5):
            await client.send(
                {"type": "input_audio_buffer.append", "event_id": f"evt_{n}", "audio": AUDIO}
            )
        errors = [await client.receive(), await client.receive()]
        assert {e["error"]["code"] for e in errors} == {"upstream_not_ready"}
        await client.receive_until("session.updated")
        await client.send({"type": "input_audio_buffer.commit"})
        await client.receive_until("input_audio_buffer.committed")
        assert [e["event_id"] for e in await slow.wait_for("input_audio_buffer.append", 3)] == [
            "evt_0",
            "evt_1",
            "evt_2",
        ]


async def test_upstream_events_reach_the_client_unchanged(fake_upstream, alice_token, connect):
    connected, client = await connect(token=alice_token)
    await client.receive()  # session.created
    await client.receive_until("session.updated")
    pushed = {
        "type": "rate_limits.updated",
        "rate_limits": [{"name": "tokens", "limit": 10, "remaining": 9, "reset_seconds": 1.5}],
    }
    await fake_upstream.push([pushed])
    received = await client.receive()
    assert received["type"] == "rate_limits.updated"
    assert received["rate_limits"] == pushed["rate_limits"]


async def test_non_fatal_upstream_error_passes_through_and_session_stays_up(
    fake_upstream, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.send({"type": "output_audio_buffer.clear", "event_id": "evt_x"})
    error = await client.receive()
    assert error["type"] == "error" and error["error"]["event_id"] == "evt_x"
    await client.send({"type": "input_audio_buffer.commit"})
    assert (await client.receive())["type"] == "input_audio_buffer.committed"


async def test_client_close_closes_upstream_and_records_end(
    fake_upstream, alice_token, connect, alice
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.communicator.disconnect()
    await fake_upstream.closed.wait()
    conversation = await finished_conversation(alice)  # a real server stores it after the close
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    assert conversation.ended is not None
    assert conversation.backend == "openai" and conversation.model == "gpt-realtime"


async def test_binary_frames_get_an_error_and_the_socket_stays_open(
    fake_upstream, alice_token, connect
):
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.communicator.send_to(bytes_data=b"\x00\x01")
    error = await client.receive()
    assert error["error"]["code"] == "binary_frame"
    await client.send({"type": "input_audio_buffer.commit"})
    assert (await client.receive())["type"] == "input_audio_buffer.committed"
