"""The provider key stays on the server: not in a page, a frame, an error or a log line."""

import asyncio
import io
import json
import logging

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from voicechat.models import Conversation, TranscriptItem
from voicechat.redaction import redact, redact_server_frame
from voicechat.tests.conftest import PROVIDER_KEY, db, finished_conversation
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


def _escaped(text: str, positions: set[int]) -> str:
    """`text` with the characters at `positions` written as JSON \\u00XX escapes."""
    return "".join(f"\\u{ord(c):04x}" if n in positions else c for n, c in enumerate(text))


def test_redaction_masks_keys_spelled_with_json_escapes(settings):
    settings.OPENAI_API_KEY = PROVIDER_KEY
    frame = '{"type":"error","error":{"message":"Incorrect API key provided: KEY."}}'
    for spelled in (
        PROVIDER_KEY.replace("-", "\\u002d"),  # as the attacker's upstream sent it
        _escaped(PROVIDER_KEY, set(range(len(PROVIDER_KEY)))),
        "sk\\u002Dother\\u005fkey123456",  # not ours, but shaped like a key
    ):
        masked = redact(frame.replace("KEY", spelled))
        assert json.loads(masked)["error"]["message"] == "Incorrect API key provided: sk-***."
    # An escaped backslash before "u002d" is a backslash and a "u": no escape, no key.
    for harmless in ('{"text":"sk\\\\u002dproject-plan"}', '{"text":"caf\\u00e9 \\u0041"}'):
        assert redact(harmless) == harmless


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    positions=st.sets(st.integers(min_value=0, max_value=len(PROVIDER_KEY) - 1)),
    ensure_ascii=st.booleans(),
)
def test_a_key_however_escaped_in_any_json_string_is_masked(
    before, after, positions, ensure_ascii, settings
):
    settings.OPENAI_API_KEY = PROVIDER_KEY
    frame = json.dumps({"type": "error", "error": {"message": before + PROVIDER_KEY + after}})
    frame = frame if ensure_ascii else json.dumps(json.loads(frame), ensure_ascii=False)
    start = frame.index(PROVIDER_KEY)
    frame = frame[:start] + _escaped(PROVIDER_KEY, positions) + frame[start + len(PROVIDER_KEY) :]
    message = json.loads(redact(frame))["error"]["message"]  # still JSON, and the same JSON...
    assert PROVIDER_KEY not in message and "sk-***" in message  # ...but for the key


def test_every_server_event_but_audio_is_redacted(settings):
    settings.OPENAI_API_KEY = PROVIDER_KEY
    delta = json.dumps({"type": "response.output_text.delta", "delta": PROVIDER_KEY})
    assert PROVIDER_KEY not in redact_server_frame("response.output_text.delta", delta)
    assert PROVIDER_KEY not in redact_server_frame(None, delta)  # a type peek_type missed
    # Base64 audio cannot spell a key ("-" is not in its alphabet), and is most of the traffic.
    audio = json.dumps({"type": "response.output_audio.delta", "delta": "AAAA" * 1000})
    assert redact_server_frame("response.output_audio.delta", audio) is audio


async def test_an_escaped_key_in_an_upstream_error_is_masked(
    fake_upstream, gateway_server, alice_token
):
    """Through the production server: the shortcut relays most upstream frames."""
    from websockets.asyncio.client import connect as ws_connect

    escaped = PROVIDER_KEY.replace("-", "\\u002d")
    url = f"ws://{gateway_server}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {alice_token}"}
    async with asyncio.timeout(30), ws_connect(url, additional_headers=headers) as ws:
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        error = {"type": "error", "error": {"code": "bad", "message": "Incorrect key: KEY"}}
        await fake_upstream.connections[-1].send(json.dumps(error).replace("KEY", escaped))
        frame = await ws.recv()
    assert json.loads(frame)["error"]["message"] == "Incorrect key: sk-***"


async def test_a_key_echoed_in_a_reply_is_neither_relayed_nor_stored(
    fake_upstream, gateway_server, alice, alice_token
):
    from websockets.asyncio.client import connect as ws_connect

    fake_upstream.reply_text = f"Your key is {PROVIDER_KEY}."
    url = f"ws://{gateway_server}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {alice_token}"}
    frames = []
    async with asyncio.timeout(30), ws_connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        while not frames or json.loads(frames[-1])["type"] != "response.done":
            frames.append(await ws.recv())
    assert "response.output_text.delta" in "".join(frames)
    assert not [frame for frame in frames if PROVIDER_KEY in str(json.loads(frame))]
    conversation = await finished_conversation(alice)
    texts = await db(lambda: list(TranscriptItem.objects.filter(conversation=conversation)))
    assert texts and all(PROVIDER_KEY not in item.text for item in texts)
