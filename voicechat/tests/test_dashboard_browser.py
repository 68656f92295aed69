"""The monitor's health dashboard in headless Chromium: live counts, reply latency and error
rates follow a real conversation through the gateway, light and dark, at 390 px too."""

import base64
import os
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from voicechat.enums import EndReason, Role
from voicechat.models import TranscriptItem
from voicechat.services import conversation_end, conversation_start
from voicechat.tests.conftest import db, session_cookie
from voicechat.tests.test_multiprocess import gateway
from voicechat.tests.test_turn_latency import reply, reply_done

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
AUDIO = base64.b64encode(b"\x01\x00" * 960).decode()
# The panel refreshes every 10 s: a generous bound for two refreshes on a busy machine.
REFRESHED = 45_000
# Set to a directory to keep screenshots of the dashboard (light and dark, wide and narrow).
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")


def _failed_conversation(user) -> None:
    conversation = conversation_start(user=user, backend="openai", model="gpt-realtime", voice="")
    conversation_end(conversation_id=conversation.pk, reason=EndReason.SERVER_ERROR)


def _stored_latency() -> bool:
    return TranscriptItem.objects.filter(role=Role.ASSISTANT, latency_ms__isnull=False).exists()


async def _until(condition, timeout: float = 30) -> None:
    import asyncio

    async with asyncio.timeout(timeout):
        while not await db(condition):
            await asyncio.sleep(0.05)


async def test_the_dashboard_follows_a_conversation(
    fake_upstream, alice, alice_token, staff_user, start_server
):
    await db(_failed_conversation, alice)  # ended in the last hour, with an error
    server = await start_server(upstream_url=fake_upstream.url)
    name, value = (await db(session_cookie, staff_user)).split("=", 1)
    cookie = {"name": name, "value": value, "url": f"http://{server.address}"}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = await browser.new_context()
        await context.add_cookies([cookie])
        page = await context.new_page()
        await page.goto(f"http://{server.address}/monitor/")
        health = page.get_by_test_id("health")
        await expect(health.get_by_test_id("stat-open")).to_have_text("0")
        await expect(health.get_by_test_id("stat-replies")).to_have_text("0")
        await expect(health.get_by_test_id("stat-errors")).to_have_text("100 %")
        await expect(health.get_by_test_id("end-reasons")).to_contain_text("server_error")

        async with gateway(server.address, alice_token) as ws:
            await ws.recv()  # session.created
            await fake_upstream.wait_for("session.update")
            await fake_upstream.push(
                [
                    {"type": "input_audio_buffer.speech_stopped", "item_id": "u1"},
                    *reply("a1", "r1"),
                    *reply_done("a1", "r1", "Hello."),
                ]
            )
            await _until(_stored_latency)
            # Refreshed by the page itself, not reloaded.
            await expect(health.get_by_test_id("stat-open")).to_have_text("1", timeout=REFRESHED)
            await expect(health.get_by_test_id("stat-replies")).to_have_text("1", timeout=REFRESHED)
            await expect(health.get_by_test_id("stat-median")).to_have_text(
                # The reply's own latency, as History shows it.
                await db(
                    lambda: f"{TranscriptItem.objects.get(item_id='a1').latency_ms / 1000:.2f} s"
                )
            )
            await expect(health.get_by_test_id("health-processes")).to_contain_text("1")
            if SCREENSHOTS:
                await _screenshots(browser, cookie, server.address, Path(SCREENSHOTS))
        # Ended by its client: one error in two ends.
        await expect(health.get_by_test_id("stat-errors")).to_have_text("50 %", timeout=REFRESHED)
        await expect(health.get_by_test_id("stat-open")).to_have_text("0")

        narrow = await browser.new_context(viewport={"width": 390, "height": 844})
        await narrow.add_cookies([cookie])
        small = await narrow.new_page()
        await small.goto(f"http://{server.address}/monitor/")
        overflow = await small.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0
        await browser.close()


async def _screenshots(browser, cookie: dict, address: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        for width in (390, 1280):
            context = await browser.new_context(
                viewport={"width": width, "height": 900}, color_scheme=scheme
            )
            await context.add_cookies([cookie])
            page = await context.new_page()
            await page.goto(f"http://{address}/monitor/")
            await page.screenshot(path=folder / f"dashboard-{scheme}-{width}.png", full_page=True)
            await context.close()
