"""Cookie sockets (the gateway and /ws/monitor) come only from this site's own origin.

An origin is a scheme, a host and a port: a page on another port or scheme of the same host is
another site, and the browser sends it our cookies all the same (cross-site WebSocket
hijacking). The check is Django's CSRF origin check, so a socket and a form post agree.
"""

import pytest
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from voicechat.tests.conftest import db, free_port, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

PATHS = ["/v1/realtime?model=gpt-realtime", "/ws/monitor"]


async def handshake(path: str, *, cookie: str, origin: str, scheme: str = "ws", host: str) -> bool:
    """Whether the application accepts a cookie socket with these Host, Origin and scheme."""
    from config.asgi import application

    headers = [(b"host", host.encode()), (b"cookie", cookie.encode()), (b"origin", origin.encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    # As an ASGI server sets them: wss when the browser's socket came over TLS.
    communicator.scope.update(scheme=scheme, client=("127.0.0.1", 50000))
    try:
        connected, _ = await communicator.connect(timeout=5)
        if connected:  # the first message (session.created, the monitor's snapshot) arrives
            assert await communicator.receive_from(10)
        return connected
    finally:
        await communicator.disconnect()


@pytest.fixture
async def staff_cookie(staff_user) -> str:
    """Staff may open both the gateway and the monitor, so one cookie tests both."""
    return await db(session_cookie, staff_user)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another port of the same host
        "https://127.0.0.1:8000",  # another scheme
        "http://127.0.0.1",  # the default port is another port
        "http://localhost:8000",  # an allowed host, but not the one the page was served from
    ],
)
async def test_another_port_or_scheme_is_another_origin(fake_upstream, staff_cookie, path, origin):
    assert not await handshake(path, cookie=staff_cookie, origin=origin, host="127.0.0.1:8000")
    assert fake_upstream.request_headers == []


@pytest.mark.parametrize("path", PATHS)
async def test_the_pages_own_origin_is_accepted(fake_upstream, staff_cookie, path):
    assert await handshake(
        path, cookie=staff_cookie, origin="http://127.0.0.1:8000", host="127.0.0.1:8000"
    )


@pytest.mark.parametrize("path", PATHS)
async def test_over_tls_the_origin_must_be_https(fake_upstream, staff_cookie, path):
    host = "127.0.0.1:8443"
    assert await handshake(
        path, cookie=staff_cookie, origin=f"https://{host}", scheme="wss", host=host
    )
    assert not await handshake(
        path, cookie=staff_cookie, origin=f"http://{host}", scheme="wss", host=host
    )


@pytest.mark.parametrize("path", PATHS)
async def test_a_host_we_do_not_serve_is_refused_even_when_origin_matches(
    fake_upstream, staff_cookie, path
):
    # DNS rebinding: evil.example resolving to us sends a matching Host and Origin.
    assert not await handshake(
        path, cookie=staff_cookie, origin="http://evil.example", host="evil.example"
    )


@pytest.mark.parametrize("path", PATHS)
async def test_csrf_trusted_origins_are_accepted(fake_upstream, staff_cookie, settings, path):
    # Behind a TLS proxy whose X-Forwarded-Proto is not trusted, the socket looks like plain ws:
    # the deployer lists the public origin, as Django's own CSRF check asks for form posts.
    settings.CSRF_TRUSTED_ORIGINS = ["https://voice.example.com"]
    settings.ALLOWED_HOSTS = ["voice.example.com"]
    host = "voice.example.com"
    assert await handshake(path, cookie=staff_cookie, origin=f"https://{host}", host=host)
    assert not await handshake(path, cookie=staff_cookie, origin=f"https://{host}:444", host=host)


@pytest.mark.parametrize("path", PATHS)
async def test_through_the_production_server(fake_upstream, staff_cookie, start_server, path):
    """uvicorn with the gateway's protocol: a page on another port is refused with 403."""
    server = await start_server(upstream_url=fake_upstream.url)
    url = f"ws://{server.address}{path}"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(
            url,
            origin=f"http://127.0.0.1:{free_port()}",
            additional_headers={"Cookie": staff_cookie},
            open_timeout=10,
        ):
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(
        url,
        origin=f"http://{server.address}",
        additional_headers={"Cookie": staff_cookie},
        open_timeout=10,
    ) as ws:
        assert await ws.recv(decode=True)  # session.created, or the monitor's snapshot
