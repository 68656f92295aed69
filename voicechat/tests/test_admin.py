"""Conversations in Django admin: listed, searchable, read-only, exportable; staff only."""

import json

import pytest
from django.urls import reverse

from voicechat.enums import EndReason
from voicechat.models import ApiToken, Conversation, TranscriptItem, UserLimits
from voicechat.services import (
    ItemChange,
    RecorderBatch,
    TokenCounts,
    UsageChange,
    api_token_create,
    recorder_batch_write,
)
from voicechat.tests.fake_upstream import USAGE

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model):
    """A superuser who reviews conversations in admin."""
    return django_user_model.objects.create_superuser("staff", password="staff-password-123")


@pytest.fixture
def conversation(alice) -> Conversation:
    """Alice's conversation whose first transcript arrived after the assistant's answer."""
    conversation = Conversation.objects.create(
        user=alice, backend="openai", model="gpt-realtime", end_reason=EndReason.CLIENT_CLOSED
    )
    batch = RecorderBatch()
    batch.items = [
        ItemChange(
            "item_a1",
            previous_item_id="item_u1",
            role="assistant",
            text="Paris is the capital.",
            status="completed",
        ),
        ItemChange(
            "item_u1",
            previous_item_id="",
            role="user",
            text="What is the capital of France?",
            status="completed",
        ),
        ItemChange(
            "item_u2", previous_item_id="item_a1", role="user", text="Thanks!", status="completed"
        ),
    ]
    batch.usage = [UsageChange("resp_1", "completed", TokenCounts.from_usage(USAGE))]
    recorder_batch_write(conversation_id=conversation.pk, model="gpt-realtime", batch=batch)
    return conversation


def test_changelist_shows_turns_tokens_cost_and_searches_transcripts(
    client, staff, conversation, bob
):
    Conversation.objects.create(user=bob, backend="local", model="gpt-realtime")
    client.force_login(staff)
    url = reverse("admin:voicechat_conversation_changelist")
    page = client.get(url).content.decode()
    assert "alice" in page and "bob" in page and "1200" in page
    # Costs read as money: a fraction of a cent to four places, nothing spent as a dash.
    assert "$0.0245" in page and "0.024520" not in page
    assert '<td class="field-cost">—</td>' in page and "0.000000" not in page
    found = client.get(url, {"q": "capital of France"}).content.decode()
    assert "alice" in found and "bob" not in found


def test_detail_shows_transcript_in_conversation_order_read_only(client, staff, conversation):
    client.force_login(staff)
    page = client.get(
        reverse("admin:voicechat_conversation_change", args=[conversation.pk])
    ).content.decode()
    positions = [
        page.index(text) for text in ["What is the capital", "Paris is the capital", "Thanks!"]
    ]
    assert positions == sorted(positions)
    assert 'name="_save"' not in page
    # Each line once, in its row: not again as a caption above it ("user: What is the…").
    assert page.count("What is the capital of France?") == 1
    assert "user: What is the capital" not in page
    response = client.post(
        reverse("admin:voicechat_conversation_change", args=[conversation.pk]), {"model": "x"}
    )
    assert response.status_code == 403


def test_export_json_and_markdown(client, staff, conversation):
    client.force_login(staff)
    url = reverse("admin:voicechat_conversation_changelist")
    response = client.post(url, {"action": "export_json", "_selected_action": [conversation.pk]})
    assert response["Content-Disposition"].endswith('.json"')
    data = json.loads(response.content)
    assert [line["text"] for line in data[0]["transcript"]] == [
        "What is the capital of France?",
        "Paris is the capital.",
        "Thanks!",
    ]
    assert data[0]["cost_usd"] == "0.024520"
    response = client.post(
        url, {"action": "export_markdown", "_selected_action": [conversation.pk]}
    )
    text = response.content.decode()
    assert text.index("**User:** What is the capital") < text.index("**Assistant:** Paris")


def test_non_staff_cannot_open_admin(client, alice, conversation):
    client.force_login(alice)
    response = client.get(reverse("admin:voicechat_conversation_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_tokens_are_listed_and_revocable(client, staff, alice):
    api_token, token = api_token_create(user=alice, name="script")
    client.force_login(staff)
    url = reverse("admin:voicechat_apitoken_changelist")
    page = client.get(url).content.decode()
    assert api_token.hint in page and token not in page
    client.post(url, {"action": "revoke", "_selected_action": [api_token.pk]})
    assert ApiToken.objects.get(pk=api_token.pk).revoked is not None
    assert not ApiToken.objects.usable().exists()
    assert TranscriptItem.objects.count() == 0


def test_daily_limits_are_set_per_user_on_the_user_page(client, staff, alice):
    client.force_login(staff)
    url = reverse("admin:auth_user_change", args=[alice.pk])
    page = client.get(url).content.decode()
    assert "Daily limits" in page
    form = {
        "username": "alice",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "is_active": "on",
        "limits-TOTAL_FORMS": "1",
        "limits-INITIAL_FORMS": "0",
        "limits-MIN_NUM_FORMS": "0",
        "limits-MAX_NUM_FORMS": "1",
        "limits-0-daily_minutes": "30",
        "limits-0-daily_cost_usd": "1.50",
        "limits-0-user": str(alice.pk),
    }
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    limits = UserLimits.objects.get(user=alice)
    assert (limits.daily_minutes, str(limits.daily_cost_usd)) == (30, "1.50")
