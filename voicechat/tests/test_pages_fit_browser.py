"""History, monitor and admin in headless Chromium: nothing overflows a phone or clips a column."""

from datetime import timedelta

import pytest
from playwright.async_api import async_playwright, expect

from voicechat.enums import EndReason, Role
from voicechat.models import TranscriptItem
from voicechat.services import conversation_start
from voicechat.tests.conftest import db, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"

# Elements of the page's own content (not the top bar) that reach past the viewport's right edge.
OVERFLOWING = """() => [...document.querySelectorAll("main *")]
  .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map((el) => `${el.tagName.toLowerCase()}.${el.className}`)"""


def ended_conversation(user, *, said: str, reason: str = EndReason.UPSTREAM_ERROR):
    conversation = conversation_start(user=user, backend="openai", model="gpt-realtime", voice="v")
    conversation.ended = conversation.started + timedelta(seconds=75)
    conversation.end_reason = reason
    conversation.save()
    TranscriptItem.objects.create(
        conversation=conversation, item_id="u1", role=Role.USER, text=said
    )
    return conversation


async def open_page(browser, server, user, **options):
    context = await browser.new_context(**options)
    name, value = (await db(session_cookie, user)).split("=", 1)
    await context.add_cookies([{"name": name, "value": value, "url": f"http://{server.address}"}])
    return await context.new_page()


async def test_history_and_monitor_fit_a_phone_in_light_and_dark(
    fake_upstream, staff_user, start_server
):
    talk = await db(
        ended_conversation, staff_user, said="A long unbroken word: " + "sourdough" * 12
    )
    server = await start_server(upstream_url=fake_upstream.url)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        for scheme in ("light", "dark"):
            page = await open_page(
                browser,
                server,
                staff_user,
                viewport={"width": 390, "height": 844},
                color_scheme=scheme,
            )
            for path in ("/history/", f"/history/{talk.pk}/", "/monitor/"):
                await page.goto(f"http://{server.address}{path}")
                if path == "/monitor/":
                    # Once its script has the (empty) list, the monitor says so instead of going
                    # blank, and "live" stands apart from the subtitle.
                    await expect(page.get_by_test_id("monitor-status")).to_have_text("live")
                    await expect(page.get_by_test_id("monitor-empty")).to_be_visible()
                    await expect(page.locator("p #monitor-status")).to_have_count(0)
                assert await page.evaluate(OVERFLOWING) == [], f"{path} in {scheme} mode"
            await page.context.close()

        # An open conversation's row fits too, its buttons on one line (not "E/n/d").
        talking = await db(
            conversation_start,
            user=staff_user,
            backend="openai",
            model="gpt-realtime-mini",
            voice="v",
            process="host-1234-abcdef",
        )
        page = await open_page(browser, server, staff_user, viewport={"width": 390, "height": 844})
        await page.goto(f"http://{server.address}/monitor/")
        await expect(page.get_by_test_id("monitor-status")).to_have_text("live")
        end = page.get_by_test_id(f"end-{talking.pk}")
        await expect(end).to_be_visible()
        assert (await end.bounding_box())["height"] < 48
        assert await page.evaluate(OVERFLOWING) == []
        await browser.close()


async def test_admin_conversation_list_fits_at_1280(fake_upstream, django_user_model, start_server):
    admin = await db(
        django_user_model.objects.create_superuser, "root", password="root-password-123"
    )
    await db(ended_conversation, admin, said="Hello")
    server = await start_server(upstream_url=fake_upstream.url)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = await open_page(browser, server, admin, viewport={"width": 1280, "height": 800})
        await page.goto(f"http://{server.address}/admin/voicechat/conversation/")
        results = page.locator(".results")
        await expect(results).to_contain_text("Upstream reported a fatal error")
        # The list scrolls sideways inside its box when it is too wide: the End reason is cut.
        clipped = await results.evaluate("(box) => box.scrollWidth - box.clientWidth")
        assert clipped <= 0
        await browser.close()
