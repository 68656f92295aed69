"""The history pages: a user's own conversations and their transcripts, in conversation order."""

from datetime import timedelta

import pytest
from django.utils.timezone import now

from voicechat.models import EndReason, ItemStatus, Role, TranscriptItem
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
    assert "(nothing was said)" in html
    assert "1 min 35 s" in html


def test_someone_elses_conversation_is_not_found(client, alice, bob_talk):
    client.force_login(alice)
    assert client.get(f"/history/{bob_talk.pk}/").status_code == 404


def test_conversation_shows_its_transcript_in_conversation_order(client, alice, alice_talk):
    client.force_login(alice)
    response = client.get(f"/history/{alice_talk.pk}/")
    assert response.status_code == 200
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
