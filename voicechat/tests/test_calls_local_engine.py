"""WebRTC calls to the offline engine: an aiortc peer calls POST /v1/realtime/calls on the real
server (uvicorn on loopback), talks over its microphone track and the `oai-events` data channel,
hears the reply on the server's track; the conversation is stored as over the WebSocket."""

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI

from voicechat.enums import Backend, EndReason
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""


@pytest.fixture
async def peers():
    """Calls' client sides, each closed at the end of the test."""
    made = []

    def _peer(*args, **kwargs) -> Peer:
        made.append(Peer(*args, **kwargs))
        return made[-1]

    yield _peer
    for peer in made:
        await peer.close()


async def call(address: str, token: str, peer: Peer) -> str:
    """POST the peer's offer as application/sdp; applies the answer, returns the call id."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{address}/v1/realtime/calls",
            content=await peer.offer(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            timeout=30,
        )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/sdp")
    await peer.accept(response.text)
    return response.headers["location"].rsplit("/", 1)[1]


async def test_a_call_with_openais_sdk_text_in_the_data_channel_reply_on_the_track(
    local_backend, gateway_server, alice, alice_token, peers
):
    """OpenAI's own SDK creates the call (multipart sdp + session) and hangs it up."""
    peer = peers()
    client = AsyncOpenAI(api_key=alice_token, base_url=f"http://{gateway_server}/v1")
    response = await client.realtime.calls.with_raw_response.create(
        sdp=await peer.offer(), session={"type": "realtime", "model": "gpt-realtime"}
    )
    assert response.status_code == 201
    location = response.headers["location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    await peer.accept(response.http_response.text)
    await peer.connected()
    created = await peer.wait_for("session.created")
    assert created["session"]["model"] == "gpt-realtime"
    # Audio comes on the track only; other bad events get the policy's errors, as over the
    # WebSocket, and the call goes on.
    peer.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "evt_1"})
    refused = await peer.wait_for("error")
    assert refused["error"]["code"] == "invalid_event_for_transport"
    assert refused["error"]["event_id"] == "evt_1"
    mark = len(peer.events)
    peer.send({"type": "no.such.event", "event_id": "evt_2"})
    refused = await peer.wait_for("error", after=mark)
    assert refused["error"]["event_id"] == "evt_2"
    # The tracks carry the audio: a client's audio formats (G.711 here) do not apply.
    mark = len(peer.events)
    formats = {"format": {"type": "audio/pcmu"}}
    peer.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": formats, "output": formats}},
        }
    )
    audio = (await peer.wait_for("session.updated", after=mark))["session"]["audio"]
    assert audio["input"]["format"]["type"] == audio["output"]["format"]["type"] == "audio/pcm"

    peer.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is twelve times seven?"}],
            },
        }
    )
    peer.send({"type": "response.create"})
    done = await peer.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    reply = done["response"]["output"][0]["content"][0]["transcript"]
    assert "84" in reply
    # The audio comes on the track, paced, with OpenAI's WebRTC playback events around it.
    started = await peer.wait_for("output_audio_buffer.started")
    stopped = await peer.wait_for("output_audio_buffer.stopped", timeout=30)
    assert started["response_id"] == stopped["response_id"] == done["response"]["id"]
    assert "response.output_audio.delta" not in peer.types()
    assert peer.loud_frames > 25  # over half a second of the reply was heard

    await client.realtime.calls.hangup(location.rsplit("/", 1)[1])
    conversation = await finished_conversation(alice)
    assert conversation.backend == Backend.LOCAL
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    assert "hung up" in conversation.end_detail
    items = await db(lambda: [(i.role, i.text) for i in conversation.ordered_items()])
    assert items[0] == ("user", "What is twelve times seven?")
    assert items[-1][0] == "assistant" and "84" in items[-1][1]


@pytest.mark.slow
async def test_a_spoken_question_over_the_microphone_track(
    local_backend, gateway_server, alice, alice_token, peers
):
    from voicechat.tests.speech import spoken

    speech = await asyncio.to_thread(spoken, "What time is it?")
    peer = peers(b"\0" * 48 * 600 + speech + b"\0" * 48 * 300)
    await call(gateway_server, alice_token, peer)
    await peer.wait_for("input_audio_buffer.speech_started", timeout=30)
    heard = await peer.wait_for("conversation.item.input_audio_transcription.completed", timeout=60)
    assert "time" in heard["transcript"].lower()
    done = await peer.wait_for("response.done", timeout=60)
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"].startswith("It's")
    await peer.wait_for("output_audio_buffer.stopped", timeout=30)
    assert peer.loud_frames > 25

    await peer.close()  # the client simply goes away: the conversation ends and is stored
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.CLIENT_CLOSED
    items = await db(lambda: [(i.role, i.text) for i in conversation.ordered_items()])
    assert items[0][0] == "user" and "time" in items[0][1].lower()
    assert items[-1][0] == "assistant" and items[-1][1].startswith("It's")


async def test_clearing_playback_cuts_the_reply_to_what_was_played(
    local_backend, gateway_server, alice, alice_token, peers
):
    """output_audio_buffer.clear: the server stops the track and truncates the item itself."""
    peer = peers()
    await call(gateway_server, alice_token, peer)
    await peer.wait_for("session.created")
    peer.send({"type": "response.create"})  # a greeting of several sentences
    done = await peer.wait_for("response.done", timeout=60)
    item = done["response"]["output"][0]
    await peer.wait_for("output_audio_buffer.started")
    await asyncio.sleep(0.5)  # the reply is handed over; some of it has been played
    mark = len(peer.events)
    peer.send({"type": "output_audio_buffer.clear"})
    cleared = await peer.wait_for("output_audio_buffer.cleared", after=mark)
    assert cleared["response_id"] == done["response"]["id"]
    truncated = await peer.wait_for("conversation.item.truncated", after=mark)
    assert truncated["item_id"] == item["id"]
    heard = peer.loud_frames
    # Cut where the track was, which is about what the peer has heard (20 ms frames; its jitter
    # buffer and a busy machine's scheduling apart), not at the end of the generated reply.
    assert 300 < truncated["audio_end_ms"] <= heard * 20 + 1500
    await asyncio.sleep(0.5)
    assert peer.loud_frames - heard < 10  # silence after the cut (what the jitter buffer held)
    assert "output_audio_buffer.stopped" not in peer.types()

    await peer.close()
    conversation = await finished_conversation(alice)
    stored = await db(lambda: list(conversation.ordered_items()))
    assert stored[-1].status == "truncated"  # stored as a WebSocket client's truncate is
    assert stored[-1].audio_end_ms == truncated["audio_end_ms"]


@pytest.mark.slow
async def test_speaking_over_the_reply_cuts_it_and_is_answered(
    local_backend, gateway_server, alice, alice_token, peers
):
    """Barge-in as OpenAI does it over WebRTC: the server notices the speech, clears the
    playback (output_audio_buffer.cleared) and truncates the reply without the client's help."""
    from voicechat.tests.speech import spoken

    speech = await asyncio.to_thread(spoken, "What time is it?")
    peer = peers()
    await call(gateway_server, alice_token, peer)
    created = await peer.wait_for("session.created")
    turns = created["session"]["audio"]["input"]["turn_detection"]
    assert turns["interrupt_response"] is True
    peer.send({"type": "response.create"})  # a greeting of several sentences
    first = await peer.wait_for("response.done", timeout=60)
    await peer.wait_for("output_audio_buffer.started")
    mark = len(peer.events)
    peer.microphone.say(speech + b"\0" * 48 * 600)
    await peer.wait_for("input_audio_buffer.speech_started", after=mark, timeout=30)
    cleared = await peer.wait_for("output_audio_buffer.cleared", after=mark)
    assert cleared["response_id"] == first["response"]["id"]
    truncated = await peer.wait_for("conversation.item.truncated", after=mark)
    assert truncated["item_id"] == first["response"]["output"][0]["id"]
    answer = await peer.wait_for("response.done", after=mark, timeout=60)
    assert answer["response"]["output"][0]["content"][0]["transcript"].startswith("It's")
    await peer.wait_for("output_audio_buffer.stopped", after=mark, timeout=30)
