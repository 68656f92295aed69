"""The pages in Chinese and Japanese in real headless Chromium: the language from
Accept-Language or the picker (kept across reloads), the page scripts' own strings, the session
listening for that language, and a phone's width."""

import json
from datetime import timedelta

import pytest

from voicechat.enums import EndReason, Role
from voicechat.models import TranscriptItem
from voicechat.services import conversation_start
from voicechat.tests import browser
from voicechat.tests.browser import received, signed_in_page

# The shared browser fixtures, assigned here so pytest finds them for this module.
playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
voice_upstream = browser.voice_upstream
chat_server = browser.chat_server
local_chat_server = browser.local_chat_server


@pytest.fixture(autouse=True)
def websocket_transport(monkeypatch):
    """These tests read the WebSocket's frames, and the fake upstream has no calls endpoint:
    the chat page is set to the WebSocket (test_chat_page_webrtc_browser.py: WebRTC)."""
    monkeypatch.setenv("REALTIME_CHAT_TRANSPORT", "websocket")


pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPLY = "A short answer from the fake upstream."


def status_text(page) -> str:
    return page.get_by_test_id("status").inner_text().strip()


def session_updates(upstream, count: int) -> list[dict]:
    """The session.updates the upstream got, once there are `count`, as sent (the fake
    upstream's session merges nested objects of the parsed events into itself)."""
    received(upstream, "session.update", count)
    events = [json.loads(frame) for frame in list(upstream.received_frames)]
    return [event for event in events if event["type"] == "session.update"]


def languages(updates: list[dict]) -> list[str]:
    """The transcription language each of these session.updates set, in order."""
    inputs = [u["session"].get("audio", {}).get("input", {}) for u in updates]
    return [i["transcription"]["language"] for i in inputs if i.get("transcription")]


def test_chinese_from_accept_language(chat_server, voice_upstream, launch_browser, alice):
    voice_upstream.reply_text = REPLY
    page = signed_in_page(launch_browser(), chat_server, alice, locale="zh-CN")
    page.goto(chat_server.url)
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.get_by_test_id("language").input_value() == "zh-hans"
    assert page.get_by_test_id("connect").inner_text().strip() == "开始对话"
    assert status_text(page) == "未连接"

    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    # The page scripts' own strings (the status line, the input's hint, the speakers).
    # (Listening, or Connected when the microphone is not open yet: both are the script's.)
    assert status_text(page) in ("正在听", "已连接 — 请输入消息")
    assert page.get_by_test_id("text-input").get_attribute("placeholder") == "输入消息…"
    # The gateway's defaults (English), then the page's: listen for Chinese.
    assert languages(session_updates(voice_upstream, 2)) == ["en", "zh"]
    page.get_by_test_id("text-input").fill("你好")
    page.get_by_test_id("send").click()
    page.wait_for_selector(
        '[data-testid="transcript-entry"][data-role="assistant"][data-state="done"]'
    )
    speakers = page.locator('[data-testid="transcript-entry"] .turn-who').all_inner_texts()
    assert speakers == ["你", "助手"]
    page.get_by_test_id("disconnect").click()
    assert status_text(page) == "已结束 · 你已挂断"


@pytest.mark.parametrize("voice_upstream", [{"reject_status": 401}], indirect=True)
def test_why_it_ended_is_said_in_the_page_language(
    chat_server, voice_upstream, launch_browser, alice
):
    """The gateway's close reasons are English sentences: the page says them in its own words."""
    page = signed_in_page(launch_browser(), chat_server, alice, locale="ja-JP")
    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="ended"]')
    alert = page.get_by_test_id("alert").locator(".alert-text")
    assert alert.inner_text().strip() == "AI サービスが接続を拒否しました。"
    assert status_text(page) == "終了 · AI サービスが拒否しました"


def test_japanese_chosen_with_the_picker_stays_chosen(
    chat_server, voice_upstream, launch_browser, alice
):
    page = signed_in_page(launch_browser(), chat_server, alice, locale="en-US")
    page.goto(chat_server.url)
    assert page.locator("html").get_attribute("lang") == "en"
    assert status_text(page) == "Not connected"

    with page.expect_navigation():
        page.get_by_test_id("language").select_option("ja")
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.url.rstrip("/") == chat_server.url  # back on the same page
    page.reload()
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.get_by_test_id("language").input_value() == "ja"
    assert page.get_by_test_id("connect").inner_text().strip() == "会話を始める"
    page.goto(f"{chat_server.url}/history/")
    assert page.get_by_role("heading", level=1).inner_text() == "過去の会話"

    page.goto(chat_server.url)
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert status_text(page) in ("聞いています", "接続しました — メッセージを入力してください")
    assert languages(session_updates(voice_upstream, 2)) == ["en", "ja"]

    # And back to English: the English session keeps the server's default language.
    page.get_by_test_id("disconnect").click()
    sent_before = len(session_updates(voice_upstream, 2))
    with page.expect_navigation():
        page.get_by_test_id("language").select_option("en")
    page.reload()
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    assert status_text(page) in ("Listening", "Connected — type a message")
    page.get_by_test_id("text-input").fill("Hello")
    page.get_by_test_id("send").click()
    # The message follows the page's session.update on the socket: once it is in, so is that.
    received(voice_upstream, "conversation.item.create")
    new = session_updates(voice_upstream, sent_before + 1)[sent_before:]
    assert languages(new) == ["en"]  # the gateway's defaults, and nothing from the page


def test_the_offline_engine_listens_for_japanese(local_chat_server, launch_browser, alice):
    """The language reaches the offline engine's session, which picks its recognizer from it
    (multilingual Whisper base for anything but English: local_engine/stt.py)."""
    page = signed_in_page(launch_browser(), local_chat_server, alice, locale="ja-JP")
    updated = []

    def on_socket(socket):
        def on_frame(payload):
            event = json.loads(payload)
            if event.get("type") == "session.updated":
                updated.append(event["session"]["audio"]["input"]["transcription"])

        socket.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    page.goto(local_chat_server.url)
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    for _ in range(300):  # up to 30 s; Playwright delivers frames while the page waits
        if [t["language"] for t in updated][-1:] == ["ja"]:
            break
        page.wait_for_timeout(100)
    # The gateway's defaults (English), then the page's language.
    assert [t["language"] for t in updated] == ["en", "ja"]


def ended_conversation(user):
    conversation = conversation_start(
        user=user, backend="openai", model="gpt-realtime", voice="marin"
    )
    conversation.ended = conversation.started + timedelta(seconds=95)
    conversation.end_reason = EndReason.UPSTREAM_ERROR
    conversation.save()
    TranscriptItem.objects.create(
        conversation=conversation, item_id="u1", role=Role.USER, text="明天东京的天气怎么样？"
    )
    return conversation


# Anything on the page reaching past the viewport's right edge.
OVERFLOWING = """() => [...document.querySelectorAll("body *")]
  .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map((el) => `${el.tagName.toLowerCase()}.${el.className}`)"""


@pytest.mark.parametrize(("lang", "live"), [("zh-hans", "进行中"), ("ja", "進行中")])
def test_every_page_fits_a_phone_in_chinese_and_japanese(
    chat_server, launch_browser, staff_user, lang, live
):
    talk = ended_conversation(staff_user)
    browser_ = launch_browser()
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    anonymous = browser_.new_context(**phone)
    anonymous.add_cookies([{"name": "django_language", "value": lang, "url": chat_server.url}])
    login = anonymous.new_page()
    login.goto(f"{chat_server.url}/login/")
    assert login.locator("html").get_attribute("lang") == lang
    assert login.evaluate(OVERFLOWING) == []

    page = signed_in_page(browser_, chat_server, staff_user, **phone)
    page.context.add_cookies([{"name": "django_language", "value": lang, "url": chat_server.url}])
    for path in (
        "/",
        "/history/",
        f"/history/{talk.pk}/",
        f"/history/{talk.pk}/delete/",
        "/monitor/",
    ):
        page.goto(f"{chat_server.url}{path}")
        assert page.locator("html").get_attribute("lang") == lang
        if path == "/monitor/":  # its script's own words, once its socket is open
            page.wait_for_function(
                "(live) => document.querySelector('[data-testid=monitor-status]').textContent === live",
                arg=live,
            )
        assert page.evaluate(OVERFLOWING) == [], path
        # Staff see four links and the picker: all of them inside the screen.
        for target in (page.get_by_test_id("logout"), page.get_by_test_id("language")):
            box = target.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, path
