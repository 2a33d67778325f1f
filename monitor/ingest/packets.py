"""What a compressed packet says about the picture without decoding it: NAL unit types, sizes, timestamps.

These signals cost no decoding. They are hints an encoder controls, never proof: the sampler treats them as
reasons to look more closely (decode forward, sample densely), never as reasons to look less.

H.264 only marks a random access point clearly: a key-flagged packet either holds an IDR slice (NAL type 5: the
picture decodes on its own) or, with periodic intra refresh, a recovery point SEI (NAL type 6, payload 6) over
ordinary slices: decoded alone it gives no usable picture; a clean one needs the whole refresh period decoded
from it. FLV and MP4 carry length-prefixed NAL units (AVCC; the length size is in the extradata), MPEG-TS carries
Annex B start codes; both are read here. A key-flagged packet that is not H.264 at all (the forbidden bit set, no NAL
unit found: a codec change on the same stream) is not a picture. Other codecs' key packets are taken to be clean
(HEVC CRA/IDR and VP9/AV1 keyframes decode on their own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
SEI_RECOVERY_POINT = 6
_MAX_NALS = 64  # a key packet holds a handful (SEI, SPS, PPS, slices); stop scanning a hostile one early


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key-flagged packet holds."""

    clean: bool  # decodes on its own into a usable picture (IDR or I slices, or a codec without the distinction)
    recovery_point: bool  # H.264 recovery point SEI without an IDR slice: periodic intra refresh
    # Not a picture on its own for another reason: not H.264 at all (a codec change mid-stream), or a key flag on
    # predicted slices. The reader counts it as a keyframe without a picture.


CLEAN_KEY = KeyInfo(clean=True, recovery_point=False)
NOT_A_PICTURE = KeyInfo(clean=False, recovery_point=False)


def avcc_length_size(extradata: bytes | None) -> int | None:
    """NAL length-prefix size of an avcC record (1, 2 or 4), or None when the stream uses Annex B start codes."""
    if not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 0x03) + 1


def _nal_units_avcc(data: bytes, length_size: int) -> list[tuple[int, int]]:
    """(offset of the NAL header, NAL length) of each unit, reading lengths only."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(data)
    while i + length_size < n and len(out) < _MAX_NALS:
        length = int.from_bytes(data[i:i + length_size], "big")
        start = i + length_size
        if length <= 0 or start + length > n:
            break
        out.append((start, length))
        i = start + length
    return out


def _nal_units_annexb(data: bytes) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and len(out) < _MAX_NALS:
        start = i + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        if end > start:
            out.append((start, end - start))
        i = nxt
    return out


def h264_key_info(data: bytes, length_size: int | None) -> KeyInfo:
    """Classify an H.264 key-flagged packet from its NAL headers (and the first fields of a slice header)."""
    if length_size is None and not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        length_size = 4  # length-prefixed without an avcC record in sight: the common size
    units = _nal_units_annexb(data) if length_size is None else _nal_units_avcc(data, length_size)
    if not units:
        return NOT_A_PICTURE
    idr = recovery = intra = False
    for start, length in units:
        header = data[start]
        if header & 0x80:  # forbidden_zero_bit: this is not H.264
            return NOT_A_PICTURE
        nal_type = header & 0x1F
        if nal_type == NAL_IDR:
            idr = True
        elif nal_type == NAL_SEI and length >= 2 and _sei_has_recovery_point(data, start + 1, start + length):
            recovery = True
        elif nal_type == NAL_SLICE and _slice_type(data, start + 1, start + length) in (2, 4, 7, 9):
            intra = True  # I or SI slices: decodes on its own (an open-GOP I picture)
    if idr:
        return CLEAN_KEY
    if recovery:
        return KeyInfo(clean=False, recovery_point=True)
    return CLEAN_KEY if intra else NOT_A_PICTURE


def _slice_type(data: bytes, i: int, end: int) -> int | None:
    """slice_type of a slice header: the second Exp-Golomb code after the NAL header (first_mb_in_slice first)."""
    bits = _Bits(data, i, min(end, i + 16))
    if bits.ue() is None:
        return None
    return bits.ue()


class _Bits:
    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start * 8, end * 8

    def bit(self) -> int | None:
        if self.pos >= self.end:
            return None
        b = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def ue(self) -> int | None:
        zeros = 0
        while True:
            b = self.bit()
            if b is None or zeros > 31:
                return None
            if b:
                break
            zeros += 1
        value = 0
        for _ in range(zeros):
            b = self.bit()
            if b is None:
                return None
            value = (value << 1) | b
        return (1 << zeros) - 1 + value


def _sei_has_recovery_point(data: bytes, i: int, end: int) -> bool:
    """Walk the SEI messages (payload type and size are 0xFF-extended) looking for a recovery point."""
    while i < end - 1:
        ptype = 0
        while i < end and data[i] == 0xFF:
            ptype += 255
            i += 1
        if i >= end:
            return False
        ptype += data[i]
        i += 1
        size = 0
        while i < end and data[i] == 0xFF:
            size += 255
            i += 1
        if i >= end:
            return False
        size += data[i]
        i += 1
        if ptype == SEI_RECOVERY_POINT:
            return True
        i += size
        if i < end and data[i] == 0x80:  # rbsp trailing bits
            return False
    return False


class PacketSizes:
    """Running baselines of packet sizes, robust to the spikes they are meant to find.

    The baseline of non-key packets is an exponential average of log sizes whose upward steps are clipped, so a
    burst of large packets (a picture change) does not raise it much; it follows a sustained change within about
    `span` packets. Keyframe sizes get a plain exponential average.
    """

    def __init__(self, span: int = 30, sustained: int = 15) -> None:
        self._alpha = 2.0 / (span + 1)
        self._sustained = sustained  # this many packets in a row a doubling or more above: the new level
        self._high = 0
        self.delta_log: float | None = None  # log2 of the non-key baseline
        self.key_log: float | None = None
        self.deltas = 0
        self.keys = 0

    @property
    def delta_baseline(self) -> float | None:
        return None if self.delta_log is None else float(2.0 ** self.delta_log)

    @property
    def key_baseline(self) -> float | None:
        return None if self.key_log is None else float(2.0 ** self.key_log)

    def ratio(self, size: int) -> float | None:
        """This non-key packet's size over the baseline (None until there is one)."""
        base = self.delta_baseline
        return None if base is None else size / max(base, 1.0)

    def add_delta(self, size: int) -> None:
        v = _log2(size)
        self.deltas += 1
        if self.delta_log is None:
            self.delta_log = v
            return
        step = v - self.delta_log
        self._high = self._high + 1 if step >= 1.0 else 0
        if self._high >= self._sustained:  # not a spike: the stream's level changed
            self.delta_log, self._high = v, 0
            return
        self.delta_log += self._alpha * min(step, 1.0)  # a spike moves it by at most alpha * one doubling

    def add_key(self, size: int) -> None:
        v = _log2(size)
        self.keys += 1
        self.key_log = v if self.key_log is None else self.key_log + 0.3 * (v - self.key_log)


def _log2(size: int) -> float:
    return math.log2(max(size, 1))
