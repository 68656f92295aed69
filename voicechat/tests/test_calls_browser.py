"""Headless Chromium calls POST /v1/realtime/calls the way OpenAI's WebRTC example does (its offer
right after setLocalDescription, no candidates), from a signed-in page of the site (cookie and
CSRF token): Chrome's ICE, DTLS, SCTP and Opus meet aiortc's, the microphone is heard (Whisper
transcribes it) and the reply plays on the peer connection, where the echo canceller hears it."""

import pytest

from voicechat.models import Conversation
from voicechat.tests import browser
from voicechat.tests.browser import RATE, signed_in_page, silence, write_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
local_chat_server = browser.local_chat_server

CALL = """async () => {
  const pc = new RTCPeerConnection();
  const microphone = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(microphone.getTracks()[0]);
  pc.ontrack = (e) => {
    const audio = document.createElement("audio");
    audio.autoplay = true;
    audio.srcObject = new MediaStream([e.track]);
    document.body.append(audio);
  };
  const channel = pc.createDataChannel("oai-events");
  window.events = [];
  channel.onmessage = (e) => window.events.push(JSON.parse(e.data));
  window.call = {pc, channel};
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const response = await fetch("/v1/realtime/calls", {
    method: "POST",
    body: offer.sdp,
    headers: {
      "Content-Type": "application/sdp",
      "X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value,
    },
  });
  if (response.status !== 201) return {status: response.status, body: await response.text()};
  await pc.setRemoteDescription({type: "answer", sdp: await response.text()});
  return {status: response.status, location: response.headers.get("Location")};
}"""

RECEIVED_ENERGY = """async () => {
  let energy = 0;
  (await window.call.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") energy += s.totalAudioEnergy || 0;
  });
  return energy;
}"""


def wait_for_event(page, etype: str, timeout: float = 60_000) -> dict:
    page.wait_for_function(
        "(t) => window.events.some((e) => e.type === t)", arg=etype, timeout=timeout
    )
    return page.evaluate("(t) => window.events.find((e) => e.type === t)", etype)


def test_chromium_calls_the_offline_engine(local_chat_server, launch_browser, alice, tmp_path):
    from voicechat.tests.speech import spoken

    wav = write_wav(
        tmp_path / "question.wav", silence(2500) + spoken("What time is it?") + silence(20000), RATE
    )
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.goto(local_chat_server.url + "/")
    answered = page.evaluate(CALL)
    assert answered["status"] == 201, answered
    assert answered["location"].startswith("/v1/realtime/calls/rtc_")

    wait_for_event(page, "session.created", timeout=20_000)
    heard = wait_for_event(page, "conversation.item.input_audio_transcription.completed")
    assert "time" in heard["transcript"].lower()
    done = wait_for_event(page, "response.done")
    assert done["response"]["output"][0]["content"][0]["transcript"].startswith("It's")
    wait_for_event(page, "output_audio_buffer.stopped", timeout=30_000)
    assert page.evaluate(RECEIVED_ENERGY) > 0  # the reply reached Chrome's audio pipeline

    status = page.evaluate(
        """async (location) => (await fetch(location + "/hangup", {method: "POST", headers: {
            "X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value}})).status""",
        answered["location"],
    )
    assert status == 200
    conversation = browser.wait_until(
        lambda: Conversation.objects.filter(user=alice, ended__isnull=False).first(),
        what="the conversation stored",
    )
    assert conversation.auth_method == "session"
    assert [item.role for item in conversation.ordered_items()] == ["user", "assistant"]
