"""Control slabs as OpenIGTLink IMAGE messages (guidance.sim.ct_procedure)."""

from __future__ import annotations

import threading

import numpy as np

from guidance.io.messages import decode, parse_header, volume_from_image_message
from guidance.sim.ct_procedure import CT_DEVICE, motion_translation, stream_control_scans
from guidance.sim.ct_slab import control_scan_series
from tests.peers import require_real_ct

ENTRY = np.array([57.258, 115.279, -296.336])
TARGET = np.array([38.592, 54.224, -291.871])


def test_slabs_go_as_3d_int16_images_with_modality_ct() -> None:
    require_real_ct()
    from guidance.data import load_real_ct

    sent: list = []
    scans = list(control_scan_series(load_real_ct(), ENTRY, TARGET, steps=3, rows=128,
                                     cols=128, motion=motion_translation(5.0)))
    n = stream_control_scans(scans, sent.append, 0.0, threading.Event())
    assert n == 3 and len(sent) == 3
    for msg, (slab, _) in zip(sent, scans, strict=True):
        packed = bytes(msg.pack())
        header = parse_header(packed[:58], 1 << 28)
        back = decode(header, memoryview(packed[58:]))
        assert back is not None and back.device_name == CT_DEVICE
        assert back.metadata.get("Modality") == "CT"
        vol = volume_from_image_message(back)
        assert vol.voxels.shape == (5, 128, 128) and vol.voxels.dtype == np.int16
        np.testing.assert_array_equal(vol.voxels, slab.voxels)
        np.testing.assert_allclose(vol.ijk_to_lps, slab.ijk_to_lps, atol=1e-4)
