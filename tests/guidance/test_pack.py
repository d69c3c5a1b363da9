"""pack_message: pyigtl's bytes (with a faster CRC) for every message type we send, and
UTF-8 metadata where pyigtl raises."""

from __future__ import annotations

import numpy as np
import pyigtl
import pytest

from guidance.io.messages import HEADER_SIZE, decode, parse_header
from guidance.io.pack import pack_message


def _messages() -> list[pyigtl.MessageBase]:
    img = pyigtl.ImageMessage(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                              device_name="Labels", timestamp=1733500000.123456789)
    img3 = pyigtl.ImageMessage(np.zeros((3, 16, 16), np.int16), device_name="Slab",
                               timestamp=12.5)
    img3.header_version = 2
    img3.metadata = {"Modality": "CT", "RescaleSlope": "1"}
    tr = pyigtl.TransformMessage(np.diag([1.0, 2.0, 3.0, 1.0]), device_name="NeedleTipToRAS",
                                 timestamp=0.0)
    st = pyigtl.StringMessage("DANGER: cord 1.2 mm", device_name="GuidanceWarning",
                              timestamp=99.999999)
    pt = pyigtl.PointMessage([[1.0, 2.0, 3.0]], device_name="Plan", timestamp=5.25)
    return [img, img3, tr, st, pt]


@pytest.mark.parametrize("i", range(5))
def test_the_bytes_are_pyigtls(i: int) -> None:
    msg = _messages()[i]
    assert pack_message(msg) == msg.pack()


def test_a_non_ascii_metadata_value_is_sent_as_utf8() -> None:
    msg = pyigtl.StringMessage("x", device_name="Note")
    msg.header_version = 2
    msg.metadata = {"Patient": "Müller"}
    with pytest.raises(UnicodeEncodeError):
        msg.pack()  # pyigtl's encode_text catches UnicodeDecodeError instead
    raw = pack_message(msg)
    header = parse_header(raw[:HEADER_SIZE], 1 << 20)
    back = decode(header, memoryview(raw)[HEADER_SIZE:])
    assert back is not None
    assert back.metadata == {"Patient": "Müller"}
