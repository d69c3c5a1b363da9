"""Hostile peers on the OpenIGTLink transport: decode errors of every kind, declared but
never sent bodies, tricklers, connection floods, the allow list, failing consumers.

Each test states what the server does with the bad peer and checks that a good client
is still served. Waits are on conditions with timeouts, never fixed sleeps.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import numpy as np
import pyigtl
import pytest
from pyigtl.messages import CRC64

from guidance.io import messages as messages_mod
from guidance.io.igtl import (
    IgtlClient,
    IgtlServer,
    TransportConfig,
    exposure_warning,
    parse_allow_list,
)
from guidance.io.messages import HEADER_SIZE
from tests.peers import raw_client, read_until_listening, wait_until


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def image(value: int, name: str = "Image", v2: bool = False) -> bytes:
    m = pyigtl.ImageMessage(np.full((1, 16, 16), value, np.uint8), device_name=name)
    if v2:
        m.header_version = 2
        m.metadata = {"Modality": "US"}
    return m.pack()


def with_metadata_encoding(packed: bytes, encoding: int) -> bytes:
    """A v2 message whose first metadata entry claims value encoding ``encoding``
    (CRC recomputed: the bytes are otherwise valid)."""
    raw = bytearray(packed)
    body = raw[HEADER_SIZE:]
    _ext, meta_header, meta_body, _id = struct.unpack_from(">HHII", body)
    struct.pack_into(">H", body, len(body) - meta_body - meta_header + 2 + 2, encoding)
    raw[HEADER_SIZE:] = body
    raw[50:58] = struct.pack(">Q", CRC64(bytes(body)))
    return bytes(raw)


def expect_served(server: IgtlServer, name: str = "After") -> None:
    c = raw_client(server.port)
    try:
        c.sendall(pyigtl.StringMessage("still here", device_name=name).pack())
        item = server.slots.wait_newer(name, 0, 10.0)
        assert item is not None, "a good client was not served"
        assert item.message.string == "still here"
    finally:
        c.close()


@pytest.fixture
def server():
    srv = IgtlServer(0, config=TransportConfig(body_timeout_s=1.0, message_timeout_s=3.0,
                                               max_body_bytes=256 << 20)).start()
    yield srv
    srv.stop()


def test_unknown_metadata_encoding_then_20_good_frames_on_the_same_connection(server):
    """pyigtl raises a TypeError for it (``raise("Unsupported encoding")``); that frame is
    rejected with its reason, counted, and the 20 after it are all received."""
    s = raw_client(server.port)
    s.sendall(with_metadata_encoding(image(1, "Frames", v2=True), 2026))
    for v in range(20):
        s.sendall(image(10 + v, "Frames", v2=True))
    wait_until(lambda: "Frames" in server.slots.counters()
               and server.slots.counters()["Frames"].received == 20, what="20 good frames")
    conn = server.connections()[0]
    assert conn.stats.rejected == {"malformed": 1}
    assert "value encoding 2026" in conn.stats.errors[0]
    assert server.slots.latest("Frames").message.image[0, 0, 0] == 29
    s.close()


class _Raises(pyigtl.StringMessage):
    exc: type[BaseException] = TypeError

    def _unpack_content(self, content):
        raise self.exc("injected")


@pytest.mark.parametrize("exc", [TypeError, ValueError, struct.error, UnicodeDecodeError,
                                 KeyError, IndexError, AttributeError, ZeroDivisionError])
def test_any_decoder_exception_rejects_one_message_and_the_connection_goes_on(
        server, monkeypatch, exc):
    def make(*_a):
        if exc is UnicodeDecodeError:
            return UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return exc("injected")

    broken = type("Broken", (_Raises,), {"_unpack_content":
                                         lambda self, c: (_ for _ in ()).throw(make())})
    monkeypatch.setitem(messages_mod.MESSAGE_CLASSES, "STRING", broken)
    s = raw_client(server.port)
    s.sendall(pyigtl.StringMessage("boom", device_name="Bad").pack())
    s.sendall(image(7, "Next"))
    assert server.slots.wait_newer("Next", 0, 10.0) is not None
    stats = server.connections()[0].stats
    assert stats.rejected == {f"decode:{exc.__name__}": 1}
    assert f"cannot decode: {exc.__name__}" in stats.errors[0]
    assert server.slots.latest("Bad") is None
    s.close()


def test_an_unexpected_error_in_the_receive_loop_closes_the_connection_with_its_reason(
        server, monkeypatch):
    """Last resort: the reader never dies leaving its socket open; the connection is
    closed, the reason logged and kept, the peer sees the close, others are served."""
    from guidance.io import igtl_connection

    def explode(header, body):
        raise RuntimeError("bug in the decoder")

    monkeypatch.setattr(igtl_connection, "decode", explode)
    s = raw_client(server.port)
    s.sendall(image(1, "X"))
    wait_until(lambda: server.closed_count == 1, what="connection closed")
    closed = server.closed_connections[-1]
    assert closed.rejected == {"internal:RuntimeError": 1}
    assert "bug in the decoder" in closed.close_reason
    assert s.recv(1) == b""  # the peer sees the close: no silent, reader-less socket
    monkeypatch.undo()
    expect_served(server)


def test_a_failing_raw_listener_or_slot_listener_loses_nothing(server):
    def bad_raw(*_a):
        raise OSError("disk full")

    def bad_listener(_item):
        raise ValueError("consumer bug")

    server.raw_listeners.append(bad_raw)
    server.slots.add_listener(bad_listener)
    s = raw_client(server.port)
    for v in range(3):
        s.sendall(image(v, "Kept"))
    wait_until(lambda: "Kept" in server.slots.counters()
               and server.slots.counters()["Kept"].received == 3, what="3 frames stored")
    stats = server.connections()[0].stats
    assert stats.rejected == {"listener:OSError": 3}
    assert server.slots.listener_errors == 3
    assert server.slots.latest("Kept").message.image[0, 0, 0] == 2
    s.close()


def test_a_failing_on_sent_callback_does_not_stop_sending(server):
    c = IgtlClient("127.0.0.1", server.port).start()
    try:
        assert c.wait_connected(10)
        wait_until(lambda: len(server.connections()) == 1, what="connection")

        def bad(_ns):
            raise RuntimeError("callback bug")

        server.send(pyigtl.StringMessage("one", device_name="Out1"), on_sent=bad)
        assert c.slots.wait_newer("Out1", 0, 10.0) is not None
        server.send(pyigtl.StringMessage("two", device_name="Out2"))
        assert c.slots.wait_newer("Out2", 0, 10.0) is not None
        wait_until(lambda: server.connections()[0].stats.rejected.get("on_sent:RuntimeError")
                   == 1, what="the callback failure counted")
    finally:
        c.stop()


def test_declared_200_mib_bodies_trickling_cost_memory_by_arrival_not_declaration():
    """8 connections each declaring a 200 MiB IMAGE body and sending a few KiB: the
    process grows by what arrived (a 1 MiB start buffer each), not 8 x 200 MiB."""
    srv = IgtlServer(0, config=TransportConfig(max_body_bytes=256 << 20, body_timeout_s=5.0,
                                               message_timeout_s=30.0)).start()
    socks: list[socket.socket] = []
    try:
        before = rss_mb()
        for k in range(8):
            s = raw_client(srv.port)
            hdr = struct.pack(">H12s20sIIQQ", 1, b"IMAGE", f"Big{k}".encode(), 0, 0,
                              200 << 20, 0)
            s.sendall(hdr + b"\0" * 4096)
            socks.append(s)
        wait_until(lambda: len(srv.connections()) == 8
                   and all(c.stats.bytes == 0 for c in srv.connections()), what="8 peers")
        for _ in range(3):  # trickle on
            for s in socks:
                s.sendall(b"\0" * 1024)
        # Everything sent so far has been read once the kernel's receive queues are empty.
        wait_until(lambda: rss_mb() - before < 150 and _server_read_all(srv, socks),
                   timeout_s=10, what="trickled bytes read")
        grown = rss_mb() - before
        assert grown < 150, f"RSS grew {grown:.0f} MB for 8 declared 200 MiB bodies"
        assert all(not c.closed for c in srv.connections())  # within their deadline
        expect_served(srv)
    finally:
        for s in socks:
            s.close()
        srv.stop()


def _server_read_all(srv: IgtlServer, socks: list[socket.socket]) -> bool:
    # The server has no per-message progress counter; the peers' send queues being empty
    # (TIOCOUTQ) says the bytes left the client side and the 1 MiB buffers absorbed them.
    import fcntl
    import termios

    out = []
    for s in socks:
        buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        out.append(struct.unpack("i", buf)[0])
    return all(n == 0 for n in out)


def test_a_1_byte_per_second_sender_is_dropped_at_the_message_deadline():
    cfg = TransportConfig(body_timeout_s=2.0, message_timeout_s=1.5)
    srv = IgtlServer(0, config=cfg).start()
    stop = threading.Event()
    try:
        s = raw_client(srv.port)
        raw = image(1, "Slow")
        t0 = time.monotonic()

        def trickle() -> None:
            for b in raw:
                if stop.wait(0.2):  # each byte well within body_timeout_s
                    return
                try:
                    s.send(bytes([b]))
                except OSError:
                    return

        th = threading.Thread(target=trickle, daemon=True)
        th.start()
        wait_until(lambda: srv.closed_count == 1, timeout_s=10, what="trickler dropped")
        took = time.monotonic() - t0
        closed = srv.closed_connections[-1]
        assert closed.rejected == {"message_timeout": 1}
        assert "message incomplete after 1.5 s" in closed.close_reason
        assert 1.4 < took < 5.0
        assert srv.slots.latest("Slow") is None
        expect_served(srv)
    finally:
        stop.set()
        srv.stop()


def test_300_idle_connections_are_capped_and_the_good_client_is_served():
    srv = IgtlServer(0, config=TransportConfig()).start()  # default cap: 16
    idle: list[socket.socket] = []
    good = raw_client(srv.port)
    try:
        good.sendall(pyigtl.StringMessage("first", device_name="Good").pack())
        assert srv.slots.wait_newer("Good", 0, 10.0) is not None
        for _ in range(300):
            idle.append(raw_client(srv.port))
        wait_until(lambda: sum(srv.refused.values()) == 300 - 15, what="refusals")
        assert len(srv.connections()) == 16
        assert srv.refused == {"too_many": 285}
        assert threading.active_count() <= 150
        good.sendall(pyigtl.StringMessage("second", device_name="Good").pack())
        item = srv.slots.wait_newer("Good", 1, 10.0)
        assert item is not None and item.message.string == "second"
    finally:
        for s in idle:
            s.close()
        good.close()
        srv.stop()


def test_allow_list_refuses_other_hosts_and_admits_listed_ones():
    srv = IgtlServer(0, config=TransportConfig(allow=parse_allow_list("10.1.2.0/24"))).start()
    try:
        s = raw_client(srv.port)
        assert s.recv(1) == b""  # closed at once
        wait_until(lambda: srv.refused == {"not_allowed": 1}, what="refusal counted")
        assert srv.connections() == []
    finally:
        srv.stop()
    srv = IgtlServer(0, config=TransportConfig(allow=parse_allow_list("10.1.2.3,127.0.0.1"))
                     ).start()
    try:
        expect_served(srv)
        assert srv.refused == {}
    finally:
        srv.stop()


def test_parse_allow_list_accepts_ips_networks_and_names_and_names_bad_entries():
    nets = parse_allow_list("127.0.0.1, 10.0.0.0/8,localhost")
    assert ipaddress.ip_network("10.0.0.0/8") in nets
    assert ipaddress.ip_network("127.0.0.1/32") in nets
    with pytest.raises(ValueError, match=r"'no-such-host\.invalid'"):
        parse_allow_list("no-such-host.invalid")
    with pytest.raises(ValueError, match="empty entry"):
        parse_allow_list("10.0.0.1,,10.0.0.2")


def test_exposure_warning_only_off_loopback():
    assert exposure_warning("127.0.0.1") is None
    assert exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    text = exposure_warning("0.0.0.0")
    assert text is not None and "no authentication" in text and "--allow" in text
    listed = exposure_warning("0.0.0.0", parse_allow_list("10.0.0.7"))
    assert listed is not None and "only from 10.0.0.7/32" in listed


def test_server_bound_off_loopback_carries_the_warning():
    srv = IgtlServer(0, host="0.0.0.0").start()
    try:
        assert srv.exposure is not None and "no authentication" in srv.exposure
    finally:
        srv.stop()
    srv = IgtlServer(0).start()
    try:
        assert srv.exposure is None
    finally:
        srv.stop()


@pytest.mark.parametrize("kwargs", [{"message_timeout_s": 0}, {"message_timeout_s": float("nan")},
                                    {"message_timeout_s": float("inf")}, {"max_connections": 0}])
def test_transport_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TransportConfig(**kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_serves_a_good_client_every_reply_through_hostile_peers_and_sigint_writes_summary(
        tmp_path):
    """`guidance run` with, at once: a trickler, a declared-but-never-sent 200 MiB body,
    a flood of idle connections past the cap, an unknown metadata encoding, random
    bytes and an oversize header. The well-behaved client gets a reply to every frame;
    SIGINT then writes summary.json with every rejection counted by reason."""
    import json
    import signal
    import subprocess
    import sys

    port = _free_port()
    out = tmp_path / "run"
    run = subprocess.Popen(
        [sys.executable, "-m", "guidance.cli.main", "run", "--listen", str(port), "--out",
         str(out), "--modality", "us", "--max-connections", "8", "--message-timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hostile: list[socket.socket] = []
    stop = threading.Event()
    good = IgtlClient("127.0.0.1", port)
    try:
        assert run.stdout is not None
        read_until_listening(run.stdout)
        good.start()
        assert good.wait_connected(20)

        def connect() -> socket.socket:
            s = raw_client(port)
            hostile.append(s)
            return s

        connect().sendall(with_metadata_encoding(image(1, "Meta", v2=True), 99))
        connect().sendall(struct.pack(">H12s20sIIQQ", 1, b"IMAGE", b"Huge", 0, 0, 1 << 40, 0))
        connect().sendall(np.random.default_rng(3).bytes(3000))
        connect().sendall(struct.pack(">H12s20sIIQQ", 1, b"IMAGE", b"Declared", 0, 0,
                                      200 << 20, 0) + b"\0" * 1024)
        slow = connect()
        raw_slow = image(2, "Slow")

        def trickle() -> None:
            for b in raw_slow:
                if stop.wait(0.3):
                    return
                try:
                    slow.send(bytes([b]))
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        for _ in range(40):  # idle flood past the cap of 8
            connect()

        rng = np.random.default_rng(0)
        seq = 0
        pace = threading.Event()
        for k in range(40):  # 10 frames/s: 4 s, past the hostile peers' 2 s deadline
            pace.wait(0.1)
            msg = pyigtl.ImageMessage(rng.integers(0, 255, (1, 128, 128), dtype=np.uint8),
                                      device_name="Image_Reference", timestamp=100.0 + k)
            msg.header_version = 2
            msg.metadata = {"Modality": "US"}
            assert good.send(msg)
            deadline = time.monotonic() + 20.0
            while True:  # the reply to this frame carries its timestamp
                reply = good.slots.wait_newer("GuidanceWarning", seq,
                                              max(0.0, deadline - time.monotonic()))
                assert reply is not None, f"no reply to frame {k}"
                seq = reply.seq
                if reply.timestamp_s == pytest.approx(100.0 + k, abs=1e-6):
                    break
        run.send_signal(signal.SIGINT)
        stdout, err = run.communicate(timeout=60)
    finally:
        stop.set()
        good.stop()
        for s in hostile:
            s.close()
        run.kill()
    assert run.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    t = summary["transport"]
    assert t["rejected"]["malformed"] == 1  # the unknown metadata encoding
    assert t["rejected"]["bad_header"] >= 2  # oversize body; the random bytes
    assert t["rejected"]["message_timeout"] >= 2  # the trickler and the declared body
    assert t["refused_connections"]["too_many"] >= 30
    assert summary["frames_received"] == 40
    assert "transport: rejected" in stdout and "connections refused too_many" in stdout
