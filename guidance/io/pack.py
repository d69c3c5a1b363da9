"""Packing messages for the wire (the sending side of :mod:`guidance.io.messages`)."""

from __future__ import annotations

import struct

from pyigtl.messages import MessageBase

from guidance.io.messages import _HEADER, crc64

__all__ = ["pack_message"]


def _nanosec_to_frac(nanosec: int) -> int:
    """Nanoseconds as OpenIGTLink's 32-bit fraction of a second (igtl_util.c's
    ``igtl_nanosec_to_frac``, bit for bit as pyigtl and the C library compute it)."""
    base, mask, r = 1_000_000_000, 0x80000000, 0
    while mask:
        base = (base + 1) >> 1
        if nanosec >= base:
            r |= mask
            nanosec -= base
        mask >>= 1
    return r


def _encode_text(text: str) -> tuple[bytes, int]:
    """A metadata value as ASCII (IANA 3) when it is, else UTF-8 (IANA 106)."""
    try:
        return text.encode("ascii"), 3
    except UnicodeEncodeError:
        return text.encode("utf8"), 106


def pack_message(msg: MessageBase) -> bytes:
    """A message's bytes on the wire: pyigtl's ``pack`` (header, v2 extended header,
    its ``_pack_content``, metadata), with two differences.

    * The CRC-64 is :func:`crc64` (fastcrc): for the 512x512 label IMAGE sent with every
      frame pyigtl's crcmod took 0.66 ms, this 0.01 ms.
    * A non-ASCII metadata value is sent as UTF-8 (IANA 106) as the standard says;
      pyigtl's ``encode_text`` catches the wrong exception and raises instead.

    Otherwise the bytes are pyigtl's, byte for byte (tested).
    """
    version = int(msg.header_version)
    ext = meta_head = meta_body = b""
    if version > 1:
        heads = [struct.pack(">H", len(msg.metadata))]
        bodies: list[bytes] = []
        for key, value in msg.metadata.items():
            k = str(key).encode("utf8")
            v, enc = _encode_text(str(value))
            heads.append(struct.pack(">HHI", len(k), enc, len(v)))
            bodies += [k, v]
        meta_head, meta_body = b"".join(heads), b"".join(bodies)
        ext = struct.pack(">HHII", 12, len(meta_head), len(meta_body), int(msg.message_id))
    body = b"".join((ext, msg._pack_content(), meta_head, meta_body))
    ts = float(msg.timestamp)
    sec = int(ts)
    header = _HEADER.pack(version, msg._message_type.encode("utf8"),
                          msg.device_name.encode("utf8"), sec,
                          _nanosec_to_frac(int((ts - sec) * 1e9)), len(body), crc64(body))
    return header + body
