"""A call made at OpenAI on a real server process (uvicorn, configured through the environment
as in production): SIGTERM hangs it up at OpenAI before the process exits, and the conversation
is stored with its transcript and the shutdown as its end."""

import asyncio

import httpx
import pytest

from voicechat.enums import EndReason
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import PROVIDER_KEY, db, finished_conversation
from voicechat.tests.fake_upstream import serve_calls

pytestmark = pytest.mark.django_db(transaction=True)


async def test_sigterm_hangs_the_call_up_at_openai(fake_upstream, alice, alice_token, start_server):
    endpoint = await serve_calls(fake_upstream, api_key=PROVIDER_KEY)
    server = await start_server(
        "uvicorn", upstream_url=fake_upstream.url, OPENAI_REALTIME_CALLS_URL=endpoint.url
    )
    peer = Peer()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://{server.address}/v1/realtime/calls?model=gpt-realtime",
                content=await peer.offer(),
                headers={
                    "Authorization": f"Bearer {alice_token}",
                    "Content-Type": "application/sdp",
                },
                timeout=30,
            )
        assert response.status_code == 201, response.text
        assert PROVIDER_KEY not in response.text
        await peer.accept(response.text)
        await peer.connected()
        await peer.wait_for("session.created")
        fake_call = endpoint.newest()
        peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Still there?"}],
                },
            }
        )
        peer.send({"type": "response.create"})
        await peer.wait_for("response.done")

        await server.terminate()
        assert fake_call.hung_up.is_set()  # before the process was gone
        async with asyncio.timeout(10):
            while peer.pc.connectionState != "closed":
                await asyncio.sleep(0.05)
    finally:
        await peer.close()
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.SERVER_SHUTDOWN
    items = await db(lambda: [(i.role, i.text) for i in conversation.ordered_items()])
    assert items == [("user", "Still there?"), ("assistant", "Hello from the fake upstream.")]
