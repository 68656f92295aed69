"""How a call connects and how it ends: an offer without candidates (as browsers send it) still
connects; a call whose peer never connects, or vanishes mid-call, ends with its reason stored; an
end the gateway decides (the server shutting down, staff in the monitor) reaches the caller and
hangs it up."""

import asyncio
import re

import aioice.ice
import httpx
import pytest

from voicechat import lifecycle
from voicechat.enums import EndReason
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""


@pytest.fixture
async def peer():
    peer = Peer()
    yield peer
    await peer.close()


async def post_offer(address: str, token: str, peer: Peer) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{address}/v1/realtime/calls",
            content=await peer.offer(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            timeout=30,
        )
    assert response.status_code == 201, response.text
    return response


async def test_an_offer_without_candidates_connects(gateway_server, alice_token, peer):
    """A page that POSTs its offer right after setLocalDescription (OpenAI's own example does)
    sends no candidates: the server's answer has its own, and it learns the browser's from the
    browser's connectivity checks (peer-reflexive candidates)."""
    sdp = await peer.offer()
    sdp = re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", sdp)
    sdp = re.sub(r"c=IN IP4 [0-9.]+", "c=IN IP4 0.0.0.0", sdp)
    sdp = re.sub(r"m=(audio|application) \d+", r"m=\1 9", sdp)
    assert "a=candidate" not in sdp
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{gateway_server}/v1/realtime/calls",
            content=sdp,
            headers={"Authorization": f"Bearer {alice_token}", "Content-Type": "application/sdp"},
            timeout=30,
        )
    assert response.status_code == 201, response.text
    await peer.accept(response.text)
    await peer.connected(15)
    await peer.wait_for("session.created")


async def test_a_peer_that_never_connects_ends_the_call(
    gateway_server, alice, alice_token, peer, settings
):
    settings.REALTIME_WEBRTC_CONNECT_TIMEOUT = 1
    await post_offer(gateway_server, alice_token, peer)  # and the answer is never applied
    conversation = await finished_conversation(alice, timeout=20)
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    assert conversation.end_detail.startswith("WebRTC: ")
    assert "connect" in conversation.end_detail


async def test_a_peer_that_vanishes_is_noticed_and_its_conversation_stored(
    gateway_server, alice, alice_token, peer, monkeypatch
):
    # ICE consent (RFC 7675) is checked every 5 s and lost after 6 misses: quicker here.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    await peer.accept((await post_offer(gateway_server, alice_token, peer)).text)
    await peer.connected()
    await peer.wait_for("session.created")
    # The client's network goes: no goodbye (no DTLS close), its packets simply stop.
    for transceiver in peer.pc.getTransceivers():
        for protocol in transceiver.receiver.transport.transport._connection._protocols:
            protocol.transport.close()
    conversation = await finished_conversation(alice, timeout=30)
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    assert "connection failed" in conversation.end_detail


async def test_the_gateways_own_end_reaches_the_caller(gateway_server, alice, alice_token, peer):
    await peer.accept((await post_offer(gateway_server, alice_token, peer)).text)
    await peer.connected()
    await peer.wait_for("session.created")
    await lifecycle.shutdown_all()
    error = await peer.wait_for("error", timeout=10)
    assert error["error"]["code"] == "server_shutdown"
    async with asyncio.timeout(10):
        while peer.pc.connectionState != "closed":
            await asyncio.sleep(0.05)
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.SERVER_SHUTDOWN


async def test_staff_end_a_call_from_the_monitor(gateway_server, alice, alice_token, peer):
    from voicechat.models import Conversation
    from voicechat.monitoring import live
    from voicechat.tests.conftest import db

    await peer.accept((await post_offer(gateway_server, alice_token, peer)).text)
    await peer.wait_for("session.created")
    listed = await db(live.live_conversations)  # the monitor lists it as any conversation
    conversation = await db(Conversation.objects.get, user=alice)
    assert [c["id"] for c in listed] == [conversation.pk]
    assert await live.request_end(conversation.pk, by="olga")
    error = await peer.wait_for("error", timeout=10)
    assert error["error"]["code"] == "ended_by_staff"
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.ENDED_BY_STAFF
    assert conversation.end_detail == "ended by olga"
