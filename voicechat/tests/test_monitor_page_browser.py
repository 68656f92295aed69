"""The monitor page in headless Chromium: a conversation appears, its lines stream in, End works."""

import json

import pytest
from playwright.async_api import async_playwright, expect

from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.protocol import CloseCode
from voicechat.tests.conftest import db, session_cookie
from voicechat.tests.test_multiprocess import gateway
from voicechat.tests.test_shutdown import receive_until_closed, typed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


async def test_staff_watch_and_end_a_conversation_in_the_browser(
    fake_upstream, alice, alice_token, staff_user, start_server
):
    server = await start_server(upstream_url=fake_upstream.url)
    name, value = (await db(session_cookie, staff_user)).split("=", 1)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = await browser.new_context()
        await context.add_cookies(
            [{"name": name, "value": value, "url": f"http://{server.address}"}]
        )
        page = await context.new_page()
        await page.goto(f"http://{server.address}/monitor/")
        await expect(page.get_by_test_id("monitor-status")).to_have_text("live")

        async with gateway(server.address, alice_token) as ws:
            row = page.locator("#conversations tr[data-conversation]")
            await expect(row).to_have_count(1)
            await expect(row).to_contain_text("alice")
            conversation_id = int(await row.get_attribute("data-conversation"))
            await row.locator("button[data-watch]").click()
            await expect(page.get_by_test_id("transcript")).to_be_empty()  # nothing said yet

            await ws.send(json.dumps(typed("Say hello")))
            await ws.send(json.dumps({"type": "response.create"}))
            lines = page.get_by_test_id("monitor-line")
            await expect(lines.locator(".turn-text")).to_have_text(
                ["Say hello", "Hello from the fake upstream."]
            )
            await expect(lines.locator(".turn-who")).to_have_text(["User", "Assistant"])
            await expect(lines.first).to_have_attribute("data-role", "user")

            await row.get_by_role("button", name="End").click()
            await expect(page.locator(".messages")).to_contain_text(
                f"Asked conversation {conversation_id} to end."
            )
            events = await receive_until_closed(ws)
        assert ws.close_code == CloseCode.ENDED_BY_STAFF
        assert events[-1]["error"]["code"] == "ended_by_staff"
        await browser.close()
    conversation = await db(Conversation.objects.get, pk=conversation_id)
    assert conversation.end_reason == EndReason.ENDED_BY_STAFF
