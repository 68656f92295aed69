"""The chat page in real headless Chromium, against daphne and a fake voice upstream.

The fake microphone plays a WAV (speech-like sound between silences); the fake upstream detects
the speech, answers with paced audio and a late user transcript. These tests check the page's
plumbing end to end: capture, the gateway, playback, barge-in, push-to-talk, text, errors.
"""

import base64

import pytest

from voicechat.enums import ItemStatus, Role
from voicechat.models import Conversation
from voicechat.tests import browser
from voicechat.tests.browser import (
    pcm_rms,
    received,
    signed_in_page,
    speech_wav,
    stats,
    wait_for_stat,
    watch_console,
)

# The shared browser fixtures, assigned here so pytest finds them for this module.
playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
voice_upstream = browser.voice_upstream
chat_server = browser.chat_server


@pytest.fixture(autouse=True)
def websocket_transport(monkeypatch):
    """These tests follow the WebSocket path (input_audio_buffer.append, the playback worklet's
    counts): the chat page is set to the WebSocket (test_chat_page_webrtc_browser.py: WebRTC)."""
    monkeypatch.setenv("REALTIME_CHAT_TRANSPORT", "websocket")


pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPLY = "Sure. Here is a calm, short answer from the fake upstream."


def entries(page) -> list[dict]:
    return page.eval_on_selector_all(
        '[data-testid="transcript-entry"]',
        """els => els.map(e => ({
            role: e.dataset.role, state: e.dataset.state, itemId: e.dataset.itemId,
            text: e.querySelector('.turn-text').textContent }))""",
    )


def wait_for_entry(page, role: str, state: str, text: str = "") -> None:
    page.wait_for_function(
        """([role, state, text]) =>
            [...document.querySelectorAll('[data-testid="transcript-entry"]')].some(e =>
                e.dataset.role === role && e.dataset.state === state
                && e.querySelector('.turn-text').textContent.includes(text))""",
        arg=[role, state, text],
    )


def wait_for_status(page, state: str) -> None:
    page.wait_for_selector(f'[data-testid="status"][data-state="{state}"]')


def appended_audio(upstream) -> list[bytes]:
    return [
        base64.b64decode(event["audio"])
        for event in upstream.received
        if event["type"] == "input_audio_buffer.append"
    ]


def test_a_spoken_turn_is_heard_answered_played_and_saved(
    chat_server, voice_upstream, launch_browser, alice, tmp_path
):
    voice_upstream.reply_ms = 2000
    voice_upstream.reply_text = REPLY
    wav = speech_wav(tmp_path / "hello.wav", ("silence", 1200), ("speech", 1500), ("silence", 6000))
    page = signed_in_page(launch_browser(wav), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()

    wait_for_entry(page, "assistant", "done", REPLY)
    wait_for_entry(page, "user", "done", "fake transcript")
    # The user's transcript arrived after the reply had started, yet it is shown first.
    assert [e["role"] for e in entries(page)] == ["user", "assistant"]

    # All of the reply is played, without a gap once the prefill was reached.
    wait_for_stat(page, "s.audioMsPlayed >= s.audioMsReceived - 25 && s.audioMsReceived >= 2000")
    wait_for_status(page, "listening")
    played = stats(page)
    assert played["audioMsReceived"] == 2000
    assert played["underruns"] == 0
    assert played["lastLatencyMs"] is not None and played["lastLatencyMs"] >= 0

    # The microphone went out as 40 ms PCM16 chunks at 24 kHz, and it was not silence.
    # The page keeps sending while we look: count what arrived, then what the page has sent.
    chunks = appended_audio(voice_upstream)
    assert stats(page)["chunksSent"] >= len(chunks) > 50
    assert all(len(chunk) <= 1920 for chunk in chunks)
    assert sum(len(chunk) == 1920 for chunk in chunks) >= len(chunks) - 1
    assert pcm_rms(b"".join(chunks)) > 0.005

    # The transcript is in the database, in conversation order.
    conversation = Conversation.objects.for_user(alice).recent().first()
    page.get_by_test_id("disconnect").click()
    wait_for_status(page, "ended")
    items = conversation.ordered_items()
    assert [(i.role, i.status) for i in items] == [
        (Role.USER, ItemStatus.COMPLETED),
        (Role.ASSISTANT, ItemStatus.COMPLETED),
    ]
    assert items[0].text.startswith("(fake transcript of") and items[1].text == REPLY


def test_speaking_over_the_reply_stops_it_and_truncates_to_what_was_heard(
    chat_server, voice_upstream, launch_browser, alice, tmp_path
):
    voice_upstream.reply_ms = 12000  # far longer than the pause before the interruption
    wav = speech_wav(
        tmp_path / "barge-in.wav",
        ("silence", 1200),
        ("speech", 1200),
        ("silence", 2500),
        ("speech", 1200),
        ("silence", 4000),
    )
    page = signed_in_page(launch_browser(wav), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()

    wait_for_entry(page, "assistant", "interrupted")
    [truncate] = received(voice_upstream, "conversation.item.truncate")
    first_reply = next(e for e in entries(page) if e["role"] == "assistant")
    assert truncate["item_id"] == first_reply["itemId"]
    assert truncate["content_index"] == 0
    heard = truncate["audio_end_ms"]
    assert isinstance(heard, int)
    got = stats(page)["audioMsReceived"]
    # Something was heard, never more than was received, and playback stopped well short.
    assert 0 < heard <= got
    assert heard < voice_upstream.reply_ms
    # After the interruption the second turn is answered in full.
    wait_for_entry(page, "assistant", "done")
    assert [e["role"] for e in entries(page)] == ["user", "assistant", "user", "assistant"]
    conversation = Conversation.objects.for_user(alice).recent().first()
    page.get_by_test_id("disconnect").click()
    wait_for_status(page, "ended")
    cut = conversation.items.get(item_id=truncate["item_id"])
    assert cut.status == ItemStatus.TRUNCATED and cut.audio_end_ms == heard


def test_stop_button_cuts_the_reply_short(
    chat_server, voice_upstream, launch_browser, alice, tmp_path
):
    voice_upstream.reply_ms = 12000
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("Tell me a long story")
    page.get_by_test_id("send").click()
    wait_for_status(page, "assistant-speaking")
    wait_for_stat(page, "s.audioMsPlayed > 300")
    page.get_by_test_id("stop").click()

    wait_for_entry(page, "assistant", "interrupted")
    received(voice_upstream, "response.cancel")
    [truncate] = received(voice_upstream, "conversation.item.truncate")
    assert 0 < truncate["audio_end_ms"] <= stats(page)["audioMsReceived"]


def test_push_to_talk_sends_only_while_held_then_commits(
    chat_server, voice_upstream, launch_browser, alice, tmp_path
):
    voice_upstream.reply_text = REPLY
    wav = speech_wav(tmp_path / "ptt.wav", ("silence", 1000), ("speech", 9000))
    page = signed_in_page(launch_browser(wav), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    ptt = page.get_by_test_id("push-to-talk")
    page.wait_for_function("() => !document.querySelector('[data-testid=push-to-talk]').disabled")
    assert stats(page)["chunksSent"] == 0  # nothing leaves the microphone until the press

    # Hold the space bar for a while, then let go.
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.down("Space")
    wait_for_status(page, "user-speaking")
    assert ptt.get_attribute("aria-pressed") == "true"
    wait_for_stat(page, "s.audioMsSent >= 1000")
    page.keyboard.up("Space")
    wait_for_entry(page, "assistant", "done", REPLY)
    wait_for_entry(page, "user", "done", "fake transcript")
    wait_for_status(page, "listening")  # the reply has finished playing
    sent_after_first = stats(page)["chunksSent"]

    # The same with the button, held by the pointer.
    box = ptt.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    wait_for_stat(page, f"s.chunksSent >= {sent_after_first + 15}")
    page.mouse.up()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .filter(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')
            .length === 2"""
    )

    types = [e["type"] for e in voice_upstream.received if e["type"] != "input_audio_buffer.append"]
    updates = [e for e in voice_upstream.received if e["type"] == "session.update"]
    assert any(u["session"]["audio"]["input"]["turn_detection"] is None for u in updates)
    assert "input_audio_buffer.speech_started" not in types
    # Each turn: clear, (appends), commit, response.create.
    turns = [t for t in types if t.startswith(("input_audio_buffer", "response.create"))]
    assert turns == ["input_audio_buffer.clear", "input_audio_buffer.commit", "response.create"] * 2
    assert [e["role"] for e in entries(page)] == ["user", "assistant", "user", "assistant"]


def test_typing_instead_of_talking(chat_server, voice_upstream, launch_browser, alice):
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    assert page.get_by_test_id("text-input").is_disabled()
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("What's a good name for a cat?")
    page.get_by_test_id("text-input").press("Enter")

    wait_for_entry(page, "user", "done", "What's a good name for a cat?")
    wait_for_entry(page, "assistant", "done", REPLY)
    assert page.get_by_test_id("text-input").input_value() == ""
    conversation = Conversation.objects.for_user(alice).recent().first()
    page.get_by_test_id("disconnect").click()
    wait_for_status(page, "ended")
    assert [i.text for i in conversation.ordered_items()] == [
        "What's a good name for a cat?",
        REPLY,
    ]


def test_a_blocked_microphone_is_explained_and_text_still_works(
    chat_server, voice_upstream, launch_browser, alice
):
    voice_upstream.reply_text = REPLY
    # Without the fake-UI flag Chromium asks for permission, and headless answers "no".
    page = signed_in_page(launch_browser(grant_microphone=False), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    alert = page.get_by_test_id("alert")
    alert.wait_for()
    assert "Microphone access is blocked" in alert.inner_text()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("Can you hear me?")
    page.get_by_test_id("send").click()
    wait_for_entry(page, "assistant", "done", REPLY)
    assert page.get_by_test_id("push-to-talk").is_disabled()


def test_a_dropped_upstream_reconnects_into_a_new_conversation(
    chat_server, voice_upstream, launch_browser, alice
):
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("First question")
    page.get_by_test_id("send").click()
    wait_for_entry(page, "assistant", "done", REPLY)

    # The provider drops the session; the gateway closes with 4003 and the page dials again.
    voice_upstream.call(voice_upstream.drop(code=1011))
    page.wait_for_selector(".turn-notice >> text=reconnecting")
    page.wait_for_selector(".turn-notice >> text=New conversation")
    wait_for_status(page, "listening")
    # Back again: the "reconnecting…" line has gone.
    assert page.locator(".turn-notice", has_text="reconnecting").count() == 0
    page.get_by_test_id("text-input").fill("Second question")
    page.get_by_test_id("send").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .filter(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')
            .length === 2"""
    )
    # The earlier lines stay on the page; the server kept two conversations.
    assert [e["text"] for e in entries(page) if e["role"] == "user"] == [
        "First question",
        "Second question",
    ]
    assert Conversation.objects.for_user(alice).count() == 2


@pytest.mark.parametrize("voice_upstream", [{"reject_status": 401}], indirect=True)
def test_an_upstream_refusal_is_shown_in_plain_words(
    chat_server, voice_upstream, launch_browser, alice
):
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "ended")
    alert = page.get_by_test_id("alert")
    assert "refused the connection" in alert.inner_text()
    assert "refused" in page.get_by_test_id("status").inner_text()
    assert DUMMY_KEY_FRAGMENT not in page.content()
    # Ready to try again.
    assert page.get_by_test_id("connect").is_visible()


DUMMY_KEY_FRAGMENT = "sk-test-browser"


def test_the_login_form_leads_to_the_chat(chat_server, launch_browser, alice, settings):
    # The server process checks passwords with the default hashers, not the tests' fast MD5.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    alice.set_password("alice-password-123")
    alice.save()
    page = launch_browser().new_page()
    watch_console(page)
    page.goto(chat_server.url)
    assert "/login/" in page.url
    page.get_by_test_id("login-username").fill("alice")
    page.get_by_test_id("login-password").fill("alice-password-123")
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("connect").wait_for()
    assert page.url.rstrip("/") == chat_server.url


def test_the_page_works_from_the_keyboard_alone(chat_server, voice_upstream, launch_browser, alice):
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)

    def focused() -> str | None:
        return page.evaluate("() => document.activeElement?.dataset?.testid ?? null")

    def tab_to(testid: str) -> None:
        for _ in range(20):
            page.keyboard.press("Tab")
            if focused() == testid:
                return
        raise AssertionError(f"Tab never reached {testid}")

    tab_to("connect")
    page.keyboard.press("Enter")
    wait_for_status(page, "listening")
    tab_to("text-input")
    page.keyboard.type("Hello from the keyboard")
    page.keyboard.press("Enter")
    wait_for_entry(page, "assistant", "done", REPLY)
    tab_to("disconnect")
    page.keyboard.press("Enter")
    wait_for_status(page, "ended")


@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, 24000), (44100, 24000), (24000, 44100)])
def test_the_worklets_resampler_keeps_tones_and_rejects_aliases(
    chat_server, launch_browser, rate_in, rate_out
):
    """The sinc resampler the worklets share, run in Chromium on the served module."""
    page = launch_browser().new_page()
    page.goto(f"{chat_server.url}/login/")
    result = page.evaluate(
        """async ([rateIn, rateOut]) => {
            const { SincResampler } = await import('/static/voicechat/worklets/sinc-resampler.js');
            const run = (freq) => {
                const r = new SincResampler(rateIn, rateOut, 128);
                const out = new Float32Array(r.maxOutput(128));
                const input = new Float32Array(128);
                const got = [];
                for (let t = 0; t < rateIn; t += 128) {
                    for (let i = 0; i < 128; i++) input[i] = 0.5 * Math.sin(2 * Math.PI * freq * (t + i) / rateIn);
                    const n = r.push(input, 128, out);
                    for (let i = 0; i < n; i++) got.push(out[i]);
                }
                return got;
            };
            const tone = run(440);
            let error = 0;
            for (let i = 500; i < tone.length - 500; i++) {
                error = Math.max(error, Math.abs(tone[i] - 0.5 * Math.sin(2 * Math.PI * 440 * i / rateOut)));
            }
            // Going down, a tone above the output's Nyquist must not fold back (alias).
            let peak = 0;
            if (rateIn > rateOut) {
                const high = run(rateOut * 0.5 * 1.5);
                peak = Math.max(...high.slice(500).map(Math.abs));
            }
            return { frames: tone.length, error, peak };
        }""",
        [rate_in, rate_out],
    )
    assert abs(result["frames"] - rate_out) < rate_out * 0.01
    assert result["error"] < 0.005
    assert result["peak"] < 0.01


def distance_from_bottom(page) -> float:
    return page.evaluate(
        """() => { const s = document.querySelector('[data-testid="transcript-scroll"]');
                   return s.scrollHeight - s.scrollTop - s.clientHeight; }"""
    )


def wait_for_replies(page, count: int) -> None:
    page.wait_for_function(
        """count => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .filter(e => e.dataset.role === 'assistant' && e.dataset.state === 'done')
            .length >= count""",
        arg=count,
    )


@pytest.mark.parametrize("reduced_motion", ["no-preference", "reduce"])
def test_the_transcript_follows_a_long_conversation(
    chat_server, voice_upstream, launch_browser, alice, reduced_motion
):
    voice_upstream.reply_ms = 300
    voice_upstream.reply_text = "A reply long enough to wrap onto a second line. " * 3
    page = signed_in_page(launch_browser(), chat_server, alice, reduced_motion=reduced_motion)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    for turn in range(1, 13):
        page.get_by_test_id("text-input").fill(f"Question number {turn}")
        page.get_by_test_id("send").click()
        wait_for_replies(page, turn)
        # A scroll still under way has a short while to land; then the newest line shows.
        page.wait_for_timeout(400)
        assert distance_from_bottom(page) <= 2, f"turn {turn}"

    # Someone who scrolled up to read is not pulled back down by the next reply.
    page.eval_on_selector('[data-testid="transcript-scroll"]', "s => s.scrollTo({top: 0})")
    page.get_by_test_id("text-input").fill("One more")
    page.get_by_test_id("send").click()
    wait_for_replies(page, 13)
    page.wait_for_timeout(400)
    assert page.eval_on_selector('[data-testid="transcript-scroll"]', "s => s.scrollTop") == 0


def test_a_push_to_talk_tap_is_ignored_and_cancels_nothing(
    chat_server, voice_upstream, launch_browser, alice, tmp_path
):
    voice_upstream.reply_ms = 4000
    voice_upstream.reply_text = REPLY
    wav = speech_wav(tmp_path / "tap.wav", ("silence", 1000), ("speech", 9000))
    page = signed_in_page(launch_browser(wav), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    # Push-to-talk interrupts by a press, not by speaking over the reply: the hints say so.
    visible_text = page.locator("[data-chat]").inner_text()
    assert "speaking over the reply" not in visible_text
    assert "Speak over a reply" not in visible_text
    page.get_by_test_id("text-input").fill("Tell me something")
    page.get_by_test_id("send").click()
    wait_for_status(page, "assistant-speaking")

    # A tap on the button while the answer plays: ignored, with a hint, and nothing stops.
    ptt = page.get_by_test_id("push-to-talk")
    box = ptt.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.wait_for_timeout(80)
    page.mouse.up()
    assert "Hold the button" in page.get_by_test_id("alert").inner_text()
    wait_for_entry(page, "assistant", "done", REPLY)
    wait_for_stat(page, "s.audioMsPlayed >= s.audioMsReceived - 25 && s.audioMsReceived >= 4000")
    types = [e["type"] for e in voice_upstream.received]
    assert "response.cancel" not in types
    assert "conversation.item.truncate" not in types
    assert "input_audio_buffer.commit" not in types


def test_a_server_restart_is_survived_without_touching_anything(
    chat_server, voice_upstream, launch_browser, alice
):
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    # A page state to come back to: push-to-talk, another voice, a line of transcript.
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("voice").select_option("verse")
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("Before the restart")
    page.get_by_test_id("send").click()
    wait_for_entry(page, "assistant", "done", REPLY)
    updates_before = len([e for e in voice_upstream.received if e["type"] == "session.update"])

    chat_server.stop()
    # Still signed in, the server is down: the page says so and counts down to its next try.
    countdown = page.get_by_test_id("reconnect-countdown")
    page.wait_for_function(
        """() => document.querySelector('[data-testid="reconnect-countdown"]')
            .textContent.includes("Couldn't reach the server")"""
    )
    assert "still signed in" in countdown.inner_text()
    assert "Trying again in" in countdown.inner_text()
    assert page.get_by_test_id("retry-now").is_visible()
    assert page.get_by_test_id("alert").is_hidden()

    chat_server.start()  # the same port
    wait_for_status(page, "listening")  # on its own: nobody clicks anything
    assert page.get_by_test_id("reconnect").is_hidden()
    assert page.locator(".turn-notice", has_text="reconnecting").count() == 0
    assert [e["text"] for e in entries(page) if e["role"] == "user"] == ["Before the restart"]
    # The same mode and voice, sent to the new session.
    assert page.get_by_test_id("mode-push-to-talk").is_checked()
    assert page.get_by_test_id("voice").input_value() == "verse"
    resumed = received(voice_upstream, "session.update", updates_before + 1)[updates_before:]
    assert any(
        u["session"]["audio"].get("input", {}).get("turn_detection", "") is None for u in resumed
    )
    assert any(u["session"]["audio"].get("output", {}).get("voice") == "verse" for u in resumed)
    page.get_by_test_id("text-input").fill("After the restart")
    page.get_by_test_id("send").click()
    wait_for_replies(page, 2)


def test_a_signed_out_user_is_told_so_and_not_retried_forever(
    chat_server, voice_upstream, launch_browser, alice
):
    from django.contrib.sessions.models import Session

    page = signed_in_page(launch_browser(), chat_server, alice)
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    Session.objects.all().delete()  # signed out elsewhere (or the session expired)
    voice_upstream.call(voice_upstream.drop(code=1011))  # and the line drops: the page redials
    wait_for_status(page, "ended")
    alert = page.get_by_test_id("alert")
    assert "signed out" in alert.inner_text()
    assert "/login/" in alert.get_by_role("link").get_attribute("href")
    assert page.get_by_test_id("reconnect").is_hidden()
    assert page.get_by_test_id("connect").is_visible()


@pytest.mark.parametrize("who", ["alice", "staff_user"])
def test_the_chat_page_fits_a_phone(chat_server, voice_upstream, launch_browser, request, who):
    voice_upstream.reply_text = REPLY
    voice_upstream.reply_ms = 300
    user = request.getfixturevalue(who)  # staff see one more link in the top bar
    page = signed_in_page(
        launch_browser(),
        chat_server,
        user,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    page.goto(chat_server.url)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    assert page.get_by_test_id("logout").is_visible()
    sign_out = page.get_by_test_id("logout").bounding_box()
    assert sign_out["x"] + sign_out["width"] <= 390
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("Hello from a phone")
    # Playwright's click fails if another element (the sticky form) would take the tap.
    page.get_by_test_id("send").click(timeout=5000)
    wait_for_entry(page, "assistant", "done", REPLY)
    for turn in range(4):  # a longer conversation scrolls the page under the sticky box
        wait_for_status(page, "listening")
        page.get_by_test_id("text-input").fill(f"Turn {turn}")
        send = page.get_by_test_id("send")
        # Both check the element at the point: at 445 px wide the transcript and the form
        # took the third message's click.
        if turn % 2 == 0:
            send.click(timeout=5000)
        else:
            send.tap(timeout=5000)
        wait_for_replies(page, turn + 2)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390


def test_the_event_log_records_while_closed_and_says_its_time_zone(
    chat_server, voice_upstream, launch_browser, alice
):
    voice_upstream.reply_ms = 300
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice, timezone_id="Asia/Tokyo")
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("Something to log")
    page.get_by_test_id("send").click()
    wait_for_replies(page, 1)

    log = page.get_by_test_id("event-log")
    log.locator("summary").click()  # opened only now
    # (response.done follows the reply's last line by a moment)
    log_has_response_done = """count => [...document.querySelectorAll('.log-line code')]
        .filter(c => c.textContent === 'response.done').length >= count"""
    page.wait_for_function(log_has_response_done, arg=1)
    lines = log.locator(".log-line code").all_inner_texts()
    for expected in ("session.created", "conversation.item.create", "response.done"):
        assert expected in lines
    assert "Asia/Tokyo (UTC+09:00)" in log.locator("summary").inner_text()
    # Open, it goes on recording as before.
    wait_for_status(page, "listening")
    page.get_by_test_id("text-input").fill("And more")
    page.get_by_test_id("send").click()
    wait_for_replies(page, 2)
    page.wait_for_function(log_has_response_done, arg=2)
