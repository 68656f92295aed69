"""Access withdrawn while a socket is open ends it within REALTIME_ACCESS_CHECK_SECONDS.

Issue 13, finding 6: a revoked token, a deactivated user and a signed-out session kept talking
(still answered 40 s later), and a demoted staff member kept the monitor's live transcripts and
could still end conversations.
"""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore
from django.utils.timezone import now

from voicechat.enums import EndReason
from voicechat.models import ApiToken, Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db, finished_conversation, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = "http://127.0.0.1:8000"  # the host the test communicator presents


@pytest.fixture(autouse=True)
def check_often(settings):
    settings.REALTIME_ACCESS_CHECK_SECONDS = 0.1


def revoke_tokens(user) -> None:
    ApiToken.objects.filter(user=user).update(revoked=now())


def deactivate(user) -> None:
    type(user).objects.filter(pk=user.pk).update(is_active=False)


def change_password(user) -> None:
    user.set_password("a-new-password-456")
    user.save()


def sign_out(cookie: str) -> None:
    SessionStore(cookie.split("=", 1)[1]).delete()  # what logout's session.flush() does


async def assert_ended_for_revoked_access(client, user) -> None:
    events, code = await client.receive_close(timeout=10)
    assert code == CloseCode.ACCESS_REVOKED
    assert events[-1]["error"]["code"] == "access_revoked"
    await client.communicator.disconnect()
    conversation = await finished_conversation(user)
    assert conversation.end_reason == EndReason.ACCESS_REVOKED


@pytest.mark.parametrize("withdraw", [revoke_tokens, deactivate])
async def test_a_token_socket_ends_when_its_access_is_withdrawn(
    fake_upstream, alice, alice_token, connect, withdraw
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await db(withdraw, alice)
    await assert_ended_for_revoked_access(client, alice)
    await asyncio.wait_for(fake_upstream.closed.wait(), 5)


@pytest.mark.parametrize("withdraw", ["sign_out", "change_password", "deactivate"])
async def test_a_browser_socket_ends_when_its_session_no_longer_signs_the_user_in(
    fake_upstream, alice, connect, withdraw
):
    cookie = await db(session_cookie, alice)
    _, client = await connect(cookie=cookie, origin=ORIGIN)
    await client.receive_until("session.updated")
    if withdraw == "sign_out":
        await db(sign_out, cookie)
    else:
        await db({"change_password": change_password, "deactivate": deactivate}[withdraw], alice)
    await assert_ended_for_revoked_access(client, alice)


async def test_sockets_whose_access_holds_go_on(
    fake_upstream, alice, alice_token, django_user_model, connect, settings
):
    bob = await db(django_user_model.objects.create_user, "bob", password="bob-password-123")
    cookie = await db(session_cookie, bob)
    _, alices = await connect(token=alice_token)
    await alices.receive_until("session.updated")
    _, bobs = await connect(cookie=cookie, origin=ORIGIN)
    await bobs.receive_until("session.updated")
    await db(revoke_tokens, alice)
    await assert_ended_for_revoked_access(alices, alice)
    await asyncio.sleep(10 * settings.REALTIME_ACCESS_CHECK_SECONDS)  # many passes
    await bobs.send({"type": "input_audio_buffer.commit"})
    await bobs.receive_until("input_audio_buffer.committed")
    bobs_conversation = await db(Conversation.objects.get, user=bob)
    assert bobs_conversation.ended is None


async def open_monitor(user) -> WebsocketCommunicator:
    from config.asgi import application

    cookie = await db(session_cookie, user)
    communicator = WebsocketCommunicator(
        application,
        "/ws/monitor",
        headers=[
            (b"host", b"localhost"),
            (b"cookie", cookie.encode()),
            (b"origin", b"http://localhost"),
        ],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert json.loads(await communicator.receive_from(5))["kind"] == "snapshot"
    return communicator


async def test_a_demoted_staff_member_loses_the_monitor(staff_user):
    monitor = await open_monitor(staff_user)
    await db(type(staff_user).objects.filter(pk=staff_user.pk).update, is_staff=False)
    while True:
        message = await monitor.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            break
        assert json.loads(message["text"]) == {
            "kind": "error",
            "message": "Your staff access has been withdrawn.",
        }
    assert message["code"] == CloseCode.ACCESS_REVOKED
    await monitor.disconnect()


async def test_a_demoted_staff_member_cannot_end_a_conversation_before_the_next_check(
    fake_upstream, alice, alice_token, staff_user, connect, settings
):
    settings.REALTIME_ACCESS_CHECK_SECONDS = 3600
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    conversation = await db(Conversation.objects.get, user=alice)
    monitor = await open_monitor(staff_user)
    await db(type(staff_user).objects.filter(pk=staff_user.pk).update, is_staff=False)
    await monitor.send_to(text_data=json.dumps({"type": "end", "conversation": conversation.pk}))
    assert json.loads(await monitor.receive_from(5))["message"] == (
        "Your staff access has been withdrawn."
    )
    assert (await monitor.receive_output(5))["code"] == CloseCode.ACCESS_REVOKED
    await monitor.disconnect()
    await client.send({"type": "input_audio_buffer.commit"})
    await client.receive_until("input_audio_buffer.committed")  # still open
