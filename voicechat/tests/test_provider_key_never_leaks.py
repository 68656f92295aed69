"""The provider key stays on the server: not in a page, a frame, an error or a log line."""

import io
import logging

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from openai import AsyncOpenAI

from voicechat.models import Conversation
from voicechat.redaction import redact
from voicechat.tests.conftest import PROVIDER_KEY
from voicechat.tests.fake_upstream import FakeRealtimeServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console_log():
    """The configured console handler's output, at DEBUG, for the length of a test."""
    root = logging.getLogger()
    handler = next(
        h for h in root.handlers if any(type(f).__name__ == "RedactingFilter" for f in h.filters)
    )
    stream, old_stream = io.StringIO(), handler.stream
    old_level = root.level
    handler.setStream(stream)
    root.setLevel(logging.DEBUG)
    yield stream
    handler.setStream(old_stream)
    root.setLevel(old_level)


def _plain_urls(resolver: URLResolver, prefix: str = "") -> list[str]:
    """Every URL in the project that takes no arguments."""
    urls = []
    for pattern in resolver.url_patterns:
        route = str(pattern.pattern).lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            urls += _plain_urls(pattern, prefix + route)
        elif isinstance(pattern, URLPattern) and "<" not in route and "(" not in route:
            urls.append("/" + prefix + route)
    return urls


async def test_full_conversation_leaks_no_key(
    fake_upstream, gateway_server, alice, alice_token, console_log
):
    sdk = AsyncOpenAI(
        api_key=alice_token,
        base_url=f"http://{gateway_server}/v1",
        websocket_base_url=f"ws://{gateway_server}/v1",
    )
    frames = []
    async with sdk.realtime.connect(model="gpt-realtime") as connection:
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        )
        await connection.response.create()
        async for event in connection:
            frames.append(event.to_json())
            if event.type == "response.done":
                break
        # An upstream that echoes request details in an error: the client sees it masked.
        await fake_upstream.push(
            [
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                        "event_id": None,
                        "message": f"Incorrect API key provided: {PROVIDER_KEY}. Header was 'Bearer {PROVIDER_KEY}'",
                    },
                }
            ]
        )
        async for event in connection:
            frames.append(event.to_json())
            if event.type == "error":
                assert "sk-***" in event.error.message
                break
    assert (
        fake_upstream.request_headers[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    )  # it was used
    assert not any(PROVIDER_KEY in frame for frame in frames)
    assert not any("sk-proj" in frame for frame in frames)
    assert PROVIDER_KEY not in console_log.getvalue()
    # The upstream handshake was logged at DEBUG, with the header masked by the filter.
    assert "Authorization: Bearer sk-***" in console_log.getvalue()


async def test_refused_handshake_echoing_the_key_leaks_nothing(
    settings, alice_token, connect, console_log
):
    async with FakeRealtimeServer(reject_status=401) as refusing:
        settings.OPENAI_API_KEY, settings.OPENAI_REALTIME_URL = PROVIDER_KEY, refusing.url
        settings.REALTIME_BACKEND = "openai"
        connected, client = await connect(token=alice_token)
        events, code = await client.receive_close()
    assert all(PROVIDER_KEY not in str(event) for event in events)
    assert PROVIDER_KEY not in console_log.getvalue()


def test_no_page_contains_the_key(client, django_user_model, settings, alice):
    settings.OPENAI_API_KEY = PROVIDER_KEY
    staff = django_user_model.objects.create_superuser("staff", password="staff-password-123")
    conversation = Conversation.objects.create(
        user=alice,
        backend="openai",
        model="gpt-realtime",
        end_detail=f"upstream said {redact(PROVIDER_KEY)}",
    )
    urls = _plain_urls(get_resolver()) + [
        reverse("admin:voicechat_conversation_change", args=[conversation.pk]),
        reverse("admin:voicechat_conversation_changelist"),
    ]
    for user in (None, alice, staff):
        if user is not None:
            client.force_login(user)
        for url in urls:
            response = client.get(url, follow=True)
            assert PROVIDER_KEY not in response.content.decode(errors="replace"), url


def test_redaction_masks_keys_in_text(settings):
    settings.OPENAI_API_KEY = "plain-secret-without-prefix-123"
    assert redact("key=plain-secret-without-prefix-123") == "key=sk-***"
    assert (
        redact("Incorrect API key provided: sk-proj-abc123DEF456***xyz")
        == "Incorrect API key provided: sk-***"
    )
    assert redact("nothing secret here") == "nothing secret here"
