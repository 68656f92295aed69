"""POST /v1/realtime/calls refuses, in OpenAI's error shape and before anything is started, what
the WebSocket refuses: no or bad credentials, a cookie from another origin or without its CSRF
token, too many calls, a body that is no SDP offer; hangup finds only the caller's own calls."""

import secrets

import httpx
import pytest

from voicechat import lifecycle
from voicechat.enums import EndReason
from voicechat.models import Conversation
from voicechat.tests.calls_peer import Peer
from voicechat.tests.conftest import db, finished_conversation, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

CSRF = secrets.token_hex(16)  # a CSRF cookie's secret: 32 characters


@pytest.fixture(autouse=True)
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""


@pytest.fixture
async def offer():
    """A real SDP offer (a microphone and the data channel), from a peer closed afterwards."""
    peer = Peer()
    yield await peer.offer()
    await peer.close()


async def post(address: str, path: str = "/v1/realtime/calls", **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        return await client.post(path, timeout=30, **kwargs)


def sdp_headers(token: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/sdp", **extra}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def browser_headers(address: str, user, *, origin: str | None = None, csrf: bool = True) -> dict:
    """What a page of the site sends: its session cookie, and its CSRF token (cookie + header)."""
    cookie = session_cookie(user) + (f"; csrftoken={CSRF}" if csrf else "")
    headers = {"Cookie": cookie, "Origin": origin or f"http://{address}"}
    if csrf:
        headers["X-CSRFToken"] = CSRF
    return headers


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["type"]
    assert set(error) == {"message", "type", "param", "code"}


async def no_conversation() -> None:
    assert await db(Conversation.objects.count) == 0


async def test_no_credentials_or_a_wrong_token_is_401(gateway_server, offer):
    assert_error(
        await post(gateway_server, content=offer, headers=sdp_headers()), 401, "missing_api_key"
    )
    assert_error(
        await post(gateway_server, content=offer, headers=sdp_headers("not-a-token")),
        401,
        "invalid_api_key",
    )
    await no_conversation()


async def test_a_session_cookie_needs_this_sites_origin_and_its_csrf_token(
    gateway_server, alice, offer
):
    page = await db(browser_headers, gateway_server, alice, origin="https://evil.example")
    assert_error(
        await post(gateway_server, content=offer, headers={**sdp_headers(), **page}),
        403,
        "cross_origin",
    )
    no_origin = await db(browser_headers, gateway_server, alice)
    del no_origin["Origin"]
    assert_error(
        await post(gateway_server, content=offer, headers={**sdp_headers(), **no_origin}),
        403,
        "cross_origin",
    )
    no_token = await db(browser_headers, gateway_server, alice, csrf=False)
    assert_error(
        await post(gateway_server, content=offer, headers={**sdp_headers(), **no_token}),
        403,
        "csrf_failed",
    )
    await no_conversation()

    # The site's own page, with its token: the call is made, and hung up the same way.
    page = await db(browser_headers, gateway_server, alice)
    response = await post(gateway_server, content=offer, headers={**sdp_headers(), **page})
    assert response.status_code == 201, response.text
    hangup = await post(gateway_server, f"{response.headers['location']}/hangup", headers=page)
    assert hangup.status_code == 200
    conversation = await finished_conversation(alice)
    assert conversation.auth_method == "session"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", "application/sdp", 400),
        (b"hello", "application/sdp", 400),
        (b"v=0\r\nthis is not an offer\r\n", "application/sdp", 400),
        (b"\xff\xfe v=0", "application/sdp", 400),
        (b"v=0\r\n" + b"a=x\r\n" * 20000, "application/sdp", 400),
        (b"v=0\r\n" + b"a=x\r\n" * 600_000, "application/sdp", 400),
        (b"{}", "application/json", 415),
    ],
    ids=["empty", "not-sdp", "garbage-sdp", "not-utf8", "too-large", "over-django-limit", "json"],
)
async def test_a_body_that_is_no_offer_is_refused(
    gateway_server, alice_token, body, content_type, status
):
    response = await post(
        gateway_server,
        content=body,
        headers={"Authorization": f"Bearer {alice_token}", "Content-Type": content_type},
    )
    assert_error(response, status, "invalid_offer" if status == 400 else "unsupported_content_type")
    await no_conversation()


async def test_an_offer_without_audio_or_a_bad_session_part_is_refused(
    gateway_server, alice_token, offer
):
    from aiortc import RTCConfiguration, RTCPeerConnection

    channel_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel_only.createDataChannel("oai-events")
    await channel_only.setLocalDescription(await channel_only.createOffer())
    sdp = channel_only.localDescription.sdp
    await channel_only.close()
    assert "m=audio" not in sdp
    assert_error(
        await post(gateway_server, content=sdp, headers=sdp_headers(alice_token)),
        400,
        "invalid_offer",
    )
    auth = {"Authorization": f"Bearer {alice_token}"}
    for parts, code in [
        ({"session": (None, "{}")}, "missing_required_parameter"),
        ({"sdp": (None, offer), "session": (None, "[1")}, "invalid_json"),
        ({"sdp": (None, offer), "session": (None, "[]")}, "invalid_type"),
        ({"sdp": (None, offer), "session": (None, '{"model": 7}')}, "invalid_type"),
    ]:
        assert_error(await post(gateway_server, files=parts, headers=auth), 400, code)
    await no_conversation()


async def test_too_many_calls_from_an_address_is_429(gateway_server, alice_token, settings, offer):
    settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP = 1
    assert_error(
        await post(gateway_server, content=b"hello", headers=sdp_headers(alice_token)),
        400,
        "invalid_offer",
    )
    assert_error(
        await post(gateway_server, content=offer, headers=sdp_headers(alice_token)),
        429,
        "rate_limited",
    )
    await no_conversation()


async def test_the_users_limits_refuse_a_call_before_it_is_answered(
    gateway_server, alice, alice_token, settings
):
    """The conversation's own admission (as over the WebSocket) answers with an HTTP status."""
    settings.REALTIME_MAX_CONCURRENT_PER_USER = 1
    first, second = Peer(), Peer()
    try:
        response = await post(
            gateway_server, content=await first.offer(), headers=sdp_headers(alice_token)
        )
        assert response.status_code == 201
        assert_error(
            await post(
                gateway_server, content=await second.offer(), headers=sdp_headers(alice_token)
            ),
            429,
            "too_many_conversations",
        )
        assert await db(Conversation.objects.count) == 1  # the refused one was never stored
        hangup = await post(
            gateway_server,
            f"{response.headers['location']}/hangup",
            headers={"Authorization": f"Bearer {alice_token}"},
        )
        assert hangup.status_code == 200
    finally:
        await first.close()
        await second.close()

    settings.REALTIME_CONNECTS_PER_MINUTE_PER_USER = 1  # one was made this minute already
    peer = Peer()
    try:
        assert_error(
            await post(
                gateway_server, content=await peer.offer(), headers=sdp_headers(alice_token)
            ),
            429,
            "rate_limited",
        )
    finally:
        await peer.close()
    assert await db(Conversation.objects.count) == 1


async def test_a_model_the_site_does_not_offer_is_400(gateway_server, alice, alice_token, offer):
    response = await post(
        gateway_server,
        "/v1/realtime/calls?model=not-a-model",
        content=offer,
        headers=sdp_headers(alice_token),
    )
    assert_error(response, 400, "model_not_allowed")
    conversation = await finished_conversation(alice)  # stored as the WebSocket stores it
    assert conversation.end_reason == EndReason.MODEL_NOT_ALLOWED


async def test_a_draining_server_answers_503(gateway_server, alice_token, offer):
    await lifecycle.shutdown_all()
    assert_error(
        await post(gateway_server, content=offer, headers=sdp_headers(alice_token)),
        503,
        "server_shutdown",
    )
    await no_conversation()


async def test_hangup_finds_only_the_callers_own_calls(gateway_server, alice_token, bob):
    from voicechat.services import api_token_create

    bob_token = await db(lambda: api_token_create(user=bob, name="tests")[1])
    peer = Peer()
    try:
        response = await post(
            gateway_server, content=await peer.offer(), headers=sdp_headers(alice_token)
        )
        assert response.status_code == 201
        location = response.headers["location"]
        for token, path in [
            (bob_token, f"{location}/hangup"),
            (alice_token, "/v1/realtime/calls/rtc_nope/hangup"),
        ]:
            assert_error(
                await post(gateway_server, path, headers={"Authorization": f"Bearer {token}"}),
                404,
                "call_not_found",
            )
        assert_error(await post(gateway_server, f"{location}/hangup"), 401, "missing_api_key")
        async with httpx.AsyncClient() as client:
            assert (
                await client.get(f"http://{gateway_server}/v1/realtime/calls")
            ).status_code == 405
        hangup = await post(
            gateway_server, f"{location}/hangup", headers={"Authorization": f"Bearer {alice_token}"}
        )
        assert hangup.status_code == 200
    finally:
        await peer.close()


async def test_an_internal_error_is_a_500_in_openais_shape(
    gateway_server, alice_token, offer, monkeypatch
):
    from voicechat.gateway.conversation import GatewayConversation

    async def broken(self) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(GatewayConversation, "open", broken)
    response = await post(gateway_server, content=offer, headers=sdp_headers(alice_token))
    assert_error(response, 500, "server_error")
    await no_conversation()
