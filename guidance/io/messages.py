"""OpenIGTLink message classes and the checks made before decoding.

Encoding and decoding use pyigtl's message classes (``pyigtl.ImageMessage``,
``TransformMessage``, ``StringMessage``, ``PointMessage``). pyigtl has no TDATA and no
STATUS, and its POSITION is not the OpenIGTLink v2 layout (it packs names and groups
like POINT), so :class:`TrackingDataMessage`, :class:`StatusMessage` and
:class:`PositionMessage` implement them per the OpenIGTLink v2 specification as
subclasses of pyigtl's ``MessageBase`` (same ``pack()`` / ``unpack(header, body)``).

Bodies may be passed as ``memoryview`` objects: pyigtl slices them without copying and
``np.frombuffer`` then views the receive buffer directly.

:func:`validate_body` checks what pyigtl does not (sizes, scalar types, NaN matrices)
so that a malformed message is rejected with a reason instead of raising deep inside
the decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyigtl
from pyigtl.messages import CRC64, MessageBase

from guidance.geometry import RAS_TO_LPS, ImageVolume

__all__ = [
    "HEADER_SIZE",
    "MESSAGE_CLASSES",
    "STATUS_CODES",
    "Header",
    "MalformedMessage",
    "PositionMessage",
    "StartTrackingDataMessage",
    "StatusMessage",
    "TrackingDataMessage",
    "crc64",
    "decode",
    "image_message_from_volume",
    "parse_header",
    "validate_body",
    "volume_from_image_message",
]

HEADER_SIZE = 58
_HEADER = struct.Struct(">H12s20sIIQQ")
_TRANSFORM_BODY = 48
_IMAGE_HEADER = struct.Struct(">HBBBBHHH12f6H")  # 72 bytes
_EXT_HEADER = struct.Struct(">HHII")  # v2 header extended header, 12 bytes


def _crc64_fallback(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    return int(CRC64(data, crc))


try:  # CRC-64/ECMA-182 with carry-less multiply folding: ~100x crcmod's table loop
    from fastcrc.crc64 import ecma_182 as _fast_crc64

    def _crc64_fast(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
        return int(_fast_crc64(data, crc))

    crc64 = _crc64_fast
except ImportError:  # pragma: no cover - fastcrc is a dependency; keep working without it
    crc64 = _crc64_fallback
#: CRC-64 (ECMA-182 polynomial: poly 0x42F0E1EBA9EA3693, init 0, no reflection, no xor)
#: as OpenIGTLink uses it; ``crc64(data, crc)`` continues a running CRC, so it can be
#: computed chunk by chunk as bytes arrive.


class MalformedMessage(ValueError):
    """A message that cannot be accepted; the text says what is wrong with it."""


@dataclass(frozen=True)
class Header:
    """The 58-byte OpenIGTLink header.

    Attributes:
        version: header version (1 for OpenIGTLink v1/v2, 2 for v3 with extended header).
        message_type: e.g. ``"IMAGE"``.
        device_name: the device (stream) name.
        timestamp_s: the sender's timestamp, seconds (0 when the sender sets none).
        body_size: body length in bytes.
        crc: CRC-64 of the body as sent.
    """

    version: int
    message_type: str
    device_name: str
    timestamp_s: float
    body_size: int
    crc: int

    def as_pyigtl(self) -> dict[str, object]:
        """The header dict pyigtl's ``MessageBase.unpack`` expects."""
        return {
            "header_version": self.version,
            "message_type": self.message_type,
            "device_name": self.device_name,
            "timestamp": self.timestamp_s,
            "body_size": self.body_size,
        }


def _ascii_field(raw: bytes, what: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError as e:
        raise MalformedMessage(f"{what} is not ASCII: {text[:20]!r}") from e
    if not s.isprintable():
        raise MalformedMessage(f"{what} has control characters: {text[:20]!r}")
    return s


def parse_header(data: bytes | bytearray | memoryview, max_body_bytes: int) -> Header:
    """Parse and check a 58-byte header.

    Args:
        data: at least 58 bytes.
        max_body_bytes: largest body accepted; checked here, before anything is
            allocated for the body.

    Raises:
        MalformedMessage: bad version, non-ASCII type or name, empty type, or a body
            larger than ``max_body_bytes``.
    """
    version, mtype, name, sec, frac, body_size, crc = _HEADER.unpack_from(data)
    if version not in (1, 2):
        raise MalformedMessage(f"unsupported header version {version}")
    message_type = _ascii_field(mtype, "message type")
    if not message_type:
        raise MalformedMessage("empty message type")
    device_name = _ascii_field(name, "device name")
    if body_size > max_body_bytes:
        raise MalformedMessage(
            f"{message_type} '{device_name}': body of {body_size} bytes exceeds the "
            f"limit of {max_body_bytes} bytes"
        )
    # OpenIGTLink timestamp: 32-bit seconds + 32-bit binary fraction of a second.
    timestamp_s = sec + frac / 2**32
    return Header(version, message_type, device_name, timestamp_s, body_size, crc)


# ---------------------------------------------------------------------------------------
# Message types pyigtl lacks (OpenIGTLink v2 specification).
# ---------------------------------------------------------------------------------------


def _matrix_to_12(m: npt.NDArray[np.float64]) -> tuple[float, ...]:
    # Column-major 3x3 rotation then translation: R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ
    return (*m[:3, 0], *m[:3, 1], *m[:3, 2], *m[:3, 3])


def _matrix_from_12(v: Sequence[float]) -> npt.NDArray[np.float64]:
    m = np.eye(4)
    m[:3, 0] = v[0:3]
    m[:3, 1] = v[3:6]
    m[:3, 2] = v[6:9]
    m[:3, 3] = v[9:12]
    return m


class TrackingDataMessage(MessageBase):
    """TDATA: several tracked tools in one message (OpenIGTLink v2).

    Body: N elements of 70 bytes: NAME char[20], TYPE uint8 (1 tracker, 2 6D, 3 3D,
    4 5D), reserved uint8, MATRIX float32[12] (same layout as TRANSFORM).

    Attributes:
        names: tool names.
        types: element types (2 = 6D for a full pose).
        matrices: (N, 4, 4) float64 tool-to-tracker matrices, mm.
    """

    ELEMENT = struct.Struct(">20sBB12f")

    def __init__(
        self,
        names: Sequence[str] | None = None,
        matrices: npt.ArrayLike | None = None,
        types: Sequence[int] | None = None,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "TDATA"
        self.names = list(names or [])
        self.matrices = (
            np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4)
            if matrices is not None
            else np.zeros((0, 4, 4))
        )
        self.types = list(types) if types is not None else [2] * len(self.names)
        if not (len(self.names) == len(self.matrices) == len(self.types)):
            raise ValueError(
                f"TDATA needs one name, matrix and type per tool, got {len(self.names)}, "
                f"{len(self.matrices)}, {len(self.types)}"
            )
        self._valid_message = True

    def content_asstring(self) -> str:
        return "\n".join(
            f"{n}: {m.tolist()}" for n, m in zip(self.names, self.matrices, strict=True)
        )

    def _pack_content(self) -> bytes:
        out = bytearray()
        for name, mtype, m in zip(self.names, self.types, self.matrices, strict=True):
            out += self.ELEMENT.pack(name.encode("ascii")[:20], mtype, 0, *_matrix_to_12(m))
        return bytes(out)

    def _unpack_content(self, content: bytes | memoryview) -> None:
        n = len(content) // self.ELEMENT.size
        self.names, self.types = [], []
        self.matrices = np.zeros((n, 4, 4))
        for i, (name, mtype, _r, *vals) in enumerate(self.ELEMENT.iter_unpack(content)):
            self.names.append(name.split(b"\0", 1)[0].decode("ascii", "replace"))
            self.types.append(mtype)
            self.matrices[i] = _matrix_from_12(vals)


class StartTrackingDataMessage(MessageBase):
    """STT_TDATA (OpenIGTLink v2): asks a tracking server to start streaming TDATA.

    Body: resolution uint32 (ms between messages), coordinate name char[32].
    """

    BODY = struct.Struct(">I32s")

    def __init__(
        self,
        resolution_ms: int = 50,
        coordinate_name: str = "",
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "STT_TDATA"
        self.resolution_ms = int(resolution_ms)
        self.coordinate_name = coordinate_name
        self._valid_message = True

    def _pack_content(self) -> bytes:
        return self.BODY.pack(self.resolution_ms, self.coordinate_name.encode("ascii")[:32])

    def _unpack_content(self, content: bytes | memoryview) -> None:
        self.resolution_ms, name = self.BODY.unpack_from(content)
        self.coordinate_name = name.split(b"\0", 1)[0].decode("ascii", "replace")


#: OpenIGTLink v2 STATUS codes.
STATUS_CODES: dict[int, str] = {
    0: "INVALID",
    1: "OK",
    2: "UNKNOWN_ERROR",
    3: "PANIC",
    4: "NOT_FOUND",
    5: "ACCESS_DENIED",
    6: "BUSY",
    7: "TIME_OUT",
    8: "OVERFLOW",
    9: "CHECKSUM_ERROR",
    10: "CONFIG_ERROR",
    11: "RESOURCE_ERROR",
    12: "UNKNOWN_INSTRUCTION",
    13: "NOT_READY",
    14: "MANUAL_MODE",
    15: "DISABLED",
    16: "NOT_PRESENT",
    17: "UNKNOWN_VERSION",
    18: "HARDWARE_FAILURE",
    19: "SHUTTING_DOWN",
}


class StatusMessage(MessageBase):
    """STATUS (OpenIGTLink v2): code uint16, subcode int64, error name char[20],
    status string (null-terminated)."""

    FIXED = struct.Struct(">Hq20s")

    def __init__(
        self,
        code: int = 1,
        subcode: int = 0,
        error_name: str = "",
        status_string: str = "",
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "STATUS"
        if code not in STATUS_CODES:
            raise ValueError(f"STATUS code must be one of {sorted(STATUS_CODES)}, got {code}")
        self.code = code
        self.subcode = subcode
        self.error_name = error_name
        self.status_string = status_string
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"{STATUS_CODES.get(self.code, self.code)} {self.error_name}: {self.status_string}"

    def _pack_content(self) -> bytes:
        return (
            self.FIXED.pack(self.code, self.subcode, self.error_name.encode("ascii")[:20])
            + self.status_string.encode("utf-8")
            + b"\0"
        )

    def _unpack_content(self, content: bytes | memoryview) -> None:
        self.code, self.subcode, name = self.FIXED.unpack_from(content)
        self.error_name = name.split(b"\0", 1)[0].decode("ascii", "replace")
        rest = bytes(content[self.FIXED.size :])
        self.status_string = rest.split(b"\0", 1)[0].decode("utf-8", "replace")


class PositionMessage(MessageBase):
    """POSITION (OpenIGTLink v2): X, Y, Z float32 then the quaternion OX, OY, OZ, W.

    The body is 12 (position only), 24 (3 quaternion components, W implied) or 28 bytes.

    Attributes:
        position: (3,) float64, mm.
        quaternion: (4,) float64 (ox, oy, oz, w).
    """

    def __init__(
        self,
        position: npt.ArrayLike | None = None,
        quaternion: npt.ArrayLike | None = None,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "POSITION"
        self.position = np.zeros(3) if position is None else np.asarray(position, float)
        self.quaternion = (
            np.array([0.0, 0.0, 0.0, 1.0]) if quaternion is None else np.asarray(quaternion, float)
        )
        #: False for a 12-byte body (position only: the quaternion is a placeholder).
        self.has_orientation = True
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"Position: {self.position.tolist()} Quaternion: {self.quaternion.tolist()}"

    def _pack_content(self) -> bytes:
        return struct.pack(">7f", *self.position, *self.quaternion)

    def _unpack_content(self, content: bytes | memoryview) -> None:
        n = len(content) // 4
        vals = struct.unpack(f">{n}f", content[: 4 * n])
        self.position = np.array(vals[:3], dtype=np.float64)
        self.has_orientation = n >= 6
        if n == 7:
            self.quaternion = np.array(vals[3:7], dtype=np.float64)
        elif n == 6:
            ox, oy, oz = vals[3:6]
            w = float(np.sqrt(max(0.0, 1.0 - ox * ox - oy * oy - oz * oz)))
            self.quaternion = np.array([ox, oy, oz, w])
        else:
            self.quaternion = np.array([0.0, 0.0, 0.0, 1.0])


#: Message type -> class used to decode it. Types not listed are skipped and counted.
MESSAGE_CLASSES: dict[str, type[MessageBase]] = {
    "IMAGE": pyigtl.ImageMessage,
    "TRANSFORM": pyigtl.TransformMessage,
    "STRING": pyigtl.StringMessage,
    "POINT": pyigtl.PointMessage,
    "POSITION": PositionMessage,
    "TDATA": TrackingDataMessage,
    "STATUS": StatusMessage,
}

_SUPPORTED_IMAGE_TYPES = {2: np.int8, 3: np.uint8, 4: np.int16, 5: np.uint16, 10: np.float32}


def _content_range(header: Header, body: memoryview) -> tuple[int, int]:
    """(start, end) of the content inside the body, skipping the v2 extended header and
    metadata. Raises MalformedMessage when those sizes do not fit the body."""
    if header.version < 2:
        return 0, len(body)
    if len(body) < _EXT_HEADER.size:
        raise MalformedMessage(f"body of {len(body)} bytes is shorter than the extended header")
    ext_size, meta_header, meta_body, _msg_id = _EXT_HEADER.unpack_from(body)
    end = len(body) - meta_header - meta_body
    if ext_size < _EXT_HEADER.size or end < ext_size:
        raise MalformedMessage(
            f"extended header ({ext_size} B) and metadata ({meta_header + meta_body} B) do "
            f"not fit a body of {len(body)} B"
        )
    return ext_size, end


_META_ENTRY = struct.Struct(">HHI")  # key size, value encoding, value size
#: Metadata value encodings pyigtl decodes (IANA MIBenum: US-ASCII, UTF-8).
_META_ENCODINGS = {3: "US-ASCII", 106: "UTF-8"}


def _check_metadata(header: Header, body: memoryview, what: str) -> None:
    """Check a v2/v3 body's metadata table: entry sizes that add up and value encodings
    the decoder knows. pyigtl raises a ``TypeError`` deep inside ``decode_text`` for an
    unknown encoding; this names it instead."""
    _ext, meta_header, meta_body, _id = _EXT_HEADER.unpack_from(body)
    if meta_header + meta_body == 0:
        return
    table = body[len(body) - meta_header - meta_body : len(body) - meta_body]
    if meta_header < 2:
        raise MalformedMessage(f"{what}: metadata header of {meta_header} bytes (needs >= 2)")
    (count,) = struct.unpack_from(">H", table)
    if meta_header != 2 + count * _META_ENTRY.size:
        raise MalformedMessage(
            f"{what}: metadata header of {meta_header} bytes does not hold {count} entries"
        )
    total = 0
    for i in range(count):
        key_size, encoding, value_size = _META_ENTRY.unpack_from(table, 2 + i * _META_ENTRY.size)
        if encoding not in _META_ENCODINGS:
            raise MalformedMessage(
                f"{what}: metadata entry {i} has value encoding {encoding} (supported: "
                + ", ".join(f"{k} {v}" for k, v in _META_ENCODINGS.items()) + ")"
            )
        total += key_size + value_size
    if total != meta_body:
        raise MalformedMessage(
            f"{what}: metadata entries total {total} bytes, the header says {meta_body}"
        )


def validate_body(header: Header, body: memoryview) -> None:
    """Check a body's structure for its type before pyigtl decodes it.

    Raises:
        MalformedMessage: naming the type, the device and what is wrong.
    """
    start, end = _content_range(header, body)
    content = body[start:end]
    n = len(content)
    what = f"{header.message_type} '{header.device_name}'"
    if header.version >= 2:
        _check_metadata(header, body, what)
    t = header.message_type
    if t == "TRANSFORM":
        if n != _TRANSFORM_BODY:
            raise MalformedMessage(f"{what}: content is {n} bytes, expected 48")
        vals = np.frombuffer(content, dtype=">f4")
        if not np.all(np.isfinite(vals)):
            raise MalformedMessage(f"{what}: matrix contains NaN or infinite values")
    elif t == "IMAGE":
        if n < _IMAGE_HEADER.size:
            raise MalformedMessage(f"{what}: content is {n} bytes, shorter than the image header")
        v = _IMAGE_HEADER.unpack_from(content)
        _ver, comps, stype, endian, coord = v[:5]
        size = v[5:8]
        geom = v[8:20]
        sub_start, sub_size = v[20:23], v[23:26]
        if stype not in _SUPPORTED_IMAGE_TYPES:
            raise MalformedMessage(f"{what}: unsupported scalar type {stype}")
        if comps not in (1, 3, 4):
            raise MalformedMessage(f"{what}: {comps} components (1, 3 or 4 supported)")
        if endian not in (1, 2) or coord not in (1, 2):
            raise MalformedMessage(f"{what}: bad endianness {endian} or coordinate system {coord}")
        if min(size) == 0:
            raise MalformedMessage(f"{what}: zero-size image {size}")
        if tuple(sub_start) != (0, 0, 0) or tuple(sub_size) != tuple(size):
            raise MalformedMessage(f"{what}: sub-volume images are not supported")
        if not np.all(np.isfinite(geom)):
            raise MalformedMessage(f"{what}: geometry contains NaN or infinite values")
        m = np.array(geom[:9], dtype=np.float64).reshape(3, 3)
        if abs(np.linalg.det(m)) < 1e-12:
            raise MalformedMessage(f"{what}: singular image matrix (zero spacing?)")
        itemsize = np.dtype(_SUPPORTED_IMAGE_TYPES[stype]).itemsize
        expected = _IMAGE_HEADER.size + size[0] * size[1] * size[2] * comps * itemsize
        if n != expected:
            raise MalformedMessage(
                f"{what}: content is {n} bytes, expected {expected} for size {size} x {comps}"
            )
    elif t == "STRING":
        if n < 4:
            raise MalformedMessage(f"{what}: content shorter than 4 bytes")
        enc, length = struct.unpack_from(">HH", content)
        if enc not in (3, 106):
            raise MalformedMessage(f"{what}: unsupported string encoding {enc}")
        if 4 + length > n:
            raise MalformedMessage(f"{what}: string length {length} exceeds the body")
    elif t == "POINT":
        if n % 136 != 0:
            raise MalformedMessage(f"{what}: content of {n} bytes is not a multiple of 136")
    elif t == "TDATA":
        if n % TrackingDataMessage.ELEMENT.size != 0:
            raise MalformedMessage(f"{what}: content of {n} bytes is not a multiple of 70")
        for el in TrackingDataMessage.ELEMENT.iter_unpack(content):
            if not np.all(np.isfinite(el[3:])):
                raise MalformedMessage(f"{what}: a matrix contains NaN or infinite values")
    elif t == "POSITION":
        if n not in (12, 24, 28):
            raise MalformedMessage(f"{what}: content is {n} bytes, expected 12, 24 or 28")
    elif t == "STATUS":
        if n < StatusMessage.FIXED.size + 1:
            raise MalformedMessage(f"{what}: content shorter than {StatusMessage.FIXED.size + 1}")


def decode(header: Header, body: memoryview) -> MessageBase | None:
    """Validate and decode a body into a message object (``None`` for unknown types).

    The returned IMAGE's ``image`` array views ``body`` (no copy).

    Raises:
        MalformedMessage: the body does not match its type, or the decoder failed on it
            for any reason (the original exception is its ``__cause__``); nothing else.
    """
    cls = MESSAGE_CLASSES.get(header.message_type)
    if cls is None:
        return None
    what = f"{header.message_type} '{header.device_name}'"
    try:
        validate_body(header, body)
    except MalformedMessage:
        raise
    except Exception as e:  # a check tripping on input it did not foresee
        raise MalformedMessage(f"{what}: cannot check: {type(e).__name__}: {e}") from e
    msg = cls()
    # pyigtl decodes text with bytes.decode, which a memoryview lacks: only an IMAGE
    # without v2 metadata is decoded in place (its pixels stay a view of the receive
    # buffer); everything else is small and is copied first.
    zero_copy = header.message_type == "IMAGE" and (
        header.version < 2 or _content_range(header, body)[1] == len(body)
    )
    try:
        msg.unpack(header.as_pyigtl(), body if zero_copy else bytes(body))
    except Exception as e:
        # Whatever pyigtl raises on input it did not expect (struct.error, ValueError,
        # UnicodeDecodeError, KeyError, IndexError, TypeError from its own
        # ``raise("...")``...): this message is rejected, named, never propagated.
        raise MalformedMessage(f"{what}: cannot decode: {type(e).__name__}: {e}") from e
    return msg


# ---------------------------------------------------------------------------------------
# IMAGE <-> ImageVolume (the geometry boundary).
# ---------------------------------------------------------------------------------------


def volume_from_image_message(msg: pyigtl.ImageMessage) -> ImageVolume:
    """An IMAGE message as an :class:`ImageVolume` in LPS.

    pyigtl returns ``image`` as (k, j, i[, c]) and ``ijk_to_world_matrix`` with the
    origin already moved from the image centre (the wire convention) to voxel (0,0,0).
    RAS images (coordinate field 1, Slicer's default) are converted to LPS here.
    """
    m = np.asarray(msg.ijk_to_world_matrix, dtype=np.float64)
    if msg.world_coordinate_system == "ras":
        m = RAS_TO_LPS @ m
    return ImageVolume(voxels=msg.image, ijk_to_lps=m)


def image_message_from_volume(
    volume: ImageVolume,
    device_name: str,
    timestamp_s: float,
    coordinate_system: str = "ras",
) -> pyigtl.ImageMessage:
    """An :class:`ImageVolume` as an IMAGE message.

    Args:
        volume: voxels (k, j, i[, c]) and ijk_to_lps.
        device_name: the device name (Slicer names the volume node after it).
        timestamp_s: sender timestamp, seconds.
        coordinate_system: ``"ras"`` (default: what 3D Slicer assumes) or ``"lps"``.
    """
    if coordinate_system not in ("ras", "lps"):
        raise ValueError(f"coordinate_system must be 'ras' or 'lps', got {coordinate_system!r}")
    m = volume.ijk_to_lps if coordinate_system == "lps" else RAS_TO_LPS @ volume.ijk_to_lps
    return pyigtl.ImageMessage(
        volume.voxels,
        ijk_to_world_matrix=m,
        world_coordinate_system=coordinate_system,
        timestamp=timestamp_s,
        device_name=device_name,
    )
