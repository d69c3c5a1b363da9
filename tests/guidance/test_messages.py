"""Message round trips (pack -> unpack -> pack byte for byte), geometry, validation."""

from __future__ import annotations

import numpy as np
import pyigtl
import pytest

from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.messages import (
    HEADER_SIZE,
    MalformedMessage,
    PositionMessage,
    StatusMessage,
    TrackingDataMessage,
    decode,
    image_message_from_volume,
    parse_header,
    volume_from_image_message,
)


def roundtrip(msg: pyigtl.messages.MessageBase):
    raw = msg.pack()
    header = parse_header(raw[:HEADER_SIZE], 2**30)
    out = decode(header, memoryview(raw[HEADER_SIZE:]))
    assert out is not None
    assert out.pack() == raw, f"{msg.message_type}: pack(unpack(pack)) differs"
    return out


def rigid(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = q, rng.normal(0, 50, 3)
    return m


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("shape", [(1, 48, 64), (5, 16, 24), (1, 20, 30, 3)])
def test_image_roundtrip(dtype, shape):
    rng = np.random.default_rng(1)
    data = (rng.random(shape) * 100).astype(dtype)
    msg = pyigtl.ImageMessage(data, ijk_to_world_matrix=np.diag([0.5, 0.7, 2.0, 1]),
                              device_name="Img", timestamp=1234.5)
    out = roundtrip(msg)
    assert out.image.dtype == dtype and out.image.shape == shape
    np.testing.assert_array_equal(out.image, data)
    assert out.device_name == "Img" and abs(out.timestamp - 1234.5) < 1e-6


def test_transform_string_point_roundtrip():
    rng = np.random.default_rng(2)
    m = rigid(rng)
    out = roundtrip(pyigtl.TransformMessage(m, device_name="NeedleToTracker", timestamp=10.25))
    np.testing.assert_allclose(out.matrix, m, atol=1e-4)
    out = roundtrip(pyigtl.StringMessage("DANGER: cord 1.2 mm", device_name="Warn"))
    assert out.string == "DANGER: cord 1.2 mm"
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 6.25]])
    out = roundtrip(pyigtl.PointMessage(pts, names=["Entry", "Target"], groups="Plan",
                                        device_name="Plan"))
    np.testing.assert_allclose(np.array(out.positions), pts)
    assert out.names == ["Entry", "Target"]


def test_tdata_status_position_roundtrip():
    rng = np.random.default_rng(3)
    mats = np.stack([rigid(rng) for _ in range(3)])
    out = roundtrip(TrackingDataMessage(["Needle", "Probe", "Ref"], mats, device_name="Tracker"))
    assert out.names == ["Needle", "Probe", "Ref"] and out.types == [2, 2, 2]
    np.testing.assert_allclose(out.matrices, mats, atol=1e-4)
    out = roundtrip(StatusMessage(7, 3, "STALE", "no frame for 0.5 s", device_name="S"))
    assert (out.code, out.subcode, out.error_name, out.status_string) == (
        7, 3, "STALE", "no frame for 0.5 s")
    q = np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)])
    out = roundtrip(PositionMessage([1.5, -2.0, 30.0], q, device_name="Tip"))
    np.testing.assert_allclose(out.position, [1.5, -2.0, 30.0], atol=1e-5)
    np.testing.assert_allclose(out.quaternion, q, atol=1e-6)


def test_position_short_forms():
    # 24-byte form: W is implied by the unit quaternion.
    import struct
    body = struct.pack(">6f", 1, 2, 3, 0.0, 0.0, np.sin(0.2))
    hdr = pyigtl.messages.MessageBase.parse_header  # noqa: F841 (documented API)
    msg = PositionMessage(device_name="P")
    raw = msg.pack()
    header = parse_header(raw[:HEADER_SIZE], 100)
    header = type(header)(header.version, "POSITION", "P", 0.0, len(body), 0)
    out = decode(header, memoryview(body))
    np.testing.assert_allclose(out.quaternion[3], np.cos(0.2), atol=1e-6)


def test_image_geometry_matches_ijk_to_lps():
    """Our ijk_to_lps survives the IMAGE matrix (centre-based, RAS on the wire)."""
    rng = np.random.default_rng(4)
    m = rigid(rng)
    m[:3, :3] = m[:3, :3] @ np.diag([0.3, 0.4, 2.5])
    vol = ImageVolume(np.zeros((3, 40, 50), np.int16), m)
    for cs in ("ras", "lps"):
        msg = image_message_from_volume(vol, "CT", 0.0, cs)
        raw = msg.pack()
        out = decode(parse_header(raw[:HEADER_SIZE], 2**30), memoryview(raw[HEADER_SIZE:]))
        back = volume_from_image_message(out)
        np.testing.assert_allclose(back.ijk_to_lps, m, atol=1e-3)
    # Corner voxel (0,0,0) of a RAS message is at RAS_TO_LPS @ origin.
    msg = image_message_from_volume(vol, "CT", 0.0, "ras")
    np.testing.assert_allclose(msg.ijk_to_world_matrix[:3, 3], (RAS_TO_LPS @ m)[:3, 3], atol=1e-3)


def _header(mtype: str, body: bytes, name: str = "Dev"):
    from guidance.io.messages import Header
    return Header(1, mtype, name, 0.0, len(body), 0)


@pytest.mark.parametrize(
    ("mtype", "body", "reason"),
    [
        ("TRANSFORM", b"\0" * 47, "expected 48"),
        ("TRANSFORM", np.full(12, np.nan, ">f4").tobytes(), "NaN"),
        ("IMAGE", b"\0" * 10, "shorter than the image header"),
        ("POINT", b"\0" * 135, "multiple of 136"),
        ("TDATA", b"\0" * 69, "multiple of 70"),
        ("POSITION", b"\0" * 16, "expected 12, 24 or 28"),
        ("STRING", b"\0\x03\0\xff", "exceeds"),
        ("STATUS", b"\0" * 5, "shorter"),
    ],
)
def test_malformed_bodies_are_rejected_with_reason(mtype, body, reason):
    with pytest.raises(MalformedMessage, match=reason):
        decode(_header(mtype, body), memoryview(body))


def test_zero_size_and_wrong_size_images_rejected():
    good = pyigtl.ImageMessage(np.zeros((1, 4, 4), np.uint8), device_name="I").pack()
    body = bytearray(good[HEADER_SIZE:])
    zero = bytearray(body)
    zero[6:8] = b"\0\0"  # size i = 0
    with pytest.raises(MalformedMessage, match="zero-size"):
        decode(_header("IMAGE", bytes(zero)), memoryview(bytes(zero)))
    short = bytes(body[:-1])
    with pytest.raises(MalformedMessage, match="expected"):
        decode(_header("IMAGE", short), memoryview(short))
    badtype = bytearray(body)
    badtype[3] = 99
    with pytest.raises(MalformedMessage, match="scalar type"):
        decode(_header("IMAGE", bytes(badtype)), memoryview(bytes(badtype)))


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({0: b"\x00\x09"}, "header version"),
        ({2: b"\xff\xfe"}, "not ASCII"),
        ({2: b"\0" * 12}, "empty message type"),
    ],
)
def test_bad_headers_rejected(patch, reason):
    raw = bytearray(pyigtl.StringMessage("x", device_name="D").pack()[:HEADER_SIZE])
    for off, b in patch.items():
        raw[off : off + len(b)] = b
    with pytest.raises(MalformedMessage, match=reason):
        parse_header(raw, 1000)


def test_body_cap_checked_in_header():
    raw = pyigtl.ImageMessage(np.zeros((1, 64, 64), np.uint8), device_name="I").pack()
    with pytest.raises(MalformedMessage, match="exceeds the limit"):
        parse_header(raw[:HEADER_SIZE], 1000)


def test_unknown_type_decodes_to_none():
    assert decode(_header("FOO", b"abc"), memoryview(b"abc")) is None


def test_image_decode_is_zero_copy():
    raw = pyigtl.ImageMessage(np.arange(64, dtype=np.uint8).reshape(1, 8, 8),
                              device_name="I").pack()
    buf = bytearray(raw[HEADER_SIZE:])
    out = decode(parse_header(raw[:HEADER_SIZE], 2**20), memoryview(buf))
    buf[-1] = 7  # the decoded array views the receive buffer
    assert out.image[0, 7, 7] == 7


def test_fast_crc_matches_pyigtl_and_is_incremental():
    from pyigtl.messages import CRC64

    from guidance.io.messages import _crc64_fallback, crc64

    data = np.random.default_rng(5).bytes(70001)
    view = memoryview(bytearray(data))
    assert crc64(data) == CRC64(data) == _crc64_fallback(data)
    assert crc64(view[1234:], crc64(view[:1234])) == CRC64(data)
