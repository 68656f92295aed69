"""A call's hangup reaches it on whichever process holds it (voicechat/calls/directory.py).

Two real server processes (uvicorn, configured through the environment as in production) share
PostgreSQL and Redis: a call answered by A is hung up by a POST to B, for the offline engine
(A terminates the call) and for OpenAI (A follows it on the sideband), and is stored as the
caller's hangup; B answers 404 for someone else's call or an unknown one, as A does; a staff end
of a call still ends it as staff. Needs DATABASE_URL (PostgreSQL) and REDIS_URL: skipped on the
embedded run only.
"""

import asyncio

import httpx
import pytest
from django.conf import settings

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.monitoring import live
from voicechat.services import api_token_create
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import PROVIDER_KEY, db, finished_conversation, free_port
from voicechat.tests.fake_upstream import serve_calls

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (settings.REDIS_URL and settings.DATABASE_URL),
        reason="needs PostgreSQL and Redis (DATABASE_URL and REDIS_URL): make test-services",
    ),
]

# The offline engine answering by rules: no provider, no language model.
LOCAL = {"REALTIME_BACKEND": "local", "OPENAI_API_KEY": "", "LOCAL_LLM": "none"}


async def post(address: str, path: str, token: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"http://{address}{path}",
            headers={"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})},
            timeout=30,
            **kwargs,
        )


async def call(address: str, token: str, peer: Peer) -> str:
    """The peer's call, answered by the server at `address`; returns its id."""
    response = await post(
        address,
        "/v1/realtime/calls?model=gpt-realtime",
        token,
        content=await peer.offer(),
        headers={"Content-Type": "application/sdp"},
    )
    assert response.status_code == 201, response.text
    await peer.accept(response.text)
    await peer.connected()
    await peer.wait_for("session.created")
    return response.headers["location"].rsplit("/", 1)[1]


def assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "call_not_found"


async def peer_closed(peer: Peer, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while peer.pc.connectionState != "closed":
            await asyncio.sleep(0.05)


async def test_a_call_held_by_one_process_is_hung_up_from_another(
    alice, alice_token, bob, start_server
):
    async with asyncio.timeout(120):
        nowhere = f"ws://127.0.0.1:{free_port()}"
        server_a = await start_server("uvicorn", upstream_url=nowhere, **LOCAL)
        server_b = await start_server("uvicorn", upstream_url=nowhere, **LOCAL)
        bob_token = await db(lambda: api_token_create(user=bob, name="tests")[1])
        peer = Peer()
        try:
            call_id = await call(server_a.address, alice_token, peer)
            hangup = f"/v1/realtime/calls/{call_id}/hangup"
            # B knows the call is there, and whose it is: not bob's, and no other id is.
            assert_not_found(await post(server_b.address, hangup, bob_token))
            assert_not_found(await post(server_a.address, hangup, bob_token))
            assert_not_found(
                await post(server_b.address, "/v1/realtime/calls/rtc_nope/hangup", alice_token)
            )
            assert await db(Conversation.objects.active().count) == 1

            response = await post(server_b.address, hangup, alice_token)
            assert response.status_code == 200, response.text
            # Answered once A had stored the end, as a hangup on A itself is.
            stored = await db(Conversation.objects.get, user=alice)
            assert stored.end_reason == EndReason.CLIENT_CLOSED
            assert "hung up by the client" in stored.end_detail
            assert stored.process.endswith(f":{server_a.process.pid}")
            await peer_closed(peer)
            # Gone on both processes.
            assert_not_found(await post(server_b.address, hangup, alice_token))
            assert_not_found(await post(server_a.address, hangup, alice_token))
        finally:
            await peer.close()
        assert server_a.process.poll() is None and server_b.process.poll() is None


async def test_a_call_made_at_openai_is_hung_up_from_another_process(
    fake_upstream, alice, alice_token, start_server
):
    async with asyncio.timeout(120):
        endpoint = await serve_calls(fake_upstream, api_key=PROVIDER_KEY)
        servers = [
            await start_server(
                "uvicorn", upstream_url=fake_upstream.url, OPENAI_REALTIME_CALLS_URL=endpoint.url
            )
            for _ in range(2)
        ]
        server_a, server_b = servers
        peer = Peer()
        try:
            call_id = await call(server_a.address, alice_token, peer)
            fake_call = endpoint.newest()
            response = await post(
                server_b.address, f"/v1/realtime/calls/{call_id}/hangup", alice_token
            )
            assert response.status_code == 200, response.text
            assert fake_call.hung_up.is_set()  # A hung it up at OpenAI
            conversation = await finished_conversation(alice)
            assert conversation.end_reason == EndReason.CLIENT_CLOSED
            assert "hung up by the client" in conversation.end_detail
        finally:
            await peer.close()

        # A staff "End" of a call is still the staff's, not a hangup.
        peer = Peer()
        try:
            await call(server_a.address, alice_token, peer)
            conversation = await db(Conversation.objects.active().get)
            assert await live.request_end(conversation.pk, by="olga")
            conversation = await finished_conversation(alice)
            assert conversation.end_reason == EndReason.ENDED_BY_STAFF
            assert "ended by olga" in conversation.end_detail
        finally:
            await peer.close()
