"""Property-based fuzzing of the OpenIGTLink decoder: whatever bytes arrive, the only
exception that comes out of ``parse_header`` / ``decode`` is the project's own
:class:`MalformedMessage`, and a message that decodes is of the declared type."""

from __future__ import annotations

import struct

import numpy as np
import pyigtl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guidance.io.messages import (
    HEADER_SIZE,
    MESSAGE_CLASSES,
    MalformedMessage,
    PositionMessage,
    StatusMessage,
    TrackingDataMessage,
    decode,
    parse_header,
)

MAX_BODY = 1 << 20


def _seeds() -> list[bytes]:
    msgs = [
        pyigtl.ImageMessage(np.arange(48, dtype=np.uint8).reshape(1, 6, 8), device_name="I"),
        pyigtl.ImageMessage(np.zeros((2, 4, 4), np.int16), device_name="I3"),
        pyigtl.TransformMessage(np.eye(4), device_name="T"),
        pyigtl.StringMessage("hello", device_name="S"),
        pyigtl.PointMessage([1, 2, 3], names="P", device_name="P"),
        TrackingDataMessage(["A", "B"], np.stack([np.eye(4)] * 2), device_name="TD"),
        StatusMessage(1, 0, "", "ok", device_name="St"),
        PositionMessage([1, 2, 3], [0, 0, 0, 1], device_name="Po"),
    ]
    out = [m.pack() for m in msgs]
    for m in msgs[:4]:  # v2 with metadata
        m.header_version = 2
        m.metadata = {"Modality": "US", "Key": "value"}
        out.append(m.pack())
    return out


SEEDS = _seeds()


def _decode_all(raw: bytes) -> None:
    """Decode like the receive loop does (header, then exactly body_size bytes)."""
    if len(raw) < HEADER_SIZE:
        return
    try:
        header = parse_header(raw[:HEADER_SIZE], MAX_BODY)
    except MalformedMessage:
        return
    body = bytearray(raw[HEADER_SIZE:HEADER_SIZE + header.body_size])
    if len(body) < header.body_size:  # the receive loop would wait for the rest
        body.extend(b"\0" * (header.body_size - len(body)))
    try:
        msg = decode(header, memoryview(body))
    except MalformedMessage:
        return
    if msg is not None:
        assert header.message_type in MESSAGE_CLASSES
        assert msg.message_type == header.message_type


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "size", "meta"]))
        if kind == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            raw = raw[: draw(st.integers(HEADER_SIZE, max(HEADER_SIZE, len(raw))))]
        elif kind == "insert":
            i = draw(st.integers(HEADER_SIZE, len(raw)))
            raw[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "size":  # a body size that lies (the receive loop trusts only this)
            struct.pack_into(">Q", raw, 42, draw(st.integers(0, 4096)))
        elif kind == "meta" and len(raw) >= HEADER_SIZE + 12:  # v2 extended header fields
            struct.pack_into(">HHII", raw, HEADER_SIZE, draw(st.integers(0, 80)),
                             draw(st.integers(0, 80)), draw(st.integers(0, 200)), 0)
    return bytes(raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_raise_only_malformed_message(raw: bytes) -> None:
    _decode_all(raw)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(MESSAGE_CLASSES)), st.binary(max_size=400),
       st.sampled_from([1, 2]))
def test_random_bodies_of_every_type_raise_only_malformed_message(
        mtype: str, body: bytes, version: int) -> None:
    header = struct.pack(">H12s20sIIQQ", version, mtype.encode(), b"Fuzz", 0, 0, len(body), 0)
    _decode_all(header + body)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE + 200))
def test_random_bytes_raise_only_malformed_message(raw: bytes) -> None:
    _decode_all(raw)


def test_the_seeds_decode() -> None:
    """The fuzzing starts from valid messages (else it only tests the first check)."""
    for raw in SEEDS:
        header = parse_header(raw[:HEADER_SIZE], MAX_BODY)
        assert decode(header, memoryview(bytearray(raw[HEADER_SIZE:]))) is not None
