"""Transport behaviour: latest value wins, bad input rejected while others are served,
reconnection, dead peers, bounded memory under a flood."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pyigtl
import pytest

from guidance.io.igtl import IgtlClient, IgtlServer, TransportConfig, parse_host_port
from guidance.io.messages import HEADER_SIZE, TrackingDataMessage
from tests.peers import raw_client, wait_until


def image_msg(value: int = 0, name: str = "Image", size: int = 32) -> bytes:
    return pyigtl.ImageMessage(np.full((1, size, size), value, np.uint8), device_name=name).pack()


@pytest.fixture
def server():
    srv = IgtlServer(0, config=TransportConfig(body_timeout_s=0.5, max_body_bytes=1 << 20)).start()
    yield srv
    srv.stop()


def test_receives_all_types_with_timestamps(server):
    s = raw_client(server.port)
    before = time.monotonic_ns()
    for msg in (
        pyigtl.ImageMessage(np.zeros((1, 8, 8), np.uint16), device_name="Img", timestamp=5.5),
        pyigtl.TransformMessage(np.eye(4), device_name="NeedleToTracker"),
        pyigtl.StringMessage("hi", device_name="Str"),
        pyigtl.PointMessage([1, 2, 3], names="P", device_name="Pt"),
        TrackingDataMessage(["A"], np.eye(4)[None], device_name="Trk"),
    ):
        s.sendall(msg.pack())
    it = server.slots.wait_newer("Img", 0, 5.0)
    assert it is not None and it.timestamp_s == pytest.approx(5.5)
    assert it.received_ns >= before
    for name in ("NeedleToTracker", "Str", "Pt", "Trk"):
        assert server.slots.wait_newer(name, 0, 5.0) is not None, name
    s.close()


def test_latest_value_wins_and_counts_drops(server):
    s = raw_client(server.port)
    for v in range(10):
        s.sendall(image_msg(v))
    wait_until(lambda: server.slots.counters().get("Image", None) is not None
               and server.slots.counters()["Image"].received == 10, what="10 images")
    it = server.slots.take("Image")
    assert it.message.image[0, 0, 0] == 9  # only the newest is kept
    c = server.slots.counters()["Image"]
    assert c.dropped == 9 and c.taken == 1
    s.close()


def test_consumer_wakes_on_arrival_without_polling(server):
    s = raw_client(server.port)
    got = {}

    def consume():
        got["item"] = server.slots.wait_newer("Image", 0, 5.0)
        got["t"] = time.monotonic_ns()

    th = threading.Thread(target=consume)
    th.start()
    threading.Event().wait(0.2)
    s.sendall(image_msg(3))
    th.join(5)
    item = got["item"]
    assert item is not None
    # woken by the condition variable, well under a polling period
    assert (got["t"] - item.received_ns) < 20e6
    s.close()


def _expect_second_client_served(server):
    c2 = raw_client(server.port)
    c2.sendall(pyigtl.StringMessage("still here", device_name="After").pack())
    it = server.slots.wait_newer("After", 0, 5.0)
    assert it is not None and it.message.string == "still here"
    c2.close()


def test_bad_crc_dropped_connection_continues(server):
    s = raw_client(server.port)
    raw = bytearray(image_msg(1, "Crc"))
    raw[-1] ^= 0xFF
    s.sendall(bytes(raw))
    s.sendall(image_msg(2, "Crc"))  # same connection goes on
    it = server.slots.wait_newer("Crc", 0, 5.0)
    assert it is not None and it.message.image[0, 0, 0] == 2
    assert server.connections()[0].stats.bad_crc == 1
    assert "CRC mismatch" in server.connections()[0].stats.errors[0]
    _expect_second_client_served(server)
    s.close()


def test_crc_check_can_be_turned_off():
    srv = IgtlServer(0, config=TransportConfig(check_crc=False)).start()
    try:
        s = raw_client(srv.port)
        raw = bytearray(image_msg(1, "NoCrc"))
        raw[50:58] = b"\0" * 8  # wrong CRC in the header
        s.sendall(bytes(raw))
        assert srv.slots.wait_newer("NoCrc", 0, 5.0) is not None
        s.close()
    finally:
        srv.stop()


def test_oversize_body_refused_before_allocation(server):
    s = raw_client(server.port)
    hdr = struct.pack(">H12s20sIIQQ", 1, b"IMAGE", b"Huge", 0, 0, 1 << 40, 0)
    s.sendall(hdr)
    wait_until(lambda: server.closed_connections, what="connection closed")
    assert any("exceeds the limit" in e for st in server.closed_connections for e in st.errors)
    _expect_second_client_served(server)
    s.close()


def test_truncated_then_stalled_message_dropped(server):
    s = raw_client(server.port)
    raw = image_msg(1, "Stall")
    s.sendall(raw[: HEADER_SIZE + 100])  # then nothing
    wait_until(lambda: server.closed_connections, timeout_s=5, what="stalled peer dropped")
    assert any("stalled" in e for e in server.closed_connections[0].errors)
    assert server.slots.latest("Stall") is None
    _expect_second_client_served(server)
    s.close()


def test_unknown_type_skipped_and_counted(server):
    s = raw_client(server.port)
    body = b"whatever"
    from pyigtl.messages import CRC64
    hdr = struct.pack(">H12s20sIIQQ", 1, b"FOOBAR", b"X", 0, 0, len(body), CRC64(body))
    s.sendall(hdr + body)
    s.sendall(pyigtl.StringMessage("ok", device_name="Next").pack())
    assert server.slots.wait_newer("Next", 0, 5.0) is not None
    assert server.slots.unknown_types == {"FOOBAR": 1}
    s.close()


@pytest.mark.parametrize("case", ["zero_size_image", "nan_transform"])
def test_invalid_content_rejected(server, case):
    s = raw_client(server.port)
    if case == "zero_size_image":
        raw = bytearray(image_msg(1, "Bad"))
        body = bytearray(raw[HEADER_SIZE:])
        body[6:8] = b"\0\0"
        from pyigtl.messages import CRC64
        raw[50:58] = struct.pack(">Q", CRC64(bytes(body)))
        raw[HEADER_SIZE:] = body
        s.sendall(bytes(raw))
    else:
        m = np.eye(4)
        m[0, 3] = np.nan
        s.sendall(pyigtl.TransformMessage(m, device_name="Bad").pack())
    s.sendall(pyigtl.StringMessage("ok", device_name="Next").pack())
    assert server.slots.wait_newer("Next", 0, 5.0) is not None
    assert server.slots.latest("Bad") is None
    assert server.connections()[0].stats.malformed == 1
    _expect_second_client_served(server)
    s.close()


def test_random_bytes_do_not_stop_the_server(server):
    rng = np.random.default_rng(7)
    for _ in range(5):
        s = raw_client(server.port)
        s.sendall(rng.bytes(4000))
        s.close()
    _expect_second_client_served(server)


def test_several_clients_at_once_and_broadcast(server):
    clients = [IgtlClient("127.0.0.1", server.port).start() for _ in range(3)]
    try:
        for c in clients:
            assert c.wait_connected(5)
        wait_until(lambda: len(server.connections()) == 3, what="3 connections")
        for i, c in enumerate(clients):
            c.send(pyigtl.StringMessage(f"c{i}", device_name=f"From{i}"))
        for i in range(3):
            assert server.slots.wait_newer(f"From{i}", 0, 5.0) is not None
        assert server.send(pyigtl.StringMessage("all", device_name="Bcast")) == 3
        for c in clients:
            it = c.slots.wait_newer("Bcast", 0, 5.0)
            assert it is not None and it.message.string == "all"
    finally:
        for c in clients:
            c.stop()


def test_client_reconnects_with_backoff():
    # Find a free port, start the client first: it must keep trying with growing delays.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = IgtlClient("127.0.0.1", port, backoff_initial_s=0.05, backoff_max_s=0.4).start()
    try:
        wait_until(lambda: client.connect_attempts >= 3, what="retries")
        assert not client.connected
        srv = IgtlServer(port).start()
        try:
            assert client.wait_connected(5)
            wait_until(lambda: len(srv.connections()) == 1, what="accepted")
            srv.send(pyigtl.StringMessage("1", device_name="S"))
            assert client.slots.wait_newer("S", 0, 5) is not None
            # Server goes away and comes back: the client reconnects by itself.
            srv.stop()
            wait_until(lambda: not client.connected, what="disconnect noticed")
        finally:
            srv.stop()
        srv2 = IgtlServer(port).start()
        try:
            assert client.wait_connected(5)
            assert client.connections_made >= 2
        finally:
            srv2.stop()
    finally:
        client.stop()


def test_dead_peer_detected_on_close(server):
    s = raw_client(server.port)
    wait_until(lambda: len(server.connections()) == 1, what="connected")
    s.close()
    wait_until(lambda: not server.connections(), what="dead peer removed")


def test_loopback_binding_by_default():
    srv = IgtlServer(0).start()
    try:
        assert srv._sock is not None and srv._sock.getsockname()[0] == "127.0.0.1"
    finally:
        srv.stop()


@pytest.mark.parametrize("text", ["nohost", "host:", ":123", "h:0", "h:70000", "h:abc"])
def test_bad_host_port(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


@pytest.mark.slow
def test_flood_keeps_memory_bounded_and_latency_flat(server):
    """2000 images of 256 KB as fast as possible: the slot keeps one, pooled buffers are
    reused, and the consumer's latency does not grow over the run."""
    import psutil

    proc = psutil.Process()
    s = raw_client(server.port)
    raw = pyigtl.ImageMessage(np.zeros((1, 512, 256), np.uint16), device_name="Flood").pack()
    lat: list[float] = []
    stop = threading.Event()

    def consume():
        seq = 0
        while not stop.is_set():
            it = server.slots.wait_newer("Flood", seq, 0.5)
            if it is None:
                continue
            seq = it.seq
            lat.append((time.monotonic_ns() - it.received_ns) / 1e6)
            _ = int(it.message.image[0, 0, 0])  # touch it like a consumer would
            threading.Event().wait(0.002)  # a slow consumer

    th = threading.Thread(target=consume)
    th.start()
    rss0 = None
    for i in range(2000):
        s.sendall(raw)
        if i == 200:
            rss0 = proc.memory_info().rss
    wait_until(lambda: server.slots.counters()["Flood"].received == 2000, timeout_s=60,
               what="flood received")
    stop.set()
    th.join(5)
    rss1 = proc.memory_info().rss
    c = server.slots.counters()["Flood"]
    assert c.dropped > 0  # the slow consumer skipped frames instead of queueing them
    assert rss1 - rss0 < 50 * 2**20, f"memory grew by {(rss1 - rss0) / 2**20:.0f} MiB"
    conn = server.connections()[0]
    assert conn._pool.allocations <= 8  # buffers reused, not allocated per frame
    half = len(lat) // 2
    assert np.median(lat[half:]) < max(5 * np.median(lat[:half]), 5.0)
    s.close()
