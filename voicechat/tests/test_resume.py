"""Continuing a past conversation (issue 17, item 2): ?resume=<id> replays its transcript first.

Only the owner may continue a conversation; the new one is linked to the old, the replayed lines
are not stored a second time, and the replay is bounded by REALTIME_RESUME_CONTEXT_TOKENS.
"""

import pytest
from django.urls import reverse

from voicechat.enums import EndReason, Role
from voicechat.gateway.resume import context_frames
from voicechat.models import Conversation, TranscriptItem
from voicechat.protocol import CloseCode
from voicechat.services import conversation_end, conversation_start
from voicechat.tests import browser
from voicechat.tests.conftest import db, finished_conversation

# The shared browser fixtures, assigned here so pytest finds them for this module.
playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
local_chat_server = browser.local_chat_server

pytestmark = pytest.mark.django_db(transaction=True)

OLD_LINES = [
    (Role.USER, "My name is Ada."),
    (Role.ASSISTANT, "Nice to meet you, Ada."),
    (Role.USER, "I like sourdough bread."),
    (Role.ASSISTANT, "A fine choice."),
]


def past_conversation(user, lines=OLD_LINES) -> Conversation:
    conversation = conversation_start(user=user, backend="openai", model="gpt-realtime", voice="")
    previous = ""
    for n, (role, text) in enumerate(lines):
        TranscriptItem.objects.create(
            conversation=conversation,
            item_id=f"item_{n}",
            previous_item_id=previous,
            role=role,
            text=text,
            status="completed",
        )
        previous = f"item_{n}"
    conversation_end(conversation_id=conversation.pk, reason=EndReason.CLIENT_CLOSED)
    return conversation


def typed(text: str) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


async def test_the_owner_continues_a_conversation_with_its_transcript_replayed_first(
    fake_upstream, alice, alice_token, connect
):
    old = await db(past_conversation, alice)
    connected, client = await connect(token=alice_token, path=f"/v1/realtime?resume={old.pk}")
    assert connected
    await client.receive_until("session.updated")
    await client.send(typed("What was my name?"))
    await fake_upstream.wait_for("conversation.item.create", count=len(OLD_LINES) + 1)

    kinds = [event["type"] for event in fake_upstream.received]
    assert kinds[0] == "session.update"  # the server's defaults, then the context
    replayed = [event["item"] for event in fake_upstream.received[1 : len(OLD_LINES) + 1]]
    assert [(item["role"], item["content"][0]["text"]) for item in replayed] == OLD_LINES
    assert [item["content"][0]["type"] for item in replayed] == [
        "input_text",
        "output_text",
        "input_text",
        "output_text",
    ]
    assert fake_upstream.received[-1]["item"]["content"][0]["text"] == "What was my name?"

    await client.receive_until("conversation.item.done")  # the typed line, stored
    await client.communicator.disconnect()
    new = await finished_conversation(alice)
    assert new.pk != old.pk and new.resumed_from_id == old.pk
    stored = await db(lambda: [item.text for item in new.ordered_items()])
    assert stored == ["What was my name?"]  # the replayed lines stay with the old conversation


@pytest.mark.parametrize("whose", ["someone_else", "deleted", "missing", "garbage"])
async def test_only_the_owner_may_continue_a_conversation(
    fake_upstream, alice, alice_token, django_user_model, connect, whose
):
    bob = await db(django_user_model.objects.create_user, "bob", password="bob-password-123")
    old = await db(past_conversation, alice if whose == "deleted" else bob)
    if whose == "deleted":
        await db(Conversation.objects.filter(pk=old.pk).update, deleted=old.started)
    resume = {"missing": "999999", "garbage": "1;DROP"}.get(whose, str(old.pk))
    connected, client = await connect(token=alice_token, path=f"/v1/realtime?resume={resume}")
    assert connected
    events, code = await client.receive_close()
    assert code == CloseCode.RESUME_NOT_ALLOWED
    assert events[-1]["error"]["code"] == "resume_not_allowed"
    assert not await db(Conversation.objects.filter(user=alice).exclude(pk=old.pk).exists)
    assert fake_upstream.connections == []  # nothing was opened upstream


def test_the_replay_keeps_the_latest_lines_within_the_token_budget(alice, settings):
    old = past_conversation(alice)
    settings.REALTIME_RESUME_CONTEXT_TOKENS = 10  # 40 characters: the last two lines fit
    frames = context_frames(old, id_prefix="ctx_x_")
    assert [frame.count('"text"') for frame in frames] == [1, 1]
    assert "I like sourdough bread." in frames[0] and "A fine choice." in frames[1]
    assert '"id":"ctx_x_0"' in frames[0]
    settings.REALTIME_RESUME_CONTEXT_TOKENS = 0
    assert context_frames(old, id_prefix="ctx_x_") == []


async def test_the_offline_assistant_remembers_the_continued_conversation(
    alice, alice_token, connect, settings
):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    old = await db(past_conversation, alice)
    _, client = await connect(token=alice_token, path=f"/v1/realtime?resume={old.pk}")
    await client.receive_until("session.updated")
    await client.send(typed("What is my name?"))
    await client.send({"type": "response.create"})
    done = (await client.receive_until("response.done", timeout=30))[-1]
    [content] = done["response"]["output"][0]["content"]
    assert content["transcript"] == "Your name is Ada."  # the rule-based recall, from the replay


def test_history_offers_to_continue_and_links_the_two(client, alice):
    old = past_conversation(alice)
    new = conversation_start(
        user=alice, backend="openai", model="gpt-realtime", voice="", resumed_from=old
    )
    conversation_end(conversation_id=new.pk, reason=EndReason.CLIENT_CLOSED)
    client.force_login(alice)
    page = client.get(reverse("conversation_detail", args=[old.pk])).content.decode()
    assert f'href="/?resume={old.pk}"' in page
    page = client.get(reverse("conversation_detail", args=[new.pk])).content.decode()
    assert 'data-testid="resumed-from"' in page
    assert reverse("conversation_detail", args=[old.pk]) in page
    chat = client.get(reverse("chat"), {"resume": old.pk})
    assert chat.context["chat_config"]["resume"]["id"] == old.pk


def test_the_chat_page_ignores_a_conversation_that_is_not_yours(client, alice, django_user_model):
    bob = django_user_model.objects.create_user("bob", password="bob-password-123")
    bobs = past_conversation(bob)
    client.force_login(alice)
    chat = client.get(reverse("chat"), {"resume": bobs.pk})
    assert "resume" not in chat.context["chat_config"]


@pytest.mark.browser
@pytest.mark.slow
def test_continue_from_history_in_the_browser(local_chat_server, launch_browser, alice):
    """History's "Continue" opens the chat page, which says so, and the assistant remembers."""
    from voicechat.tests.test_chat_page_browser import wait_for_entry

    old = past_conversation(alice)
    page = browser.signed_in_page(launch_browser(), local_chat_server, alice)
    page.goto(f"{local_chat_server.url}/history/{old.pk}/")
    page.get_by_test_id("continue").click()
    page.wait_for_url(f"**/?resume={old.pk}")
    page.wait_for_load_state()  # the page's modules have run: the button is live
    page.get_by_test_id("connect").click()
    page.wait_for_selector(".turn-notice:has-text('Continuing your conversation of')")
    page.get_by_test_id("text-input").fill("What is my name?")
    page.get_by_test_id("send").click()
    wait_for_entry(page, "assistant", "done", "Ada")
    page.get_by_test_id("disconnect").click()
    new = Conversation.objects.exclude(pk=old.pk).get(user=alice)
    assert new.resumed_from_id == old.pk
