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
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyigtl.messages import MessageBase

from guidance.io.bufferpool import BufferPool
from guidance.io.messages import (
    HEADER_SIZE,
    Header,
    MalformedMessage,
    crc64,
    decode,
    parse_header,
)
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

#: ``fn(header_bytes, body_view, received_ns, peer)``: sees every accepted message's
#: exact bytes (the recorder). Must be quick; it may keep ``body_view``.
RawListener = Callable[[bytes, memoryview, int, str], None]

_SMALL_BODY = 64 * 1024
#: A body buffer not already in the pool starts this large and doubles as bytes arrive.
_GROW_START = 1024 * 1024
#: Refusals of one reason are logged at most this often (a flood of 300 connections
#: writes a few lines, with counts, not 300).
_REFUSAL_LOG_EVERY_S = 2.0
#: Receive whole bodies in the kernel (``MSG_WAITALL`` bounded by ``SO_RCVTIMEO``): Linux,
#: where both are documented to combine so (a timeout returns what arrived, or EAGAIN).
_WAITALL = sys.platform.startswith("linux") and hasattr(socket, "MSG_WAITALL")


@dataclass(frozen=True)
class TransportConfig:
    """Transport settings.

    Attributes:
        max_body_bytes: largest accepted body; larger ones are refused before allocating
            (and what is allocated grows with the bytes that arrive, not the declaration).
        check_crc: verify the CRC-64 of every body (on by default).
        body_timeout_s: a message whose bytes stop arriving for this long is dropped
            with its connection (truncated-then-stalled peer).
        message_timeout_s: a whole message (header and body) must arrive within this
            long from its first byte, else the connection is closed (a trickling
            sender). 10 s holds a 256 MiB body at 200 Mbit/s.
        keepalive_s: TCP keepalive idle/interval base used to detect dead peers.
        send_timeout_s: a send blocked this long marks the peer dead.
        max_connections: server only: connections open at once; more are refused (logged).
        allow: server only: peers accepted (IP networks; empty: any peer). See
            :func:`parse_allow_list`.
    """

    max_body_bytes: int = 256 * 1024 * 1024
    check_crc: bool = True
    body_timeout_s: float = 5.0
    message_timeout_s: float = 10.0
    keepalive_s: float = 2.0
    send_timeout_s: float = 5.0
    max_connections: int = 16
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        for name in ("body_timeout_s", "message_timeout_s", "keepalive_s", "send_timeout_s"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


@dataclass
class ConnectionStats:
    """Counters of one connection.

    Attributes:
        rejected: messages (or, for ``stalled``, ``message_timeout``, ``bad_header``,
            ``internal``, the connection) rejected, per reason code: ``bad_crc``,
            ``malformed`` (fails its type's checks), ``decode:<ExceptionType>`` (the
            decoder failed), ``listener:<ExceptionType>`` (a consumer of the message
            failed; the message is still delivered), ``send:<ExceptionType>``...
        errors: the last 20 reasons in words.
        close_reason: why the connection closed ("" while open).
    """

    messages: int = 0
    bytes: int = 0
    bad_crc: int = 0
    malformed: int = 0
    unknown: int = 0
    sent: int = 0
    send_dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    close_reason: str = ""

    def note_error(self, reason: str) -> None:
        """Keep the last few rejection reasons for status displays."""
        self.errors.append(reason)
        del self.errors[:-20]

    def reject(self, code: str, text: str) -> None:
        """Count a rejection under ``code`` and keep its text."""
        self.rejected[code] = self.rejected.get(code, 0) + 1
        self.note_error(text)

    def merge(self, other: ConnectionStats) -> None:
        """Add ``other``'s counters to these (totals over closed connections)."""
        for name in ("messages", "bytes", "bad_crc", "malformed", "unknown", "sent",
                     "send_dropped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, n in other.rejected.items():
            self.rejected[code] = self.rejected.get(code, 0) + n
        self.errors.extend(other.errors)
        del self.errors[:-20]


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


class _PeerClosed(Exception):
    pass


class _Stalled(Exception):
    """A message that stopped arriving (``stalled``) or took too long (``message_timeout``)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


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


def _set_keepalive(sock: socket.socket, seconds: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s = max(1, round(seconds))
    for opt, val in (("TCP_KEEPIDLE", s), ("TCP_KEEPINTVL", s), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Room for a whole 512x512x16-bit frame in the kernel: fewer, larger reads.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)


class Connection:
    """One TCP peer: a receive thread and a send thread.

    Received messages go to ``slots``; outgoing messages wait in a latest-per-device
    slot and are sent by the send thread, so a peer that does not read never blocks
    the caller of :meth:`send`.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        slots: LatestSlots,
        config: TransportConfig,
        raw_listeners: list[RawListener],
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.slots = slots
        self.config = config
        self.stats = ConnectionStats()
        self._raw_listeners = raw_listeners
        self._on_close = on_close
        self._pool = BufferPool()
        self._scratch = bytearray(_SMALL_BODY)
        self._closed = threading.Event()
        self._out_cond = threading.Condition(threading.Lock())
        self._outgoing: OrderedDict[str, tuple[bytes, Callable[[int], None] | None]] = (
            OrderedDict()
        )
        _set_keepalive(sock, config.keepalive_s)
        #: The receive window now set as ``SO_RCVTIMEO`` (s; None: no limit).
        self._window_s: float | None = None
        if _WAITALL:
            sock.settimeout(None)  # blocking: the kernel's SO_RCVTIMEO is the only limit
            self._set_window(None)
        self._rx = threading.Thread(target=self._receive_loop, name=f"igtl-rx {peer}", daemon=True)
        self._tx = threading.Thread(target=self._send_loop, name=f"igtl-tx {peer}", daemon=True)

    @property
    def closed(self) -> bool:
        """True once the connection is closed (peer gone, error, or :meth:`close`)."""
        return self._closed.is_set()

    def start(self) -> None:
        """Start the receive and send threads."""
        self._rx.start()
        self._tx.start()

    def run_receive(self) -> None:
        """Run the receive loop in the calling thread (used by the client), with only
        the send thread started in the background."""
        self._tx.start()
        self._receive_loop()

    def close(self, reason: str = "closed") -> None:
        """Close the socket (wakes both threads); idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.stats.close_reason = reason
        log.info("connection %s closed: %s", self.peer, reason)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._out_cond:
            self._out_cond.notify_all()
        if self._on_close is not None:
            self._on_close(self)

    def join(self, timeout_s: float = 2.0) -> None:
        """Wait for both threads to end."""
        for t in (self._rx, self._tx):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout_s)

    # -- sending ---------------------------------------------------------------------

    def send_packed(
        self, device_key: str, packed: bytes, on_sent: Callable[[int], None] | None = None
    ) -> None:
        """Queue packed bytes as the newest message for ``device_key``; an older one not
        yet sent is replaced (counted in ``send_dropped``). ``on_sent(ns)`` is called with
        ``time.monotonic_ns()`` once the bytes are handed to the kernel."""
        if self._closed.is_set():
            return
        with self._out_cond:
            if device_key in self._outgoing:
                self.stats.send_dropped += 1
            self._outgoing[device_key] = (packed, on_sent)
            self._out_cond.notify()

    def _send_loop(self) -> None:
        try:
            self._send_messages()
        except Exception as e:  # last resort: never a connection without its sender
            log.exception("%s: send loop failed", self.peer)
            self.stats.reject(f"send:{type(e).__name__}", f"send loop failed: {e}")
            self.close(f"send loop failed: {type(e).__name__}: {e}")

    def _send_messages(self) -> None:
        while True:
            with self._out_cond:
                while not self._outgoing and not self._closed.is_set():
                    self._out_cond.wait()
                if self._closed.is_set():
                    return
                _key, (packed, on_sent) = self._outgoing.popitem(last=False)
            try:
                self._sendall(packed)
            except OSError as e:
                self.close(f"send failed: {e}")
                return
            self.stats.sent += 1
            if on_sent is not None:
                try:
                    on_sent(time.monotonic_ns())
                except Exception as e:  # the caller's bookkeeping; the message went out
                    log.exception("%s: on_sent callback failed", self.peer)
                    self.stats.reject(f"on_sent:{type(e).__name__}", f"on_sent failed: {e}")

    def _sendall(self, data: bytes) -> None:
        # sendall with an overall deadline, without touching the socket's timeout (the
        # receive thread uses it): wait for writability with select.
        import select

        view = memoryview(data)
        deadline = time.monotonic() + self.config.send_timeout_s
        while view:
            try:
                n = self.sock.send(view, socket.MSG_DONTWAIT)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"peer did not read for {self.config.send_timeout_s} s")
            select.select([], [self.sock], [], remaining)

    # -- receiving -------------------------------------------------------------------

    def _set_window(self, seconds: float | None) -> None:
        """Set ``SO_RCVTIMEO`` (None: wait without limit), skipping the system call when
        it is already (within 1 ms) what is asked."""
        old = self._window_s
        if seconds == old or (seconds is not None and old is not None
                              and abs(seconds - old) < 1e-3):
            return
        s = 0.0 if seconds is None else max(seconds, 1e-3)
        sec = int(s)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("ll", sec, int((s - sec) * 1e6)))
        self._window_s = seconds

    def _recv_some(self, view: memoryview, window_s: float | None) -> int | None:
        """Receive into ``view``, waiting at most ``window_s`` (None: no limit) for bytes.

        Returns the byte count (0: the peer closed), or None when nothing came within
        the window. With ``MSG_WAITALL`` the kernel fills the whole view unless the
        window ends first (then what arrived is returned)."""
        if _WAITALL:
            self._set_window(window_s)
            try:
                return self.sock.recv_into(view, len(view), socket.MSG_WAITALL)
            except BlockingIOError:  # SO_RCVTIMEO passed with nothing received
                return None
        self.sock.settimeout(window_s)
        try:
            return self.sock.recv_into(view)
        except TimeoutError:
            return None

    def _recv_exact(self, view: memoryview, n: int, crc: int | None, deadline: float) -> int | None:
        """Fill ``view[:n]`` before ``deadline`` (monotonic s), no gap longer than
        ``body_timeout_s``; returns the running CRC (or None when not checked)."""
        got = 0
        cfg = self.config
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Stalled(
                    "message_timeout",
                    f"message incomplete after {cfg.message_timeout_s:g} s "
                    f"(message_timeout_s): {got} of {n} bytes",
                )
            k = self._recv_some(view[got:n], min(cfg.body_timeout_s, remaining))
            if k is None:
                if time.monotonic() >= deadline - 1e-3:
                    continue  # the whole-message deadline: reported at the top of the loop
                raise _Stalled(
                    "stalled",
                    f"message stalled: {got} of {n} bytes after {cfg.body_timeout_s:g} s",
                )
            if k == 0:
                raise _PeerClosed(f"peer closed the connection ({got} of {n} bytes received)")
            if crc is not None:
                crc = crc64(view[got : got + k], crc)
            got += k
        return crc

    def _recv_body(self, header: Header, deadline: float) -> tuple[bytearray, int | None]:
        """Receive the body into a buffer that grows with the bytes that arrive: a pooled
        buffer when one is free and large enough, else one that starts at 1 MiB and
        doubles (so a header declaring 200 MiB costs 1 MiB until the bytes come).
        Returns (buffer, CRC or None)."""
        n = header.body_size
        crc: int | None = 0 if self.config.check_crc else None
        if header.message_type != "IMAGE" and n <= _SMALL_BODY:
            return self._scratch, self._recv_exact(memoryview(self._scratch), n, crc, deadline)
        buf = self._pool.acquire(n, start_bytes=_GROW_START)
        got = 0
        while True:
            target = min(n, len(buf))
            with memoryview(buf) as view:
                crc = self._recv_exact(view[got:target], target - got, crc, deadline)
            got = target
            if got >= n:
                return buf, crc
            buf = self._pool.grow(buf, min(n, 2 * len(buf)), keep_bytes=got)

    def _receive_loop(self) -> None:
        reason = "receive loop ended"
        try:
            reason = self._receive_messages()
        except _Stalled as e:
            self.stats.reject(e.code, str(e))
            log.warning("%s: %s; closing connection", self.peer, e)
            reason = str(e)
        except _PeerClosed as e:
            reason = str(e)
        except OSError as e:
            reason = f"socket error: {e}"
        except Exception as e:  # last resort: log, count, close; never a silent reader-less socket
            log.exception("%s: receive loop failed", self.peer)
            self.stats.reject(f"internal:{type(e).__name__}", f"receive loop failed: {e}")
            reason = f"receive loop failed: {type(e).__name__}: {e}"
        finally:
            self.close(reason)

    def _receive_messages(self) -> str:
        """Receive until the peer leaves or framing is lost; returns why it stopped."""
        hdr = bytearray(HEADER_SIZE)
        hview = memoryview(hdr)
        cfg = self.config
        while not self._closed.is_set():
            # Wait for the first byte with no timeout (an idle peer is fine), then the
            # rest of the message must keep coming and be whole within the deadline.
            first = None
            while first is None and not self._closed.is_set():
                first = self._recv_some(hview[:1], None)
            if not first:
                return "peer closed the connection"
            deadline = time.monotonic() + cfg.message_timeout_s
            self._recv_exact(hview[1:], HEADER_SIZE - 1, None, deadline)
            try:
                header = parse_header(hdr, cfg.max_body_bytes)
            except MalformedMessage as e:
                # The stream cannot be re-synchronised after a bad header.
                self.stats.malformed += 1
                self.stats.reject("bad_header", str(e))
                log.warning("%s: rejected header, closing connection: %s", self.peer, e)
                return f"bad header: {e}"
            buf, crc = self._recv_body(header, deadline)
            received_ns = time.monotonic_ns()
            self.stats.bytes += HEADER_SIZE + header.body_size
            self._deliver(header, bytes(hdr), buf, crc, received_ns)
            del buf
        return "closed"

    def _deliver(self, header: Header, hdr: bytes, buf: bytearray, crc: int | None,
                 received_ns: int) -> None:
        """Check, decode and hand on one whole message. Whatever goes wrong with it is
        counted by reason and logged, and only this message is affected: the framing is
        known (the next header starts after ``body_size`` bytes)."""
        what = f"{header.message_type} '{header.device_name}'"
        if crc is not None and crc != header.crc:
            self.stats.bad_crc += 1
            msg = (f"{what}: CRC mismatch (got {crc:#018x}, header says {header.crc:#018x}); "
                   "dropped")
            self.stats.reject("bad_crc", msg)
            log.warning("%s: %s", self.peer, msg)
            return
        body = memoryview(buf)[: header.body_size]
        try:
            message = decode(header, body)
        except MalformedMessage as e:
            self.stats.malformed += 1
            cause = e.__cause__
            code = f"decode:{type(cause).__name__}" if cause is not None else "malformed"
            self.stats.reject(code, str(e))
            log.warning("%s: rejected message: %s", self.peer, e)
            return
        if message is None:
            self.stats.unknown += 1
            self.slots.count_unknown(header.message_type)
            log.debug("%s: skipped unknown type %s", self.peer, header.message_type)
            return
        self.stats.messages += 1
        if self._raw_listeners:
            if buf is self._scratch:  # scratch is reused at once: hand out a copy
                body = memoryview(bytes(body))
            for fn in self._raw_listeners:
                try:
                    fn(hdr, body, received_ns, self.peer)
                except Exception as e:  # e.g. the recorder; the message still goes on
                    log.exception("%s: raw listener failed on %s", self.peer, what)
                    self.stats.reject(f"listener:{type(e).__name__}",
                                      f"{what}: raw listener failed: {e}")
        try:
            self.slots.put(header.device_name, header.message_type, message,
                           header.timestamp_s, received_ns, self.peer)
        except Exception as e:
            log.exception("%s: delivering %s failed", self.peer, what)
            self.stats.reject(f"deliver:{type(e).__name__}", f"{what}: delivery failed: {e}")


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
        packed = message.pack()
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
        conn.send_packed(f"{message.message_type}:{message.device_name}", message.pack(), on_sent)
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
