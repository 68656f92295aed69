"""RFC 6455 framing for the relay's hot path: the gateway's WebSocket server protocol uses this.

Every audio frame crosses two WebSockets in the gateway: the client's (served by uvicorn, framed
here) and the upstream's (picows, voicechat/upstream/websocket.py, which takes only the close
codes and close payloads from here). The general-purpose libraries parse each frame through a
chain of generators and objects; on a relay that does little else that is most of its CPU
(docs/benchmarks.md). This module does only what the relay needs, flat: no extensions, no
compression, messages assembled from fragments, UTF-8 checked, sizes bounded. The handshakes
stay with the libraries (websockets under uvicorn, picows for the upstream).
"""

import os
import struct

from websockets.speedups import apply_mask  # C, shipped in websockets' wheels

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

_LENGTH_16 = struct.Struct("!H")
_LENGTH_64 = struct.Struct("!Q")


class FrameError(Exception):
    """The peer broke the protocol; close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MaskKeys:
    """Client masking keys, unpredictable (RFC 6455 section 5.3) without a system call each.

    os.urandom per frame was a getrandom() call on every audio frame sent upstream; one call
    per 1,024 frames gives the same randomness.
    """

    _BATCH = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._pool):
            self._pool, self._next = os.urandom(self._BATCH), 0
        key = self._pool[self._next : self._next + 4]
        self._next += 4
        return key


_mask_keys = MaskKeys()


def build_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame. Clients mask what they send (`mask=True`); servers never do."""
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = bytes((0x80 | opcode, mask_bit | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, mask_bit | 126)) + _LENGTH_16.pack(length)
    else:
        header = bytes((0x80 | opcode, mask_bit | 127)) + _LENGTH_64.pack(length)
    if not mask:
        return header + payload
    key = _mask_keys.take()
    return header + key + apply_mask(payload, key)


# A close reason fits in a control frame's 125 bytes after the 2-byte code.
_MAX_CLOSE_REASON = 123


def close_payload(code: int, reason: str = "") -> bytes:
    if code in (CLOSE_NO_STATUS, CLOSE_ABNORMAL):  # reserved: never sent on the wire
        return b""
    # Cut on a character boundary: half a character makes the whole frame invalid UTF-8 (1007).
    encoded = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore").encode()
    return _LENGTH_16.pack(code) + encoded


def _valid_close_code(code: int) -> bool:
    """True for the codes a close frame may carry (RFC 6455 section 7.4; 1012-1014 are IANA's
    later additions): 1004-1006 and 1015 are reserved, 1016-2999 unassigned, 3000-4999 the
    applications'."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame; 1005 when the peer gave no code."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    (code,) = _LENGTH_16.unpack_from(payload)
    if not _valid_close_code(code):  # else echoed back as it came (our answer repeats the code)
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None


class FrameReader:
    """Turns a byte stream into whole messages and control frames, in order.

    `feed` returns (opcode, payload) pairs: text messages as str (OP_TEXT), binary messages as
    bytes (OP_BINARY), control frames as bytes (OP_CLOSE, OP_PING, OP_PONG). It raises
    FrameError when the peer breaks the protocol; the connection is then unusable.

    `max_size` bounds a message as it is reassembled, `max_fragments` (if given) the frames
    it may come in: empty continuation frames would otherwise keep one message open forever.
    """

    def __init__(self, *, masked: bool, max_size: int, max_fragments: int | None = None) -> None:
        self._masked = masked  # a server reads masked frames, a client unmasked ones
        self._max_size = max_size
        self._max_fragments = max_fragments
        self._buffer = bytearray()
        # The fragmented message so far, in one buffer: a list of the fragments cost some 50
        # bytes of objects per 1-byte fragment (4.5 MB sent that way grew a server by 242 MB).
        self._fragments = bytearray()
        self._fragment_count = 0
        self._fragmented_opcode: int | None = None

    def feed(self, data: bytes) -> list[tuple[int, str | bytes]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, str | bytes]] = []
        available = len(buffer)
        start = 0
        while available - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            if bool(second & 0x80) != self._masked:
                wrong = "unmasked frame from a client" if self._masked else "masked server frame"
                raise FrameError(CLOSE_PROTOCOL_ERROR, wrong)
            length = second & 0x7F
            position = start + 2
            if length == 126:
                if available - position < 2:
                    break
                (length,) = _LENGTH_16.unpack_from(buffer, position)
                position += 2
            elif length == 127:
                if available - position < 8:
                    break
                (length,) = _LENGTH_64.unpack_from(buffer, position)
                position += 8
            if length > self._max_size:
                raise FrameError(CLOSE_TOO_BIG, f"frame of {length} bytes")
            key_end = position + 4 if self._masked else position
            end = key_end + length
            if end > available:
                break
            payload = bytes(buffer[key_end:end])
            if self._masked:
                payload = apply_mask(payload, bytes(buffer[position:key_end]))
            start = end
            message = self._frame(first & 0x80, first & 0x0F, payload)
            if message is not None:
                out.append(message)
        if start:
            del buffer[:start]
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes):
        if opcode in _CONTROL_OPCODES:
            if not fin or len(payload) > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "fragmented or long control frame")
            return opcode, payload
        if opcode in _DATA_OPCODES:
            if self._fragmented_opcode is not None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return opcode, self._message(opcode, payload)
            self._fragmented_opcode = opcode
            self._fragments, self._fragment_count = bytearray(payload), 1
            return None
        if opcode == OP_CONTINUATION:
            if self._fragmented_opcode is None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            if len(self._fragments) + len(payload) > self._max_size:
                raise FrameError(CLOSE_TOO_BIG, f"message over {self._max_size} bytes")
            self._fragment_count += 1
            if self._max_fragments is not None and self._fragment_count > self._max_fragments:
                raise FrameError(CLOSE_TOO_BIG, f"message in over {self._max_fragments} frames")
            self._fragments += payload
            if not fin:
                return None
            opcode, self._fragmented_opcode = self._fragmented_opcode, None
            whole, self._fragments = bytes(self._fragments), bytearray()
            return opcode, self._message(opcode, whole)
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")

    @staticmethod
    def _message(opcode: int, payload: bytes) -> str | bytes:
        if opcode == OP_BINARY:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            raise FrameError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
