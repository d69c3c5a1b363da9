"""One OpenIGTLink TCP connection: its receive and send threads, settings and counters.

The server and the client (:mod:`guidance.io.igtl`) hand each accepted or made socket to
a :class:`Connection`; what it guarantees (framing, bounded buffers, CRC, timeouts,
latest-value-wins sending) is listed in :mod:`guidance.io.igtl`'s docstring.
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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from guidance.io.bufferpool import BufferPool
from guidance.io.config_schema import check_fields, meta, setting
from guidance.io.messages import (
    HEADER_SIZE,
    Header,
    MalformedMessage,
    crc64,
    decode,
    parse_header,
)
from guidance.io.slots import LatestSlots

log = logging.getLogger("guidance.io.igtl")

#: ``fn(header_bytes, body_view, received_ns, peer)``: sees every accepted message's
#: exact bytes (the recorder). Must be quick; it may keep ``body_view``.
RawListener = Callable[[bytes, memoryview, int, str], None]

_SMALL_BODY = 64 * 1024
#: A body buffer not already in the pool starts this large and doubles as bytes arrive.
_GROW_START = 1024 * 1024
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

    max_body_bytes: int = setting(256 * 1024 * 1024, "largest accepted body", unit="bytes",
                                  ge=1, le=4 * 1024**3)
    check_crc: bool = setting(True, "verify the CRC-64 of every body")
    body_timeout_s: float = setting(5.0, "a body whose bytes stop this long is dropped",
                                    unit="s", gt=0, le=3600)
    message_timeout_s: float = setting(10.0, "a whole message must arrive within this",
                                       unit="s", gt=0, le=3600)
    keepalive_s: float = setting(2.0, "TCP keepalive idle and interval", unit="s",
                                 gt=0, le=3600)
    send_timeout_s: float = setting(5.0, "a send blocked this long marks the peer dead",
                                    unit="s", gt=0, le=3600)
    max_connections: int = setting(16, "server: connections open at once", ge=1, le=1024)
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), metadata=meta("server: peers accepted (IP networks; empty: any)"))

    def __post_init__(self) -> None:
        check_fields(self, "transport")


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


class _PeerClosed(Exception):
    pass


class _Stalled(Exception):
    """A message that stopped arriving (``stalled``) or took too long (``message_timeout``)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code



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
        #: The receive window now set as ``SO_RCVTIMEO``, s (0: not set yet).
        self._window_s = 0.0
        if _WAITALL:
            sock.settimeout(None)  # blocking: the kernel's SO_RCVTIMEO is the only limit
            self._set_window(config.body_timeout_s)
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

    def _set_window(self, seconds: float) -> None:
        """Set ``SO_RCVTIMEO`` to ``seconds`` (at least 1 ms), skipping the system call
        when it is already (within 1 ms) what is asked."""
        if abs(seconds - self._window_s) < 1e-3:
            return
        s = max(seconds, 1e-3)
        sec = int(s)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("ll", sec, int((s - sec) * 1e6)))
        self._window_s = seconds

    def _recv_some(self, view: memoryview, window_s: float) -> int | None:
        """Receive into ``view``, waiting at most ``window_s`` seconds for bytes.

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

    def _recv_start(self, hview: memoryview) -> int | None:
        """The beginning of a message: whatever of the header has arrived, at least one
        byte (0: the peer closed; None: nothing yet, wait again). On Linux the receive
        window stays ``body_timeout_s`` (an idle connection just comes back here every
        so often): no system call to change it twice per message."""
        if _WAITALL:
            self._set_window(self.config.body_timeout_s)
            try:
                return self.sock.recv_into(hview, HEADER_SIZE)
            except BlockingIOError:  # nothing within the window: an idle peer
                return None
        self.sock.settimeout(None)
        return self.sock.recv_into(hview, HEADER_SIZE)

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
            # Wait for a message to begin without limit (an idle peer is fine), taking in
            # the same call as much of its header as is there; then the rest must keep
            # coming and be whole within the deadline.
            got = None
            while got is None and not self._closed.is_set():
                got = self._recv_start(hview)
            if not got:
                return "peer closed the connection"
            deadline = time.monotonic() + cfg.message_timeout_s
            if got < HEADER_SIZE:
                self._recv_exact(hview[got:], HEADER_SIZE - got, None, deadline)
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
