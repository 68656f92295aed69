"""The chat page over WebRTC, its default, in headless Chromium with the offline engine.

The page sends its SDP offer to POST /v1/realtime/calls (session cookie and CSRF token), the
microphone goes as the call's track, events travel on the `oai-events` data channel, and the
reply plays from the peer connection through an <audio> element, so that Chromium's echo
canceller hears it. The switch picks the WebSocket instead (and is remembered); a server or
browser that can't make calls gets the WebSocket on its own.
"""

import pytest

from voicechat.enums import ItemStatus, Role
from voicechat.models import Conversation
from voicechat.tests import browser
from voicechat.tests.browser import RATE, signed_in_page, silence, stats, write_wav

pytest.importorskip("voicechat.local_engine", reason="the local engine is not on this branch")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
local_chat_server = browser.local_chat_server

ENTRIES = """els => els.map(e => ({role: e.dataset.role, state: e.dataset.state,
                                  text: e.querySelector('.turn-text').textContent}))"""

# What the call received and played: the remote track, the <audio> element, Chrome's inbound
# RTP energy, and the assistant waveform's analyser.
PLAYBACK = """async () => {
  const app = window.voicechat.app;
  const client = app.conversation.client;
  const audio = document.querySelector('[data-testid="reply-audio"]');
  let energy = 0;
  (await client.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") energy += s.totalAudioEnergy || 0;
  });
  return {
    transport: client.transport,
    trackLive: audio.srcObject?.getAudioTracks()[0]?.readyState === "live",
    playing: !audio.paused,
    energy,
    waveformOnCall: app.audio.assistantWave.analyser === app.audio.remoteAnalyser,
  };
}"""

# The assistant waveform's analyser hears the reply (the call's remote stream) while it plays.
WAVEFORM_MOVES = """() => {
  const analyser = window.voicechat.app.audio.remoteAnalyser;
  if (!analyser) return false;
  const samples = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(samples);
  return samples.some((x) => Math.abs(x) > 0.01);
}"""


# The microphone's own analyser: true once it has heard speech and then 500 ms of quiet.
SPOKEN_AND_QUIET = """async () => {
  const analyser = window.voicechat.app.recorder.analyser;
  const samples = new Float32Array(analyser.fftSize);
  let heard = false, quietSince = null;
  const start = performance.now();
  while (performance.now() - start < 60000) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    analyser.getFloatTimeDomainData(samples);
    const loud = samples.some((x) => Math.abs(x) > 0.02);
    if (loud) { heard = true; quietSince = null; }
    else if (heard) {
      quietSince ??= performance.now();
      if (performance.now() - quietSince >= 500) return true;
    }
  }
  return false;
}"""


def spoken_wav(path, *sentences: str, lead_ms: int = 1200):
    from voicechat.tests.speech import spoken

    pcm = silence(lead_ms)
    for sentence in sentences:
        pcm += spoken(sentence) + silence(8000)
    return write_wav(path, pcm, RATE)


def entries(page) -> list[dict]:
    return page.eval_on_selector_all('[data-testid="transcript-entry"]', ENTRIES)


def transport(page) -> str:
    return page.evaluate("() => window.voicechat.app.conversation.client?.transport")


def test_a_spoken_question_over_webrtc(local_chat_server, launch_browser, alice, tmp_path):
    wav = spoken_wav(tmp_path / "question.wav", "What time is it?")
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.set_default_timeout(90_000)
    calls = []
    page.on("request", lambda r: r.method == "POST" and calls.append(r.url))
    page.goto(local_chat_server.url)
    assert page.get_by_test_id("transport-webrtc").is_checked()
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert transport(page) == "webrtc"
    assert any("/v1/realtime/calls?" in url for url in calls), calls

    # Heard (the microphone went as the call's track), answered, and played from the call.
    page.wait_for_selector('[data-testid="status"][data-state="assistant-speaking"]')
    page.wait_for_function(WAVEFORM_MOVES)
    played = page.evaluate(PLAYBACK)
    assert played == {
        "transport": "webrtc",
        "trackLive": True,
        "playing": True,
        "energy": played["energy"],
        "waveformOnCall": True,
    }
    assert played["energy"] > 0
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .some(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')"""
    )
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    page.wait_for_selector('[data-testid="stop"]:disabled', state="attached")  # nothing to stop
    assert page.evaluate("() => window.voicechat.app.conversation.replying") is False
    lines = entries(page)
    assert [line["role"] for line in lines] == ["user", "assistant"], lines
    assert "time" in lines[0]["text"].lower(), lines
    assert lines[1]["text"].startswith("It's"), lines
    seen = stats(page)
    assert seen["chunksSent"] == 0  # no input_audio_buffer.append: the track carried it
    assert seen["lastLatencyMs"] is not None

    # Stored as over the WebSocket, and ended by the hangup.
    page.get_by_test_id("disconnect").click()
    page.wait_for_selector('[data-testid="status"][data-state="ended"]')
    conversation = browser.wait_until(
        lambda: Conversation.objects.filter(user=alice, ended__isnull=False).first(),
        what="the conversation stored",
    )
    assert conversation.auth_method == "session"
    items = [i for i in conversation.ordered_items() if i.role in (Role.USER, Role.ASSISTANT)]
    assert [i.role for i in items] == [Role.USER, Role.ASSISTANT]
    assert items[1].text == lines[1]["text"]
    assert items[1].status == ItemStatus.COMPLETED


def test_push_to_talk_over_webrtc_mutes_the_track_between_presses(
    local_chat_server, launch_browser, alice, tmp_path
):
    wav = spoken_wav(tmp_path / "hello.wav", "What is two plus two?", lead_ms=3000)
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.set_default_timeout(90_000)
    page.goto(local_chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    page.wait_for_function("() => !document.querySelector('[data-testid=push-to-talk]').disabled")
    microphone = "() => window.voicechat.app.conversation.client.microphone?.enabled"
    page.wait_for_function(f"() => ({microphone})() === false")  # muted until the press
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.down("Space")
    assert page.evaluate(microphone) is True
    # Held while the question plays into the microphone, until it has gone quiet again.
    assert page.evaluate(SPOKEN_AND_QUIET)
    page.keyboard.up("Space")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .some(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')"""
    )
    assert page.evaluate(microphone) is False
    lines = entries(page)
    assert [line["role"] for line in lines[:2]] == ["user", "assistant"], lines
    assert "two" in lines[0]["text"].lower() or "2" in lines[0]["text"], lines
    assert "4" in lines[1]["text"] or "four" in lines[1]["text"].lower(), lines


def test_the_switch_picks_the_websocket_and_is_remembered(local_chat_server, launch_browser, alice):
    page = signed_in_page(launch_browser(), local_chat_server, alice)
    page.goto(local_chat_server.url)
    page.get_by_test_id("transport-websocket").check()
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert transport(page) == "websocket"
    assert page.get_by_test_id("transport-webrtc").is_disabled()  # chosen before connecting
    page.get_by_test_id("text-input").fill("What is two plus two?")
    page.get_by_test_id("send").click()
    browser.wait_for_stat(page, "s.audioMsReceived > 0", 60_000)  # the WebSocket's own audio
    page.get_by_test_id("disconnect").click()

    page.reload()
    assert page.get_by_test_id("transport-websocket").is_checked()
    assert page.evaluate("() => localStorage.getItem('voicechat.transport')") == "websocket"
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert transport(page) == "websocket"


@pytest.mark.parametrize("refusal", ["404", "501", "no RTCPeerConnection"])
def test_without_calls_the_page_falls_back_to_the_websocket(
    local_chat_server, launch_browser, alice, refusal
):
    page = signed_in_page(launch_browser(), local_chat_server, alice)
    if refusal == "no RTCPeerConnection":
        page.add_init_script("delete window.RTCPeerConnection")
    else:
        page.route(
            "**/v1/realtime/calls?*",
            lambda route: route.fulfill(status=int(refusal), body="no calls here"),
        )
    page.goto(local_chat_server.url)
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert transport(page) == "websocket"
    assert page.get_by_test_id("transport-websocket").is_checked()
    if refusal == "no RTCPeerConnection":
        assert page.get_by_test_id("transport-webrtc").is_disabled()
    else:
        alert = page.get_by_test_id("alert")
        assert alert.get_attribute("data-kind") == "info"
        assert "WebSocket" in alert.inner_text()
        # Not the user's choice: the next visit tries WebRTC again.
        assert page.evaluate("() => localStorage.getItem('voicechat.transport')") is None
    page.get_by_test_id("text-input").fill("What is two plus two?")
    page.get_by_test_id("send").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .some(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')""",
        timeout=60_000,
    )


def test_a_server_restart_is_survived_over_webrtc(local_chat_server, launch_browser, alice):
    """The call closed by the server's shutdown goes through the same waits as a dropped socket,
    and the page calls again on its own once the server is back."""
    page = signed_in_page(launch_browser(), local_chat_server, alice)
    page.set_default_timeout(60_000)
    page.goto(local_chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    page.get_by_test_id("text-input").fill("Before the restart")
    page.get_by_test_id("send").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .some(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')"""
    )
    first_call = page.evaluate("() => window.voicechat.app.conversation.client.location")

    local_chat_server.stop()
    page.wait_for_selector('[data-testid="status"][data-state="reconnecting"]')
    assert page.get_by_test_id("retry-now").is_visible()

    local_chat_server.start()  # the same port
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert transport(page) == "webrtc"
    assert page.evaluate("() => window.voicechat.app.conversation.client.location") != first_call
    assert page.get_by_test_id("reconnect").is_hidden()
    assert page.locator(".turn-notice", has_text="New conversation").count() == 1
    assert [e["text"] for e in entries(page) if e["role"] == "user"] == ["Before the restart"]
    assert page.get_by_test_id("mode-push-to-talk").is_checked()
    # The new call's microphone stays muted in push-to-talk, as before the restart.
    assert page.evaluate("() => window.voicechat.app.conversation.client.microphone?.enabled") in (
        False,
        None,
    )
