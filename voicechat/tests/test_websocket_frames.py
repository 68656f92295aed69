"""The flat frame codec both WebSocket ends of the relay use, checked against `websockets`."""

import struct
import tracemalloc

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from voicechat.transport.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    MaskKeys,
    build_frame,
    close_payload,
    parse_close,
)


def reference_frame(opcode: Opcode, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """A frame as the `websockets` library writes it."""
    return Frame(opcode, payload, fin=fin).serialize(mask=mask)


def reference_parse(data: bytes, *, mask: bool) -> Frame:
    """One frame read back by the `websockets` library."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
        while True:
            parser.send(None)
    except StopIteration as done:
        return done.value


def feed_in_pieces(reader: FrameReader, data: bytes, pieces: list[int]):
    out, start = [], 0
    for size in pieces:
        out += reader.feed(data[start : start + size])
        start += size
    return out + reader.feed(data[start:])


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
@pytest.mark.parametrize("mask", [True, False])
def test_our_frames_read_back_by_websockets(length, mask):
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    frame = reference_parse(build_frame(OP_BINARY, payload, mask=mask), mask=mask)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, payload)


@given(
    text=st.text(max_size=3000),
    masked=st.booleans(),
    pieces=st.lists(st.integers(min_value=0, max_value=700), max_size=12),
)
def test_websockets_frames_read_by_ours_in_any_pieces(text, masked, pieces):
    data = reference_frame(Opcode.TEXT, text.encode(), mask=masked)
    data += reference_frame(Opcode.PING, b"hi", mask=masked)
    reader = FrameReader(masked=masked, max_size=1 << 20)
    assert feed_in_pieces(reader, data, pieces) == [(OP_TEXT, text), (OP_PING, b"hi")]


def test_fragments_are_assembled_around_a_control_frame():
    data = (
        reference_frame(Opcode.TEXT, b"hello ", mask=True, fin=False)
        + reference_frame(Opcode.PING, b"", mask=True)
        + reference_frame(Opcode.CONT, "w\u00f6r".encode(), mask=True, fin=False)
        + reference_frame(Opcode.CONT, b"ld", mask=True)
        + reference_frame(Opcode.BINARY, b"\x00\xff", mask=True)
    )
    reader = FrameReader(masked=True, max_size=100)
    assert reader.feed(data) == [
        (OP_PING, b""),
        (OP_TEXT, "hello w\u00f6rld"),
        (OP_BINARY, b"\x00\xff"),
    ]


def test_a_character_split_across_fragments_is_decoded_whole():
    euro = "\u20ac".encode()  # three bytes
    data = reference_frame(Opcode.TEXT, euro[:1], mask=False, fin=False)
    data += reference_frame(Opcode.CONT, euro[1:], mask=False)
    assert FrameReader(masked=False, max_size=10).feed(data) == [(OP_TEXT, "\u20ac")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1\x80" + b"\0" * 4, CLOSE_PROTOCOL_ERROR),  # RSV1: compression nobody agreed to
        (b"\x81\x05hello", CLOSE_PROTOCOL_ERROR),  # unmasked, but a client must mask
        (b"\x83\x80" + b"\0" * 4, CLOSE_PROTOCOL_ERROR),  # opcode 3 is reserved
        (b"\x80\x80" + b"\0" * 4, CLOSE_PROTOCOL_ERROR),  # continuation of nothing
        (b"\x09\x80" + b"\0" * 4, CLOSE_PROTOCOL_ERROR),  # a fragmented ping
        (b"\x89\xfe\x00\x7e" + b"\0" * 4 + b"\0" * 126, CLOSE_PROTOCOL_ERROR),  # a long ping
        (b"\x81\xff" + struct.pack("!Q", 1 << 40), CLOSE_TOO_BIG),  # refused before it arrives
        (reference_frame(Opcode.TEXT, b"\xff\xfe", mask=True), CLOSE_INVALID_DATA),
        (
            reference_frame(Opcode.TEXT, b"a", mask=True, fin=False)
            + reference_frame(Opcode.TEXT, b"b", mask=True),
            CLOSE_PROTOCOL_ERROR,  # a new message inside a fragmented one
        ),
        (
            reference_frame(Opcode.TEXT, b"x" * 150, mask=True, fin=False)
            + reference_frame(Opcode.CONT, b"x" * 150, mask=True),
            CLOSE_TOO_BIG,  # each fragment fits, the message does not
        ),
    ],
)
def test_protocol_violations_name_their_close_code(data, code):
    with pytest.raises(FrameError) as raised:
        FrameReader(masked=True, max_size=200).feed(data)
    assert raised.value.code == code


def fragments(count: int, size: int = 1) -> bytes:
    """A text message opened and then continued in `count` frames of `size` bytes, unfinished."""
    opening = reference_frame(Opcode.TEXT, b"x" * size, mask=True, fin=False)
    return opening + reference_frame(Opcode.CONT, b"x" * size, mask=True, fin=False) * count


def test_a_message_in_tiny_fragments_is_refused_as_it_outgrows_the_limit():
    reader = FrameReader(masked=True, max_size=1000)
    assert reader.feed(fragments(999)) == []  # 1,000 bytes so far: still allowed
    with pytest.raises(FrameError) as raised:
        reader.feed(reference_frame(Opcode.CONT, b"x", mask=True, fin=False))
    assert raised.value.code == CLOSE_TOO_BIG


def test_a_message_in_too_many_fragments_is_refused_even_when_they_are_empty():
    reader = FrameReader(masked=True, max_size=1000, max_fragments=50)
    assert reader.feed(fragments(49, size=0)) == []
    with pytest.raises(FrameError) as raised:
        reader.feed(reference_frame(Opcode.CONT, b"", mask=True, fin=False))
    assert raised.value.code == CLOSE_TOO_BIG


def test_fragments_cost_their_bytes_and_no_more():
    data = fragments(100_000)  # 100 kB of message in 1-byte fragments
    reader = FrameReader(masked=True, max_size=1 << 20)
    tracemalloc.start()
    try:
        reader.feed(data)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One byte each, not an object each (a list of them held 4.2 MB here).
    assert held < 400_000


def test_a_server_frame_must_not_be_masked():
    with pytest.raises(FrameError) as raised:
        FrameReader(masked=False, max_size=100).feed(reference_frame(Opcode.TEXT, b"x", mask=True))
    assert raised.value.code == CLOSE_PROTOCOL_ERROR


def test_close_payloads():
    assert parse_close(close_payload(4007, "server shutting down")) == (
        4007,
        "server shutting down",
    )
    assert parse_close(b"") == (CLOSE_NO_STATUS, "")
    assert close_payload(CLOSE_NO_STATUS) == b""  # reserved codes are never sent
    assert Close.parse(close_payload(1000, "bye")) == Close(1000, "bye")  # as websockets reads it
    with pytest.raises(FrameError):
        parse_close(b"\x03")
    with pytest.raises(FrameError) as raised:
        parse_close(b"\x03\xe8\xff")
    assert raised.value.code == CLOSE_INVALID_DATA


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_a_close_code_no_peer_may_send_is_a_protocol_error(code):
    """RFC 6455 section 7.4: answered with 1002, never echoed back (as it was)."""
    with pytest.raises(FrameError) as raised:
        parse_close(struct.pack("!H", code) + b"why")
    assert raised.value.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
def test_a_valid_close_code_is_read_as_websockets_reads_it(code):
    payload = struct.pack("!H", code) + b"why"
    assert parse_close(payload) == (code, "why")
    assert Close.parse(payload) == Close(code, "why")


@given(reason=st.text(max_size=200))
@example(reason="\u00e9" * 100)  # 2 bytes each: 123 bytes would end inside the 62nd
@example(reason="\U0001f600" * 40)  # 4 bytes each
def test_a_close_reason_is_cut_on_a_character_boundary(reason):
    payload = close_payload(1000, reason)
    assert len(payload) <= 125  # a control frame's limit
    code, read = parse_close(payload)  # valid UTF-8: a half character was a 1007
    assert code == 1000 and reason.startswith(read)
    # The longest whole-character prefix that fits.
    assert read == reason or len(reason[: len(read) + 1].encode()) > 123


def test_control_frames_come_back_in_order_with_messages():
    reader = FrameReader(masked=False, max_size=100)
    data = build_frame(OP_TEXT, b"a", mask=False) + build_frame(OP_CLOSE, b"\x03\xe8", mask=False)
    assert reader.feed(data) == [(OP_TEXT, "a"), (OP_CLOSE, b"\x03\xe8")]


def test_mask_keys_do_not_repeat():
    keys = MaskKeys()
    taken = [keys.take() for _ in range(5000)]  # across more than one batch
    assert all(len(key) == 4 for key in taken)
    assert len(set(taken)) > 4990  # 32 random bits each: a handful of collisions at most
