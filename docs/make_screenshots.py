"""Regenerate the chat page screenshots in docs/ (run: python docs/make_screenshots.py).

Starts the real site (manage.py runserver, a throwaway SQLite file) with its gateway pointed at
the browser tests' fake voice upstream, seeds a little history, and drives Debian's Chromium
with a fake microphone through the main states of the page.
"""

import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="voicechat-shots-"))
os.environ["SQLITE_PATH"] = str(WORK / "db.sqlite3")
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils.timezone import now  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from voicechat.enums import EndReason, ItemStatus, Role  # noqa: E402
from voicechat.models import TranscriptItem  # noqa: E402
from voicechat.services import conversation_start  # noqa: E402
from voicechat.tests.browser import ChatServer, chromium_args, speech_wav  # noqa: E402
from voicechat.tests.fake_voice_upstream import ServerThread, VoiceFakeUpstream  # noqa: E402

REPLY = (
    "Good question. Sourdough needs three things: a lively starter, time, and a hot oven. "
    "Feed the starter the night before, mix, then let the dough rise slowly."
)
HISTORY = [
    ("How long should I rest bread dough?", "About an hour at room temperature.", 2, 185),
    (
        "Remind me what a haiku is.",
        "A haiku is a short Japanese poem of three lines, of five, seven and five syllables.",
        26,
        64,
    ),
    ("What's a good name for a grey cat?", "Maybe Ash, Smokey, or Earl Grey.", 50, 41),
    ("Help me plan a short run.", "Start with ten minutes of easy jogging.", 75, 312),
]


def seed(user) -> None:
    for first, reply, hours_ago, seconds in HISTORY:
        conversation = conversation_start(
            user=user, backend="openai", model="gpt-realtime", voice="marin"
        )
        conversation.started = now() - timedelta(hours=hours_ago)
        conversation.ended = conversation.started + timedelta(seconds=seconds)
        conversation.end_reason = EndReason.CLIENT_CLOSED
        conversation.save()
        lines = [(Role.USER, first), (Role.ASSISTANT, reply)]
        if "haiku" in first:
            lines += [
                (Role.USER, "Can you write one about rain?"),
                (Role.ASSISTANT, "Soft rain on the roof, / the kettle"),
                (Role.USER, "Make it about autumn rain instead."),
                (
                    Role.ASSISTANT,
                    "Cold autumn rain falls, / red leaves drift on the puddles, / "
                    "the street lamps glow warm.",
                ),
            ]
        for index, (role, text) in enumerate(lines):
            interrupted = text.endswith("the kettle")
            TranscriptItem.objects.create(
                conversation=conversation,
                item_id=f"i{index}",
                previous_item_id=f"i{index - 1}" if index else "",
                role=role,
                text=text,
                status=ItemStatus.TRUNCATED if interrupted else ItemStatus.COMPLETED,
                audio_end_ms=1800 if interrupted else None,
            )


def signed_in(browser, url: str, cookie: str, scale: float = 1, **options):
    context = browser.new_context(device_scale_factor=scale, **options)
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": url}])
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def wait_state(page, state: str) -> None:
    page.wait_for_selector(f'[data-testid="status"][data-state="{state}"]')


def main() -> None:
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("alice", password="alice-password-123")
    seed(user)
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    wav = speech_wav(WORK / "talk.wav", ("silence", 1200), ("speech", 1600), ("silence", 30000))
    upstream = VoiceFakeUpstream(
        reply_ms=9000,
        reply_text=REPLY,
        transcripts=["How do I bake sourdough bread?"] * 2 + ["What should I say?"],
    )
    with ServerThread(upstream):
        env = {
            **os.environ,
            "DEBUG": "True",
            "OPENAI_API_KEY": "sk-screenshots-dummy",
            "OPENAI_REALTIME_URL": upstream.url,
            "REALTIME_BACKEND": "openai",
        }
        with ChatServer(env, WORK / "server.log") as server, sync_playwright() as playwright:
            launch = playwright.chromium.launch
            browser = launch(executable_path="/usr/bin/chromium", args=chromium_args(wav))

            # A conversation: a typed question, a spoken one, and the reply being spoken.
            page = signed_in(browser, server.url, cookie, viewport={"width": 1280, "height": 800})
            page.goto(server.url)
            page.get_by_test_id("connect").click()
            wait_state(page, "assistant-speaking")
            page.get_by_test_id("stop").click()
            wait_state(page, "listening")
            page.get_by_test_id("text-input").fill("And how warm should the kitchen be?")
            page.get_by_test_id("send").click()
            wait_state(page, "assistant-speaking")
            time.sleep(2.5)
            page.screenshot(path=DOCS / "chat-conversation.png")
            page.emulate_media(color_scheme="dark")
            time.sleep(0.5)  # colours ease over 200 ms: let them land
            page.screenshot(path=DOCS / "chat-dark.png")

            # The same at phone width.
            phone = signed_in(
                browser,
                server.url,
                cookie,
                scale=2,
                viewport={"width": 390, "height": 844},
                is_mobile=True,
                has_touch=True,
            )
            phone.goto(server.url)
            phone.get_by_test_id("connect").click()
            wait_state(phone, "assistant-speaking")
            time.sleep(2)
            phone.screenshot(path=DOCS / "chat-phone.png")
            phone.context.close()
            page.context.close()

            # Push-to-talk, with the button held.
            page = signed_in(browser, server.url, cookie, viewport={"width": 1280, "height": 800})
            page.goto(server.url)
            page.get_by_test_id("mode-push-to-talk").check()
            page.get_by_test_id("connect").click()
            wait_state(page, "listening")
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=push-to-talk]').disabled"
            )
            box = page.get_by_test_id("push-to-talk").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            time.sleep(0.3)
            page.mouse.down()
            time.sleep(1.5)
            page.screenshot(path=DOCS / "chat-push-to-talk.png")
            page.mouse.up()
            page.evaluate("() => localStorage.setItem('voicechat.mode', 'hands-free')")
            page.context.close()

            # History and one conversation.
            page = signed_in(browser, server.url, cookie, viewport={"width": 1280, "height": 800})
            page.goto(f"{server.url}/history/")
            page.screenshot(path=DOCS / "history.png")
            page.get_by_text("Remind me what a haiku is.").click()
            page.screenshot(path=DOCS / "history-conversation.png")
            page.context.close()

            # The server restarts: the page counts down to its next try, then is back.
            page = signed_in(browser, server.url, cookie, viewport={"width": 1280, "height": 800})
            page.goto(server.url)
            page.get_by_test_id("connect").click()
            wait_state(page, "assistant-speaking")
            page.get_by_test_id("stop").click()
            wait_state(page, "listening")
            server.stop()
            page.get_by_test_id("reconnect").wait_for()
            time.sleep(1.2)
            page.screenshot(path=DOCS / "chat-reconnecting.png")
            server.start()
            wait_state(page, "listening")
            page.context.close()
            browser.close()

    # An error: the provider refuses the server's key.
    refusing = VoiceFakeUpstream(reject_status=401)
    with ServerThread(refusing):
        env = {
            **os.environ,
            "DEBUG": "True",
            "OPENAI_API_KEY": "sk-screenshots-dummy",
            "OPENAI_REALTIME_URL": refusing.url,
            "REALTIME_BACKEND": "openai",
        }
        with ChatServer(env, WORK / "server2.log") as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=chromium_args(wav)
            )
            page = signed_in(browser, server.url, cookie, viewport={"width": 1280, "height": 800})
            page.goto(server.url)
            page.get_by_test_id("connect").click()
            wait_state(page, "ended")
            page.screenshot(path=DOCS / "chat-error.png")
            page.context.close()
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.goto(f"{server.url}/login/")
            page.screenshot(path=DOCS / "login.png")
            browser.close()
    print("screenshots written to", DOCS)


if __name__ == "__main__":
    main()
