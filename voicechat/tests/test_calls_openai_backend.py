"""With the OpenAI backend (a fake OpenAI here), a WebRTC call is, for now, terminated by this
server too and relayed over the gateway's WebSocket upstream: the microphone reaches OpenAI as
appends, replies play on the track, and the transcript and usage are stored with their cost."""

import base64

import httpx
import numpy as np
import pytest

from voicechat.enums import Backend
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


def tone(ms: int) -> bytes:
    t = np.arange(24 * ms) / 24000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def test_a_call_relayed_to_openai(fake_upstream, gateway_server, alice, alice_token):
    peer = Peer()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://{gateway_server}/v1/realtime/calls?model=gpt-realtime",
                content=await peer.offer(),
                headers={
                    "Authorization": f"Bearer {alice_token}",
                    "Content-Type": "application/sdp",
                },
                timeout=30,
            )
        assert response.status_code == 201, response.text
        await peer.accept(response.text)
        await peer.wait_for("session.created")
        # The microphone (silent here) reaches OpenAI as PCM16 24 kHz appends.
        appends = await fake_upstream.wait_for("input_audio_buffer.append", count=10, timeout=10)
        assert len(base64.b64decode(appends[-1]["audio"])) == 960  # 20 ms

        peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hello?"}],
                },
            }
        )
        peer.send({"type": "response.create"})
        await peer.wait_for("response.done")

        # A spoken reply: its audio plays on the track, not on the data channel.
        mark = len(peer.events)
        ids = {"response_id": "resp_audio", "item_id": "item_audio", "output_index": 0}
        audio = base64.b64encode(tone(1000)).decode()
        await fake_upstream.push(
            [
                {"type": "response.output_audio.delta", **ids, "content_index": 0, "delta": audio},
                {
                    "type": "response.done",
                    "response": {"id": "resp_audio", "status": "completed", "output": []},
                },
            ]
        )
        started = await peer.wait_for("output_audio_buffer.started", after=mark)
        assert started["response_id"] == "resp_audio"
        await peer.wait_for("output_audio_buffer.stopped", after=mark, timeout=10)
        assert peer.loud_frames >= 40  # most of the second was heard
        assert "response.output_audio.delta" not in peer.types()
    finally:
        await peer.close()

    conversation = await finished_conversation(alice)
    assert conversation.backend == Backend.OPENAI
    assert conversation.cost_usd > 0
    items = await db(lambda: [(i.role, i.text) for i in conversation.ordered_items()])
    assert items == [("user", "Hello?"), ("assistant", "Hello from the fake upstream.")]
