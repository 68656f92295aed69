"""Staff follow conversations live (list, transcript lines, status) and can end any of them."""

import json

import pytest
from channels.layers import InMemoryChannelLayer
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

SAY_HELLO = {
    "type": "conversation.item.create",
    "item": {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Say hello"}],
    },
}


class Monitor:
    """A staff member's monitor socket."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def send(self, event: dict) -> None:
        await self.communicator.send_to(text_data=json.dumps(event))

    async def receive(self, timeout: float = 10) -> dict:
        return json.loads(await self.communicator.receive_from(timeout))

    async def receive_until(self, kind: str, timeout: float = 10) -> list[dict]:
        events = []
        while True:
            events.append(await self.receive(timeout))
            if events[-1]["kind"] == kind:
                return events


@pytest.fixture
async def open_monitor():
    """Open monitor sockets as a given user; all closed at the end."""
    from config.asgi import application

    communicators = []

    async def _open(user, origin: str = "http://localhost") -> tuple[bool, Monitor]:
        cookie = await db(session_cookie, user)
        communicator = WebsocketCommunicator(
            application,
            "/ws/monitor",
            headers=[
                (b"host", b"localhost"),
                (b"cookie", cookie.encode()),
                (b"origin", origin.encode()),
            ],
        )
        communicators.append(communicator)
        connected, _ = await communicator.connect(timeout=5)
        return connected, Monitor(communicator)

    yield _open
    for communicator in communicators:
        await communicator.disconnect()


async def test_staff_follow_a_conversation_live(
    fake_upstream, alice, alice_token, staff_user, connect, open_monitor
):
    connected, monitor = await open_monitor(staff_user)
    assert connected
    assert await monitor.receive() == {"kind": "snapshot", "conversations": []}

    _, client = await connect(token=alice_token)
    started = await monitor.receive()
    assert started["kind"] == "started" and started["user"] == "alice"
    conversation_id = started["conversation"]
    assert started["process"]  # which server process holds it

    await monitor.send({"type": "watch", "conversation": conversation_id})
    transcript = await monitor.receive()
    assert transcript["kind"] == "transcript" and transcript["lines"] == []

    await client.send(SAY_HELLO)
    await client.send({"type": "response.create"})
    await client.receive_until("response.done")
    events = await monitor.receive_until("status")  # response_started
    events += await monitor.receive_until("status")  # response_done
    lines = [(e["role"], e["text"]) for e in events if e["kind"] == "line"]
    assert lines == [("user", "Say hello"), ("assistant", "Hello from the fake upstream.")]
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["response_started", "response_done"]

    # A page opened later gets the stored lines, in conversation order.
    _, late = await open_monitor(staff_user)
    snapshot = await late.receive()
    assert [c["id"] for c in snapshot["conversations"]] == [conversation_id]
    await late.send({"type": "watch", "conversation": conversation_id})
    stored = await late.receive()
    assert [line["text"] for line in stored["lines"]] == [
        "Say hello",
        "Hello from the fake upstream.",
    ]

    await client.communicator.disconnect()
    ended = await monitor.receive_until("ended")
    assert ended[-1]["end_reason"] == EndReason.CLIENT_CLOSED


async def test_monitor_is_for_staff_on_our_own_origin(alice, staff_user, open_monitor):
    assert not (await open_monitor(alice))[0]
    assert not (await open_monitor(staff_user, origin="https://evil.example"))[0]
    assert (await open_monitor(staff_user))[0]


async def test_staff_end_a_conversation_from_the_monitor_page(
    fake_upstream, alice_token, staff_user, connect, async_client
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    conversation = await db(Conversation.objects.get)

    await async_client.aforce_login(staff_user)
    page = await async_client.get(reverse("monitor"))
    assert page.status_code == 200
    assert f'data-conversation="{conversation.pk}"' in page.content.decode()
    response = await async_client.post(reverse("monitor_end", args=[conversation.pk]))
    assert response.status_code == 302

    events, code = await client.receive_close()
    assert code == CloseCode.ENDED_BY_STAFF
    assert events[-1]["error"]["code"] == "ended_by_staff"
    await client.communicator.disconnect()
    conversation = await db(Conversation.objects.get)
    assert conversation.end_reason == EndReason.ENDED_BY_STAFF
    assert conversation.end_detail == "ended by olga"
    await fake_upstream.closed.wait()  # the upstream session was closed too


async def test_staff_end_a_conversation_over_the_monitor_socket(
    fake_upstream, alice_token, staff_user, connect, open_monitor
):
    _, monitor = await open_monitor(staff_user)
    await monitor.receive()
    _, client = await connect(token=alice_token)
    conversation_id = (await monitor.receive())["conversation"]
    await monitor.send({"type": "end", "conversation": conversation_id})
    assert (await monitor.receive_until("end_requested"))[-1]["ok"] is True
    _, code = await client.receive_close()
    assert code == CloseCode.ENDED_BY_STAFF
    await client.communicator.disconnect()
    assert (await monitor.receive_until("ended"))[-1]["end_reason"] == "ended_by_staff"


async def test_admin_action_ends_open_conversations(
    fake_upstream, alice_token, connect, async_client, django_user_model
):
    admin_user = await db(
        django_user_model.objects.create_superuser, "root", password="root-password-123"
    )
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    conversation = await db(Conversation.objects.get)
    await async_client.aforce_login(admin_user)
    response = await async_client.post(
        reverse("admin:voicechat_conversation_changelist"),
        {"action": "end_conversations", "_selected_action": [conversation.pk]},
    )
    assert response.status_code == 302
    _, code = await client.receive_close()
    assert code == CloseCode.ENDED_BY_STAFF
    await client.communicator.disconnect()
    assert (await db(Conversation.objects.get)).end_reason == EndReason.ENDED_BY_STAFF


class CountingLayer(InMemoryChannelLayer):
    """The in-memory layer, counting group messages (what the relay must not do per frame)."""

    group_sends = 0

    async def group_send(self, group, message):
        CountingLayer.group_sends += 1
        await super().group_send(group, message)


async def test_audio_frames_publish_nothing(fake_upstream, alice_token, connect, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.CountingLayer"}}
    CountingLayer.group_sends = 0
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    ids = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}
    await fake_upstream.push(
        [{"type": "response.output_audio.delta", **ids, "delta": "AAAA"} for _ in range(200)]
        + [{"type": "response.output_audio_transcript.done", **ids, "transcript": "Hi."}]
    )
    await client.receive_until("response.output_audio_transcript.done")
    await client.communicator.disconnect()
    # started, the one transcript line, and ended (twice: list and watchers).
    assert CountingLayer.group_sends == 4
