"""POST /v1/realtime/client_secrets issues short-lived `ek_` secrets, in OpenAI's shape, that make
calls as the user they were issued to, for as long as they and their issuer's access last."""

import time

import httpx
import pytest

from voicechat.calls import ephemeral
from voicechat.models import ApiToken, Conversation
from voicechat.services import api_token_revoke
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""


async def post(address: str, path: str, credential: str | None = None, **kwargs):
    headers = kwargs.pop("headers", {})
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        return await client.post(path, headers=headers, timeout=30, **kwargs)


async def issue(address: str, token: str, **body) -> dict:
    response = await post(address, "/v1/realtime/client_secrets", token, json=body or None)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_client_secret_makes_and_hangs_up_the_users_call(
    gateway_server, alice, alice_token
):
    issued = await issue(
        gateway_server, alice_token, session={"type": "realtime", "model": "gpt-realtime"}
    )
    assert issued["value"].startswith("ek_")
    assert abs(issued["expires_at"] - (time.time() + 600)) < 5  # OpenAI's default, 10 minutes
    assert issued["session"]["model"] == "gpt-realtime"

    peer = Peer()
    try:
        response = await post(
            gateway_server,
            "/v1/realtime/calls",
            issued["value"],
            content=await peer.offer(),
            headers={"Content-Type": "application/sdp"},
        )
        assert response.status_code == 201, response.text
        await peer.accept(response.text)
        created = await peer.wait_for("session.created")
        assert created["session"]["model"] == "gpt-realtime"  # the secret's session
        hangup = await post(
            gateway_server, f"{response.headers['location']}/hangup", issued["value"]
        )
        assert hangup.status_code == 200
    finally:
        await peer.close()
    conversation = await finished_conversation(alice)
    assert conversation.auth_method == "client_secret"
    assert conversation.model == "gpt-realtime"


async def test_what_a_client_secret_does_not_get(gateway_server, alice, alice_token):
    offer_peer = Peer()
    offer = await offer_peer.offer()
    await offer_peer.close()

    async def call_with(secret: str) -> httpx.Response:
        return await post(
            gateway_server,
            "/v1/realtime/calls",
            secret,
            content=offer,
            headers={"Content-Type": "application/sdp"},
        )

    never_issued = "ek_" + "x" * 43
    assert (await call_with(never_issued)).status_code == 401
    # Expired (the cache forgets it when its lifetime ends).
    expired = (await issue(gateway_server, alice_token, expires_after={"seconds": 10}))["value"]
    from django.core.cache import cache

    await cache.adelete(ephemeral._cache_key(expired))
    assert (await call_with(expired)).status_code == 401
    # A secret issues no further secrets.
    secret = (await issue(gateway_server, alice_token))["value"]
    assert (await post(gateway_server, "/v1/realtime/client_secrets", secret)).status_code == 401
    # It ends with the token it was issued on.
    api_token = await db(ApiToken.objects.get, user=alice)
    await db(api_token_revoke, api_token=api_token)
    response = await call_with(secret)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert await db(Conversation.objects.count) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"expires_after": {"anchor": "created_at", "seconds": 5}},
        {"expires_after": {"seconds": 7201}},
        {"expires_after": {"seconds": "60"}},
        {"expires_after": {"anchor": "last_used", "seconds": 60}},
        {"session": "gpt-realtime"},
        [],
    ],
)
async def test_a_bad_request_for_a_secret_is_400(gateway_server, alice_token, body):
    response = await post(gateway_server, "/v1/realtime/client_secrets", alice_token, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"].startswith("invalid_")


async def test_secrets_need_the_callers_credentials(gateway_server, alice):
    from voicechat.tests.conftest import session_cookie

    assert (await post(gateway_server, "/v1/realtime/client_secrets")).status_code == 401
    cookie = await db(session_cookie, alice)
    response = await post(
        gateway_server,
        "/v1/realtime/client_secrets",
        headers={"Cookie": cookie, "Origin": f"http://{gateway_server}"},
    )
    assert response.status_code == 403  # a page of the site sends its CSRF token too
    response = await post(
        gateway_server,
        "/v1/realtime/client_secrets",
        headers={
            "Cookie": f"{cookie}; csrftoken={'c' * 32}",
            "X-CSRFToken": "c" * 32,
            "Origin": f"http://{gateway_server}",
        },
    )
    assert response.status_code == 200, response.text
