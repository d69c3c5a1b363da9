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


def test_simulate_modality_ct_sends_one_slab_per_step() -> None:
    import subprocess
    import sys
    import time

    import pyigtl

    from tests.peers import free_port

    require_real_ct()
    port = free_port()
    srv = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "guidance", "simulate", "--modality", "ct", "--connect",
             f"127.0.0.1:{port}", "--ct-steps", "2", "--ct-interval-s", "0.2",
             "--scenario", "drift", "--ct-motion-mm", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90 and len(got) < 2:
            m = srv.wait_for_message(CT_DEVICE, timeout=1)
            if m is not None:
                got.append(m)
        out = p.communicate(timeout=60)[0]
    finally:
        srv.stop()
    assert p.returncode == 0, out
    assert len(got) == 2 and all(m.image.shape == (5, 512, 512) for m in got)
    assert all(m.metadata.get("Modality") == "CT" for m in got)
    assert sum("sent" in line for line in out.splitlines()) == 2
