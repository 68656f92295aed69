"""PCM16 helpers for the local engine: streaming resampling (soxr) and G.711 conversion."""

import numpy as np
import soxr

# The rate of the protocol's `audio/pcm` format (PCM16 LE mono).
PCM_RATE = 24000


class Resampler:
    """Streaming PCM16 mono resampler that keeps filter state between chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # soxr's streaming mode keeps its filter history, so chunk borders leave no clicks;
        # np.interp would alias and audioop is gone in Python 3.13.
        self._stream = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "int16")
        )
        # A chunk may end in the middle of a sample; keep the odd byte for the next one.
        self._odd = b""

    def process(self, pcm16: bytes) -> bytes:
        """Resample one chunk; output may lag input by the filter delay until flush()."""
        data = self._odd + pcm16
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        if self._stream is None:
            return data[:cut]
        if cut == 0:
            return b""
        samples = np.frombuffer(data[:cut], dtype="<i2")
        return self._stream.resample_chunk(samples).astype("<i2", copy=False).tobytes()

    def flush(self) -> bytes:
        """Return the samples still held in the filter; the resampler is then spent."""
        self._odd = b""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return tail.astype("<i2", copy=False).tobytes()


def resample_pcm16(pcm16: bytes, in_rate: float, out_rate: float) -> bytes:
    """Resample a whole PCM16 mono clip in one call."""
    if in_rate == out_rate or not pcm16:
        return pcm16
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % 2], dtype="<i2")
    return soxr.resample(samples, in_rate, out_rate).astype("<i2", copy=False).tobytes()


def pcm16_duration_ms(pcm16: bytes, rate: int) -> float:
    """Duration in milliseconds of PCM16 mono bytes at the given rate."""
    return len(pcm16) // 2 * 1000 / rate


# --- G.711 (audio/pcmu, audio/pcma) ---------------------------------------------------------
# Lookup tables built once from the CCITT reference code (Sun's g711.c, which audioop also
# followed), so results match what other telephony software produces bit for bit.

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_SEG_UEND, mag, side="left")
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    return (np.where(seg >= 8, 0x7F, uval) ^ mask).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0xF) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype("<i2")


def _alaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0xF
    aval = (seg << 4) | quant
    return (np.where(seg >= 8, 0x7F, aval) ^ mask).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0xF) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype("<i2")


_ULAW_ENCODE = _ulaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()


def _encode(pcm16: bytes, table: np.ndarray) -> bytes:
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % 2], dtype="<i2")
    return table[samples.astype(np.int32) + 32768].tobytes()


def pcm16_to_ulaw(pcm16: bytes) -> bytes:
    """Encode PCM16 LE to G.711 mu-law, one byte per sample."""
    return _encode(pcm16, _ULAW_ENCODE)


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode G.711 mu-law to PCM16 LE."""
    return _ULAW_DECODE[np.frombuffer(ulaw, dtype=np.uint8)].tobytes()


def pcm16_to_alaw(pcm16: bytes) -> bytes:
    """Encode PCM16 LE to G.711 A-law, one byte per sample."""
    return _encode(pcm16, _ALAW_ENCODE)


def alaw_to_pcm16(alaw: bytes) -> bytes:
    """Decode G.711 A-law to PCM16 LE."""
    return _ALAW_DECODE[np.frombuffer(alaw, dtype=np.uint8)].tobytes()
