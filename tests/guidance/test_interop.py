"""Interoperability with the OpenIGTLink reference implementation (C++ example programs
built from Debian's libopenigtlink-dev / openigtlink-examples)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import numpy as np
import pyigtl
import pytest

from guidance.geometry import ImageVolume
from guidance.io.igtl import IgtlClient, IgtlServer
from guidance.io.messages import (
    PositionMessage,
    StartTrackingDataMessage,
    StatusMessage,
    TrackingDataMessage,
    image_message_from_volume,
    volume_from_image_message,
)
from tests.peers import igtl_examples


@pytest.fixture(scope="module")
def examples():
    return igtl_examples()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            threading.Event().wait(0.05)
    raise AssertionError(f"nothing listening on {port}")


def test_imager_client_into_our_server(examples):
    """ImagerClient sends 256x256 uint8 IMAGEs (spacing 1,1,5, random orientation)."""
    srv = IgtlServer(0).start()
    img_dir = examples.parent / "openigtlink-src" / "Imager" / "img"
    proc = subprocess.Popen([str(examples / "Imager" / "ImagerClient"), "127.0.0.1",
                             str(srv.port), "50", str(img_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = srv.slots.wait_newer("ImagerClient", 0, 10.0)
        assert first is not None
        vol = volume_from_image_message(first.message)
        assert vol.voxels.shape == (1, 256, 256) and vol.voxels.dtype == np.uint8
        np.testing.assert_allclose(vol.spacing_mm, [1.0, 1.0, 5.0], atol=1e-4)
        raw = np.fromfile(img_dir / "igtlTestImage1.raw", np.uint8).reshape(256, 256)
        later = srv.slots.wait_newer("ImagerClient", first.seq, 10.0)
        assert later is not None
        # Each frame is one of the five test images, byte for byte.
        imgs = [np.fromfile(img_dir / f"igtlTestImage{i}.raw", np.uint8).reshape(256, 256)
                for i in range(1, 6)]
        assert any(np.array_equal(later.message.image[0], im) for im in imgs)
        assert first.message.image[0].shape == raw.shape
        conns = srv.connections()
        assert conns and conns[0].stats.bad_crc == 0 and conns[0].stats.malformed == 0
    finally:
        proc.kill()
        proc.wait()
        srv.stop()


def test_tracker_client_into_our_server(examples):
    srv = IgtlServer(0).start()
    proc = subprocess.Popen([str(examples / "Tracker" / "TrackerClient"), "127.0.0.1",
                             str(srv.port), "30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        a = srv.slots.wait_newer("Tracker", 0, 10.0)
        b = srv.slots.wait_newer("Tracker", a.seq, 10.0) if a else None
        assert a is not None and b is not None
        m = np.asarray(b.message.matrix)
        assert m.shape == (4, 4)
        r = m[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-4)  # a rotation
        assert not np.allclose(a.message.matrix, b.message.matrix)  # it moves
        assert b.received_ns > a.received_ns and b.timestamp_s >= a.timestamp_s
    finally:
        proc.kill()
        proc.wait()
        srv.stop()


def test_our_client_against_tracking_data_server(examples):
    port = free_port()
    proc = subprocess.Popen([str(examples / "TrackingData" / "TrackingDataServer"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        client = IgtlClient("127.0.0.1", port).start()
        try:
            assert client.wait_connected(10)
            client.send(StartTrackingDataMessage(50, device_name="Tracker"))
            a = client.slots.wait_newer("Tracker", 0, 10.0)
            assert a is not None and a.message_type == "TDATA"
            msg = a.message
            assert isinstance(msg, TrackingDataMessage)
            assert len(msg.names) == 3 and all(n.startswith("Channel") for n in msg.names)
            for m in msg.matrices:
                np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-3)
        finally:
            client.stop()
    finally:
        proc.kill()
        proc.wait()


def test_our_client_against_imager_server(examples):
    port = free_port()
    img_dir = examples.parent / "openigtlink-src" / "Imager" / "img"
    proc = subprocess.Popen([str(examples / "Imager" / "ImagerServer"), str(port), "30",
                             str(img_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        client = IgtlClient("127.0.0.1", port).start()
        try:
            it = client.slots.wait_newer("ImagerClient", 0, 15.0)
            if it is None:
                # ImagerServer's accept loop may take the wait_port probe as its client.
                client.stop()
                client = IgtlClient("127.0.0.1", port).start()
                it = client.slots.wait_newer("ImagerClient", 0, 15.0)
            assert it is not None
            vol = volume_from_image_message(it.message)
            assert vol.voxels.shape == (1, 256, 256)
            np.testing.assert_allclose(vol.spacing_mm, [1.0, 1.0, 5.0], atol=1e-4)
            assert client.stats is not None and client.stats.bad_crc == 0
        finally:
            client.stop()
    finally:
        proc.kill()
        proc.wait()


def test_receive_server_parses_what_we_send(examples):
    """ReceiveServer unpacks with CRC check and prints the content it understood."""
    port = free_port()
    proc = subprocess.Popen([str(examples / "Receiver" / "ReceiveServer"), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        # The wait_port probe may have been accepted first: give the server our socket.
        labels = np.zeros((1, 40, 60), np.uint8)
        labels[0, 10:20, 5:50] = 1
        vol = ImageVolume(labels, np.diag([0.5, 0.5, 1.0, 1.0]))
        msgs = [
            image_message_from_volume(vol, "NeedleLabel", time.time()),
            pyigtl.TransformMessage(np.eye(4), device_name="NeedleTipToRAS"),
            pyigtl.StringMessage("DANGER: spinal_cord 1.5 mm", device_name="GuidanceWarning"),
            StatusMessage(2, 3, "DANGER", "needle 1.5 mm from spinal_cord",
                          device_name="GuidanceWarning"),
            pyigtl.PointMessage([[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]], names=["Entry", "Target"],
                                groups="Plan", device_name="Plan"),
            PositionMessage([1.0, 2.0, 3.0], [0, 0, 0, 1], device_name="Tip"),
        ]
        for m in msgs:
            sock.sendall(m.pack())
        sock.close()
        deadline = time.monotonic() + 10
        out = ""
        assert proc.stdout is not None
        import os
        import select
        os.set_blocking(proc.stdout.fileno(), False)
        needed = ["Receiving IMAGE", "Dimensions            : (60, 40, 1)",
                  "Receiving TRANSFORM", "DANGER: spinal_cord 1.5 mm", "Code      : 2",
                  "Error Name: DANGER", "Name      : Target", "Receiving POSITION"]
        while time.monotonic() < deadline and not all(n in out for n in needed):
            select.select([proc.stdout], [], [], 0.5)
            chunk = proc.stdout.read()
            if chunk:
                out += chunk
        missing = [n for n in needed if n not in out]
        assert not missing, f"ReceiveServer did not print {missing}:\n{out[-3000:]}"
    finally:
        proc.kill()
        proc.wait()
