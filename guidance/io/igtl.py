"""OpenIGTLink transport: server and client over TCP, with our own socket handling.

What it guarantees (DESIGN.md, issue "live guidance loop"):

* Event-driven: a receive thread per connection blocks in ``recv_into``; a consumer
  waiting in :class:`~guidance.io.slots.LatestSlots` wakes when a message completes.
  Nothing polls with ``sleep``.
* Bodies are received into pooled, preallocated buffers (:class:`BufferPool`), never
  grown chunk by chunk. On Linux the kernel fills the whole body in one ``recv_into``
  (``MSG_WAITALL``, with ``SO_RCVTIMEO`` as the gap limit): the thread is not woken into
  Python for every segment, which is what made the transport's tail on a busy machine;
  the CRC-64 (``fastcrc``, ~12 us for 512 KiB) is then computed once. Elsewhere the
  body is read chunk by chunk with a socket timeout, the CRC computed as bytes arrive.
* Latest value wins per device name (received/dropped counters per device), in and out:
  a slow peer never makes our outgoing queue grow either.
* Robust: the body size is checked against a cap before allocating; bad CRC, malformed
  or unknown messages, and any error of the decoder on one message, are rejected with a
  logged reason counted per reason (``ConnectionStats.rejected``) and the connection
  goes on (or, when framing itself is lost, only that connection is closed, with its
  reason); a connection is never left open without its reader: whatever ends the
  receive loop closes the socket.
* Bounded by what arrives, not by what is declared: a body buffer not already in the
  pool starts at 1 MiB and doubles as bytes arrive; a message must arrive whole within
  ``message_timeout_s`` (a 1 byte/s sender is dropped) and its bytes must not stop for
  ``body_timeout_s``; the server caps its connections (``max_connections``) and may
  accept only listed hosts (``allow``), each refusal logged with its reason.
* Dead peers are found by TCP keepalive and failed sends; the server serves several
  clients at once; the client reconnects with exponential backoff; the server binds to
  loopback unless told otherwise, and says so loudly when it is not (OpenIGTLink has no
  authentication: :func:`exposure_warning`).
* Every message carries the sender's timestamp and our ``time.monotonic_ns()`` at the
  moment its last byte was received.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from pyigtl.messages import MessageBase

from guidance.io.igtl_connection import (
    Connection,
    ConnectionStats,
    RawListener,
    TransportConfig,
)
from guidance.io.pack import pack_message
from guidance.io.slots import LatestSlots

__all__ = [
    "Connection",
    "ConnectionStats",
    "IgtlClient",
    "IgtlServer",
    "RawListener",
    "TransportConfig",
    "exposure_warning",
    "parse_allow_list",
    "parse_host_port",
]

log = logging.getLogger(__name__)

#: Refusals of one reason are logged at most this often (a flood of 300 connections
#: writes a few lines, with counts, not 300).
_REFUSAL_LOG_EVERY_S = 2.0


def parse_allow_list(text: str | Iterable[str]) -> tuple[ipaddress.IPv4Network
                                                         | ipaddress.IPv6Network, ...]:
    """``HOST[,HOST...]`` as networks: an IP (``10.0.0.7``), a network
    (``10.0.0.0/24``) or a host name, resolved now to its addresses.

    Raises:
        ValueError: naming the entry that is neither.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in items:
        if not item:
            raise ValueError(f"allow list: empty entry in {text!r}")
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(item, None, proto=socket.IPPROTO_TCP)
        except OSError as e:
            raise ValueError(f"allow list: {item!r} is not an IP, a network or a known "
                             f"host name ({e})") from None
        for info in infos:
            nets.append(ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]))
    return tuple(dict.fromkeys(nets))


def _allowed(host: str, allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
             ) -> bool:
    if not allow:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in allow if net.version == addr.version)


def exposure_warning(host: str, allow: tuple[ipaddress.IPv4Network
                                             | ipaddress.IPv6Network, ...] = ()) -> str | None:
    """A warning when ``host`` is not a loopback address (``None`` when it is).

    OpenIGTLink has no authentication and no encryption: whoever reaches the port can
    send frames and poses and read the results.
    """
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        addrs = {host}
    if addrs and all(ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addrs):
        return None
    who = ("only from " + ", ".join(str(n) for n in allow)) if allow else "from any host"
    return (f"listening on {host} (not loopback), accepting connections {who}: OpenIGTLink "
            "has no authentication or encryption; anyone who reaches this port can send "
            "frames and poses and read the results. Use it only on an isolated network, "
            "behind a firewall or VPN, with --allow HOST[,HOST] listing the scanner and "
            "tracker hosts.")


class _RefusalLog:
    """Log refusals of one kind at most every few seconds, with the count between."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, code: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(code, -1e9) < _REFUSAL_LOG_EVERY_S:
            self._held[code] = self._held.get(code, 0) + 1
            return
        held = self._held.pop(code, 0)
        self._last[code] = now
        more = f" ({held} more refused for the same reason since the last line)" if held else ""
        log.warning("%s%s", text, more)


def parse_host_port(text: str, what: str = "address") -> tuple[str, int]:
    """Parse ``HOST:PORT``.

    Raises:
        ValueError: naming ``what`` and the bad text.
    """
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{what}: port must be a number, got {port_s!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{what}: port must be 1..65535, got {port}")
    return host.strip("[]"), port



class IgtlServer:
    """OpenIGTLink server: accepts several clients; all feed one :class:`LatestSlots`.

    Args:
        port: TCP port (0 picks a free one; see :attr:`port` after :meth:`start`).
        host: interface to bind; loopback by default. Binding another interface must be
            asked for explicitly (``--bind``).
        config: transport settings.
        slots: where received messages go (a new one by default).
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        config: TransportConfig | None = None,
        slots: LatestSlots | None = None,
    ) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._requested_port = port
        self.config = config or TransportConfig()
        self.slots = slots or LatestSlots()
        self.raw_listeners: list[RawListener] = []
        self._sock: socket.socket | None = None
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Counters of the last 64 closed connections (the newest last).
        self.closed_connections: deque[ConnectionStats] = deque(maxlen=64)
        #: Counters summed over every closed connection.
        self.closed_totals = ConnectionStats()
        self.closed_count = 0
        #: Connections refused, per reason (``not_allowed``, ``too_many``).
        self.refused: dict[str, int] = {}
        #: The warning of :func:`exposure_warning` when not bound to loopback.
        self.exposure: str | None = None
        self._refusal_log = _RefusalLog()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._sock is None:
            return self._requested_port
        return int(self._sock.getsockname()[1])

    def start(self) -> IgtlServer:
        """Bind, listen and start accepting. Returns self."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self._requested_port}: {e}") from e
        sock.listen(64)
        self._sock = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, name="igtl-accept",
                                               daemon=True)
        self._accept_thread.start()
        log.info("OpenIGTLink server listening on %s:%d (at most %d connections%s)",
                 self.host, self.port, self.config.max_connections,
                 ", from " + ", ".join(map(str, self.config.allow)) if self.config.allow
                 else "")
        self.exposure = exposure_warning(self.host, self.config.allow)
        if self.exposure:
            log.warning("%s", self.exposure)
        return self

    def _refuse(self, csock: socket.socket, code: str, text: str) -> None:
        with self._lock:
            self.refused[code] = self.refused.get(code, 0) + 1
        self._refusal_log(code, text)
        with contextlib.suppress(OSError):
            csock.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        cfg = self.config
        while not self._stopping.is_set():
            try:
                csock, addr = self._sock.accept()
            except OSError:
                break
            peer = f"{addr[0]}:{addr[1]}"
            if not _allowed(str(addr[0]), cfg.allow):
                self._refuse(csock, "not_allowed",
                             f"refused connection from {peer}: not in the allow list "
                             f"({', '.join(map(str, cfg.allow))})")
                continue
            with self._lock:
                open_now = len(self._conns)
            if open_now >= cfg.max_connections:
                self._refuse(csock, "too_many",
                             f"refused connection from {peer}: {open_now} connections open, "
                             f"the limit is {cfg.max_connections} (--max-connections)")
                continue
            try:
                conn = Connection(csock, peer, self.slots, self.config, self.raw_listeners,
                                  on_close=self._forget)
            except OSError as e:  # the peer left before we could set it up
                log.info("client %s gone at once: %s", peer, e)
                with contextlib.suppress(OSError):
                    csock.close()
                continue
            with self._lock:
                self._conns.append(conn)
            log.info("client connected: %s", peer)
            conn.start()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
                self.closed_connections.append(conn.stats)
                self.closed_totals.merge(conn.stats)
                self.closed_count += 1

    def connections(self) -> list[Connection]:
        """The open client connections."""
        with self._lock:
            return list(self._conns)

    def send(self, message: MessageBase, on_sent: Callable[[int], None] | None = None) -> int:
        """Pack once and queue to every client (latest per device). Returns the number
        of clients it was queued to."""
        packed = pack_message(message)
        key = f"{message.message_type}:{message.device_name}"
        conns = self.connections()
        for c in conns:
            c.send_packed(key, packed, on_sent)
        return len(conns)

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        for c in self.connections():
            c.close("server stopping")
            c.join()
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)

    def __enter__(self) -> IgtlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IgtlClient:
    """OpenIGTLink client with reconnection (exponential backoff).

    Args:
        host, port: the server.
        config: transport settings.
        slots: where received messages go (a new one by default).
        backoff_initial_s, backoff_max_s: delay before the first reconnection attempt,
            doubled after each failure up to the maximum.
    """

    def __init__(
        self,
        host: str,
        port: int,
        config: TransportConfig | None = None,
        slots: LatestSlots | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, "
                f"{backoff_max_s}"
            )
        self.host, self.port = host, port
        self.config = config or TransportConfig()
        self.slots = slots or LatestSlots()
        self.raw_listeners: list[RawListener] = []
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._connected = threading.Event()
        self.connect_attempts = 0
        self.connections_made = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or ``timeout_s`` passes."""
        return self._connected.wait(timeout_s)

    @property
    def stats(self) -> ConnectionStats | None:
        """Counters of the current (or last) connection."""
        return self._conn.stats if self._conn is not None else None

    def start(self) -> IgtlClient:
        """Start the connect/receive thread. Returns self."""
        self._thread = threading.Thread(target=self._run, name="igtl-client", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            self.connect_attempts += 1
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as e:
                self.last_error = f"cannot connect to {self.host}:{self.port}: {e}"
                log.info("%s; retrying in %.2f s", self.last_error, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2.0, self.backoff_max_s)
                continue
            peer = f"{self.host}:{self.port}"
            conn = Connection(sock, peer, self.slots, self.config, self.raw_listeners)
            self._conn = conn
            self.connections_made += 1
            self._connected.set()
            log.info("connected to %s", peer)
            started = time.monotonic()
            conn.run_receive()  # returns when the connection ends
            self._connected.clear()
            conn.close("connection ended")
            conn.join()
            if time.monotonic() - started > 5.0:
                delay = self.backoff_initial_s  # it worked for a while: start over
            if self._stop.wait(delay):
                break
            delay = min(delay * 2.0, self.backoff_max_s)

    def send(self, message: MessageBase, on_sent: Callable[[int], None] | None = None) -> bool:
        """Queue a message (latest per device). Returns False when not connected."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        conn.send_packed(f"{message.message_type}:{message.device_name}", pack_message(message),
                         on_sent)
        return True

    def send_packed(self, key: str, packed: bytes) -> bool:
        """Queue already packed bytes under ``key`` (used by replay)."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        conn.send_packed(key, packed)
        return True

    def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._stop.set()
        if self._conn is not None:
            self._conn.close("client stopping")
        if self._thread is not None:
            self._thread.join(3.0)

    def __enter__(self) -> IgtlClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
