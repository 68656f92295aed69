"""/ws/monitor answers input it cannot read with an error message and stays open.

It used to raise on anything but a JSON text frame, which dropped the socket without a close
code (1006 under uvicorn) and left the page to guess why.
"""

import json

import pytest
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect as ws_connect

from voicechat.tests.conftest import db, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

UNREADABLE = [
    pytest.param("not json", id="words"),
    pytest.param("{", id="cut-short"),
    pytest.param("[" * 100_000, id="nested-past-the-parsers-depth"),
]
REFUSED = {"kind": "error", "message": "Send watch, unwatch or end."}


@pytest.fixture
async def monitor(fake_upstream, staff_user):
    """A staff member's monitor socket, past its snapshot."""
    from config.asgi import application

    cookie = await db(session_cookie, staff_user)
    headers = [
        (b"host", b"localhost"),
        (b"cookie", cookie.encode()),
        (b"origin", b"http://localhost"),
    ]
    communicator = WebsocketCommunicator(application, "/ws/monitor", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert json.loads(await communicator.receive_from(10))["kind"] == "snapshot"
    yield communicator
    await communicator.disconnect()


async def still_open(send, receive) -> None:
    """The socket still answers an ordinary message."""
    await send(json.dumps({"type": "watch", "conversation": 999_999}))
    assert json.loads(await receive()) == {"kind": "error", "message": "No such conversation."}


@pytest.mark.parametrize("text", UNREADABLE)
async def test_text_that_is_not_json_gets_an_error_and_the_socket_stays(monitor, text):
    await monitor.send_to(text_data=text)
    assert json.loads(await monitor.receive_from(10)) == REFUSED
    await still_open(monitor.send_to, lambda: monitor.receive_from(10))


async def test_a_binary_frame_gets_an_error_and_the_socket_stays(monitor):
    await monitor.send_to(bytes_data=b"\x00\x01")
    assert json.loads(await monitor.receive_from(10)) == REFUSED
    await still_open(monitor.send_to, lambda: monitor.receive_from(10))


async def test_through_the_production_server(fake_upstream, staff_user, start_server):
    server = await start_server(upstream_url=fake_upstream.url)
    cookie = await db(session_cookie, staff_user)
    async with ws_connect(
        f"ws://{server.address}/ws/monitor",
        origin=f"http://{server.address}",
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as ws:
        assert json.loads(await ws.recv())["kind"] == "snapshot"
        for frame in ["not json", b"\x00\x01"]:
            await ws.send(frame)
            assert json.loads(await ws.recv()) == REFUSED
        await still_open(ws.send, ws.recv)
