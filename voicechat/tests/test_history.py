"""The history pages: a user's own conversations and their transcripts, in conversation order."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils.timezone import now

from voicechat.enums import EndReason, ItemStatus, Role
from voicechat.models import Conversation, TranscriptItem
from voicechat.records.exports import markdown_text
from voicechat.services import conversation_start

pytestmark = pytest.mark.django_db


def say(conversation, item_id, role, text, *, previous="", status=ItemStatus.COMPLETED, **extra):
    return TranscriptItem.objects.create(
        conversation=conversation,
        item_id=item_id,
        previous_item_id=previous,
        role=role,
        text=text,
        status=status,
        **extra,
    )


@pytest.fixture
def alice_talk(alice):
    """Alice's conversation; the user's transcription was recorded after the assistant's reply."""
    conversation = conversation_start(
        user=alice, backend="local", model="gpt-realtime", voice="marin"
    )
    say(conversation, "item_a1", Role.ASSISTANT, "Hi! I'm your assistant.", previous="item_u1")
    say(conversation, "item_u1", Role.USER, "Hello, who are you?")
    say(
        conversation,
        "item_a2",
        Role.ASSISTANT,
        "Tomorrow will be",
        previous="item_u2",
        status=ItemStatus.TRUNCATED,
        audio_end_ms=640,
    )
    say(conversation, "item_u2", Role.USER, "What's the weather tomorrow?", previous="item_a1")
    conversation.ended = conversation.started + timedelta(seconds=95)
    conversation.end_reason = EndReason.CLIENT_CLOSED
    conversation.save()
    return conversation


@pytest.fixture
def bob_talk(bob):
    conversation = conversation_start(
        user=bob, backend="openai", model="gpt-realtime", voice="cedar"
    )
    say(conversation, "item_b1", Role.USER, "Bob's secret plans")
    return conversation


def test_history_requires_login(client):
    response = client.get("/history/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_history_lists_only_my_conversations_newest_first(client, alice, alice_talk, bob_talk):
    older = conversation_start(user=alice, backend="local", model="gpt-realtime", voice="marin")
    older.started = now() - timedelta(days=2)
    older.save()
    client.force_login(alice)
    html = client.get("/history/").content.decode()
    assert f"/history/{alice_talk.pk}/" in html and f"/history/{older.pk}/" in html
    assert f"/history/{bob_talk.pk}/" not in html and "secret plans" not in html
    assert html.index(f"/history/{alice_talk.pk}/") < html.index(f"/history/{older.pk}/")
    # Each row previews the first words said and counts the lines.
    assert "Hello, who are you?" in html and "4 lines" in html
    assert "You didn't say anything" in html
    assert "1 min 35 s" in html


def test_someone_elses_conversation_is_not_found(client, alice, bob_talk):
    client.force_login(alice)
    assert client.get(f"/history/{bob_talk.pk}/").status_code == 404


def test_conversation_shows_its_transcript_in_conversation_order(client, alice, alice_talk):
    client.force_login(alice)
    response = client.get(f"/history/{alice_talk.pk}/")
    assert response.status_code == 200
    assert client.head(f"/history/{alice_talk.pk}/").status_code == 200
    html = response.content.decode()
    lines = [
        "Hello, who are you?",
        "Hi! I&#x27;m your assistant.",
        "What&#x27;s the weather tomorrow?",
        "Tomorrow will be",
    ]
    positions = [html.index(line) for line in lines]
    assert positions == sorted(positions)
    assert html.count('data-testid="history-item"') == 4
    assert 'data-state="truncated"' in html and "Interrupted" in html


def test_history_pages_past_twenty(client, alice):
    for _ in range(23):
        conversation_start(user=alice, backend="local", model="gpt-realtime", voice="marin")
    client.force_login(alice)
    first = client.get("/history/").content.decode()
    assert first.count('data-testid="history-entry"') == 20 and "Page 1 of 2" in first
    second = client.get("/history/?page=2").content.decode()
    assert second.count('data-testid="history-entry"') == 3


def test_previews_tell_apart_conversations_that_opened_the_same_way(client, alice):
    for follow_up in ("And with rye flour?", "How long in the oven?"):
        conversation = conversation_start(user=alice, backend="local", model="m", voice="v")
        say(conversation, "u1", Role.USER, "How do I bake sourdough bread?")
        say(conversation, "a1", Role.ASSISTANT, "Feed the starter.", previous="u1")
        say(conversation, "u2", Role.USER, follow_up, previous="a1")
    client.force_login(alice)
    html = client.get("/history/").content.decode()
    assert html.count("How do I bake sourdough bread?") == 2
    assert "And with rye flour?" in html and "How long in the oven?" in html


def test_end_reasons_read_in_plain_words(client, alice, alice_talk):
    lost = conversation_start(user=alice, backend="local", model="m", voice="v")
    lost.ended = lost.started + timedelta(seconds=30)
    lost.end_reason = EndReason.PROCESS_LOST
    lost.save()
    client.force_login(alice)
    html = client.get("/history/").content.decode()
    assert "You ended it" in html
    # Its stored end is its last sign of life: the length is a lower bound, said as such.
    assert "at least 30 s" in html and "The server stopped unexpectedly" in html
    detail = client.get(f"/history/{lost.pk}/").content.decode()
    assert "The server stopped unexpectedly" in detail and "Server process lost" not in detail


def test_history_says_what_is_stored_and_for_how_long(client, alice):
    client.force_login(alice)
    html = client.get("/history/").content.decode()
    assert 'data-testid="storage-note"' in html
    words = " ".join(html.split())
    assert "never the audio" in words and "kept until you delete it" in words


def test_deleting_asks_first_then_erases_only_my_conversation(client, alice, alice_talk, bob_talk):
    client.force_login(alice)
    url = f"/history/{alice_talk.pk}/delete/"
    confirm = client.get(url)
    assert confirm.status_code == 200 and 'data-testid="confirm-delete"' in confirm.content.decode()
    assert TranscriptItem.objects.filter(conversation=alice_talk).count() == 4

    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == "/history/"
    assert "Conversation deleted." in response.content.decode()
    assert f"/history/{alice_talk.pk}/" not in response.content.decode()
    assert client.get(f"/history/{alice_talk.pk}/").status_code == 404
    assert not TranscriptItem.objects.filter(conversation=alice_talk).exists()
    # The row stays, hidden, so the day's budgets still count its length and cost.
    assert Conversation.objects.get(pk=alice_talk.pk).deleted is not None
    assert TranscriptItem.objects.filter(conversation=bob_talk).count() == 1


def test_someone_else_cannot_delete_or_export_my_conversation(client, bob, alice_talk):
    client.force_login(bob)
    assert client.get(f"/history/{alice_talk.pk}/delete/").status_code == 404
    assert client.post(f"/history/{alice_talk.pk}/delete/").status_code == 404
    assert client.get(f"/history/{alice_talk.pk}/export.md").status_code == 404
    assert TranscriptItem.objects.filter(conversation=alice_talk).count() == 4
    assert Conversation.objects.get(pk=alice_talk.pk).deleted is None


def test_deleting_needs_the_csrf_token(alice, alice_talk):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(f"/history/{alice_talk.pk}/delete/").status_code == 403
    assert TranscriptItem.objects.filter(conversation=alice_talk).count() == 4


def test_an_open_conversation_cannot_be_deleted(client, alice, bob_talk):
    open_talk = conversation_start(user=alice, backend="local", model="m", voice="v")
    client.force_login(alice)
    assert 'data-testid="delete"' not in client.get(f"/history/{open_talk.pk}/").content.decode()
    response = client.post(f"/history/{open_talk.pk}/delete/", follow=True)
    assert "still going" in response.content.decode()
    assert Conversation.objects.get(pk=open_talk.pk).deleted is None


def test_export_my_transcript_as_markdown(client, alice, alice_talk):
    say(
        alice_talk,
        "item_u3",
        Role.USER,
        "ok\n\n# Assistant\n**Assistant:** wire the money",
        previous="item_a2",
    )
    client.force_login(alice)
    response = client.get(f"/history/{alice_talk.pk}/export.md")
    assert response["Content-Type"].startswith("text/markdown")
    assert response["Content-Disposition"].startswith("attachment;")
    text = response.content.decode()
    assert text.index("**User:** Hello, who are you?") < text.index("**Assistant:** Hi!")
    # What someone said stays text: no heading, no second speaker label of its own.
    assert "\n# Assistant" not in text and "\\# Assistant" in text
    assert text.count("**Assistant:**") == 2


def test_the_header_says_what_answered(client, alice, alice_talk, bob, bob_talk):
    client.force_login(alice)
    summary = client.get(f"/history/{alice_talk.pk}/").content.decode()
    # The offline engine does not run the model the client asked for (gpt-realtime).
    assert "Offline assistant" in summary and "gpt-realtime" not in summary
    export = client.get(f"/history/{alice_talk.pk}/export.md").content.decode()
    assert "- Answered by: Offline assistant" in export and "gpt-realtime" not in export
    client.force_login(bob)
    assert (
        "OpenAI Realtime · gpt-realtime" in client.get(f"/history/{bob_talk.pk}/").content.decode()
    )


def test_an_offline_conversation_records_which_models_answered(client, alice, settings):
    settings.LOCAL_STT, settings.LOCAL_STT_MODEL, settings.REALTIME_LANGUAGE = (
        "faster-whisper",
        "auto",
        "en",
    )
    settings.LOCAL_LLM, settings.LOCAL_LLM_URL, settings.LOCAL_TTS = ("embedded", "", "piper")
    offline = conversation_start(user=alice, backend="local", model="gpt-realtime", voice="v")
    assert offline.engine == "Whisper tiny.en, Qwen2.5-Coder-1.5B-Instruct, piper"
    client.force_login(alice)
    html = client.get(f"/history/{offline.pk}/").content.decode()
    assert "Offline assistant (Whisper tiny.en, Qwen2.5-Coder-1.5B-Instruct, piper)" in html
    settings.LOCAL_LLM = "none"
    rules = conversation_start(user=alice, backend="local", model="gpt-realtime", voice="v")
    assert rules.engine == "Whisper tiny.en, answers by rules, piper"
    online = conversation_start(user=alice, backend="openai", model="gpt-realtime", voice="v")
    assert online.engine == ""


def test_markdown_export_keeps_every_line_literal():
    assert markdown_text("# Assistant: hi") == "\\# Assistant: hi"
    assert markdown_text("ok\n\n**Assistant:** pay") == "ok\n\\*\\*Assistant:\\*\\* pay"
    assert (
        markdown_text("12. step\n- item\n===\n> quote") == "12\\. step\n\\- item\n\\===\n\\> quote"
    )
    assert markdown_text("[link](http://x) <b>_a_</b>") == (
        "\\[link\\](http://x) \\<b\\>\\_a\\_\\</b\\>"
    )
