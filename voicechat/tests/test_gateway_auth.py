"""Who may open the gateway: a logged-in browser from our own origin, or a valid API token."""

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from voicechat.models import ApiToken, Conversation
from voicechat.services import api_token_create, api_token_revoke
from voicechat.tests.conftest import db

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice_cookie(alice, client) -> str:
    client.force_login(alice)
    return f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"


async def test_valid_token_connects(fake_upstream, alice_token, connect):
    connected, client = await connect(token=alice_token)
    assert connected
    assert (await client.receive())["type"] == "session.created"
    # The provider sees the server's key, never the user's token, and no beta header.
    headers = fake_upstream.request_headers[0]
    assert headers["Authorization"] == f"Bearer {django_settings.OPENAI_API_KEY}"
    assert "OpenAI-Beta" not in headers
    assert fake_upstream.request_paths[0] == "/v1/realtime?model=gpt-realtime"


@pytest.mark.parametrize("token", ["", "vc_wrong", "not-a-token-at-all"])
async def test_wrong_token_is_refused_before_any_upstream(
    fake_upstream, alice_token, connect, token
):
    connected, _ = await connect(token=token)
    assert not connected
    assert fake_upstream.request_headers == []
    assert await db(Conversation.objects.count) == 0


async def test_revoked_token_is_refused(fake_upstream, alice, connect):
    api_token, token = await db(api_token_create, user=alice)
    await db(api_token_revoke, api_token=api_token)
    connected, _ = await connect(token=token)
    assert not connected
    assert fake_upstream.request_headers == []


async def test_inactive_users_token_is_refused(fake_upstream, alice, alice_token, connect):
    alice.is_active = False
    await db(alice.save)
    connected, _ = await connect(token=alice_token)
    assert not connected


async def test_no_credentials_are_refused(fake_upstream, connect):
    connected, _ = await connect()
    assert not connected
    connected, _ = await connect(origin="http://127.0.0.1:8000")
    assert not connected


async def test_session_cookie_from_our_origin_connects(fake_upstream, alice_cookie, connect):
    connected, client = await connect(cookie=alice_cookie, origin="http://127.0.0.1:8000")
    assert connected
    assert (await client.receive())["type"] == "session.created"


@pytest.mark.parametrize(
    "origin", [None, "http://evil.example", "null", "http://127.0.0.1.evil.example"]
)
async def test_session_cookie_from_a_foreign_or_missing_origin_is_refused(
    fake_upstream, alice_cookie, connect, origin
):
    connected, _ = await connect(cookie=alice_cookie, origin=origin)
    assert not connected
    assert fake_upstream.request_headers == []


async def test_wrong_token_is_refused_even_with_a_valid_cookie(
    fake_upstream, alice_cookie, connect
):
    connected, _ = await connect(
        token="vc_wrong", cookie=alice_cookie, origin="http://127.0.0.1:8000"
    )
    assert not connected


def test_create_api_token_command_prints_a_token_and_stores_only_its_hash(alice, capsys):
    call_command("create_api_token", "alice", "--name", "laptop")
    token = capsys.readouterr().out.strip()
    assert token.startswith("vc_") and len(token) > 40
    stored = ApiToken.objects.get(user=alice)
    assert stored.digest == ApiToken.digest_of(token)
    assert token not in (stored.digest, stored.hint) and stored.name == "laptop"
    assert not ApiToken.objects.filter(digest=token).exists()


def test_create_api_token_command_explains_an_unknown_user():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_token", "nobody")
