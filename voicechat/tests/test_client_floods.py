"""Floods from an authenticated client against the production server: its memory stays bounded.

A real server process (uvicorn with the gateway's protocol) and a real socket on loopback; the
server's resident memory is read from /proc. Before these limits (issue 13), 4.5 MB sent as
1-byte continuation fragments grew the server by 242 MB, and a client that never read and
flooded pings grew it by 110 MB in 10 s.
"""

import asyncio
import base64
import os
import socket
import time

import pytest
from websockets.frames import Frame, Opcode

from voicechat.transport.frames import OP_CLOSE, FrameReader, parse_close

pytestmark = pytest.mark.django_db(transaction=True)

# Growth of the server's resident memory the floods may cause (it was hundreds of MB).
MAX_GROWTH = 16 * 1024 * 1024
FLOOD_SECONDS = 30


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RawClient:
    """A gateway socket at the frame level, for what WebSocket libraries never send.

    Blocking: the test runs each call in a thread, so the fake upstream (in the test's event
    loop) goes on answering the server.
    """

    def __init__(self, address: str, token: str, *, receive_buffer: int = 0) -> None:
        host, port = address.split(":")
        self.sock = socket.socket()
        if receive_buffer:  # before connecting, so the window stays this small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n"
            f"Host: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        self.received = bytearray()
        self.read_until(b"\r\n\r\n")
        head, _, rest = bytes(self.received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.received[:] = rest

    def read_until(self, marker: bytes) -> None:
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {marker!r}"
            self.received += chunk

    def flood(self, frames: bytes, *, up_to_bytes: int) -> int:
        """Send `frames` again and again until the server stops taking them; bytes sent."""
        sent, deadline = 0, time.monotonic() + FLOOD_SECONDS
        self.sock.settimeout(2)  # the server stopped reading for that long: it is done
        try:
            while sent < up_to_bytes and time.monotonic() < deadline:
                self.sock.sendall(frames)
                sent += len(frames)
        except OSError:  # timed out, or reset by a server that hung up
            pass
        return sent

    def close_code(self) -> int | None:
        """Read what the server sent until it hung up; the code of its close frame, if any."""
        deadline = time.monotonic() + 10
        self.sock.settimeout(2)
        try:
            while time.monotonic() < deadline and (chunk := self.sock.recv(1 << 20)):
                self.received += chunk
        except OSError:  # Linux hands out what arrived before a reset first
            pass
        self.sock.close()
        for opcode, payload in FrameReader(masked=False, max_size=1 << 30).feed(self.received):
            if opcode == OP_CLOSE:
                return parse_close(payload)[0]
        return None


async def open_conversation(server, token: str, **options) -> RawClient:
    client = await asyncio.to_thread(RawClient, server.address, token, **options)
    await asyncio.to_thread(client.read_until, b"session.updated")  # the upstream is open
    return client


def masked(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


@pytest.mark.parametrize("fragment_size", [1, 4096], ids=["1-byte", "4-KiB"])
async def test_a_message_in_fragments_is_cut_off_and_memory_stays_bounded(
    fake_upstream, start_server, alice_token, fragment_size
):
    server = await start_server(upstream_url=fake_upstream.url)
    client = await open_conversation(server, alice_token)
    before = resident_bytes(server.process.pid)
    fragment = masked(Opcode.CONT, b"x" * fragment_size, fin=False)
    batch = fragment * max(1, 65536 // len(fragment))
    payload = 4_500_000 * len(fragment) // fragment_size  # 4.5 MB of message on the wire
    await asyncio.to_thread(client.sock.sendall, masked(Opcode.TEXT, b"{", fin=False))
    await asyncio.to_thread(client.flood, batch, up_to_bytes=payload)
    grown = resident_bytes(server.process.pid) - before
    assert await asyncio.to_thread(client.close_code) == 1009
    assert grown < MAX_GROWTH, f"{grown / 2**20:.0f} MiB"


async def test_pings_from_a_client_that_never_reads_leave_memory_bounded(
    fake_upstream, start_server, alice_token
):
    server = await start_server(upstream_url=fake_upstream.url)
    # A small window: the server's pongs back up after a few kB instead of a few MB.
    client = await open_conversation(server, alice_token, receive_buffer=4096)
    before = resident_bytes(server.process.pid)
    pings = masked(Opcode.PING, b"p" * 125) * 500
    await asyncio.to_thread(client.flood, pings, up_to_bytes=100_000_000)
    grown = resident_bytes(server.process.pid) - before
    assert await asyncio.to_thread(client.close_code) == 1008
    assert grown < MAX_GROWTH, f"{grown / 2**20:.0f} MiB"
    assert "pings sent while not reading" in server.log()
