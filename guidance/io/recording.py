"""Lossless recording of received OpenIGTLink messages, and reading them back.

File layout (all integers big-endian)::

    file header  b"GIGTLREC" | u16 version=1 | u16 reserved | f64 start wall time (Unix s)
                 | u64 start monotonic ns
    record       b"MSG1" | u64 received_ns (local monotonic) | u16 peer length | peer
                 | the message exactly as received: 58-byte header + body

Records are appended by a writer thread with unbuffered writes, so a process that is
killed leaves a file readable up to its last complete record (:func:`read_recording`
stops cleanly at a partial one and says so). The frame path only enqueues references
to the received bytes; it never waits on the disk.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guidance.io.messages import HEADER_SIZE, Header, MalformedMessage, crc64, parse_header

__all__ = ["RecordedMessage", "Recorder", "RecordingError", "read_recording"]

log = logging.getLogger(__name__)

_MAGIC = b"GIGTLREC"
_FILE_HEADER = struct.Struct(">8sHHdQ")
_RECORD = struct.Struct(">4sQH")
_RECORD_MAGIC = b"MSG1"


class RecordingError(ValueError):
    """A file that is not a recording, or is corrupt before its end."""


@dataclass(frozen=True)
class RecordedMessage:
    """One recorded message.

    Attributes:
        received_ns: local monotonic receive time (ns) in the recording process.
        peer: ``host:port`` it came from.
        header: the parsed header.
        raw: the exact bytes received (header + body).
    """

    received_ns: int
    peer: str
    header: Header
    raw: bytes


class Recorder:
    """Append every message handed to :meth:`on_raw` to a file, off the frame path.

    Args:
        path: output file (created or truncated).
        max_pending_bytes: bytes waiting for the disk beyond which new messages are not
            queued (counted in ``dropped`` and logged as errors): memory stays bounded
            even when the disk stalls.
    """

    def __init__(self, path: str | Path, max_pending_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise RecordingError(f"cannot create recording {self.path}: {e}") from e
        os.write(self._fd, _FILE_HEADER.pack(_MAGIC, 1, 0, time.time(), time.monotonic_ns()))
        self._q: queue.SimpleQueue[tuple[bytes, memoryview] | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._max_pending = max_pending_bytes
        self.written = 0
        self.dropped = 0
        self.write_error = ""
        self._thread = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._thread.start()

    def on_raw(self, header: bytes, body: memoryview, received_ns: int, peer: str) -> None:
        """Queue one message (a :data:`~guidance.io.igtl.RawListener`)."""
        p = peer.encode("utf-8")[:65535]
        prefix = _RECORD.pack(_RECORD_MAGIC, received_ns, len(p)) + p + header
        size = len(prefix) + len(body)
        with self._lock:
            if self._pending + size > self._max_pending:
                self.dropped += 1
                log.error("recording %s cannot keep up: message dropped", self.path)
                return
            self._pending += size
        self._q.put((prefix, body))

    def _write_loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            prefix, body = item
            try:
                # One write per record, so a kill leaves whole records plus at most one
                # partial record at the end.
                os.write(self._fd, prefix + bytes(body))
                self.written += 1
            except OSError as e:
                self.write_error = str(e)
                log.error("recording %s: write failed: %s", self.path, e)
            with self._lock:
                self._pending -= len(prefix) + len(body)

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._q.put(None)
        self._thread.join()
        os.close(self._fd)


def read_recording(
    path: str | Path, verify_crc: bool = True
) -> Iterator[RecordedMessage]:
    """Yield the recorded messages in order.

    A partial record at the end (process killed while writing) ends the iteration with
    a logged warning; everything before it is returned.

    Raises:
        RecordingError: not a recording, or a corrupt record before the end (names the
            file and the byte offset).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise RecordingError(f"cannot read recording {p}: {e}") from e
    if len(data) < _FILE_HEADER.size or data[:8] != _MAGIC:
        raise RecordingError(f"{p} is not a guidance recording (bad magic)")
    _m, version, _r, _wall, _mono = _FILE_HEADER.unpack_from(data)
    if version != 1:
        raise RecordingError(f"{p}: unsupported recording version {version}")
    off = _FILE_HEADER.size
    view = memoryview(data)
    while off < len(data):
        if off + _RECORD.size > len(data):
            log.warning("%s: recording ends with a partial record at byte %d", p, off)
            return
        magic, received_ns, plen = _RECORD.unpack_from(data, off)
        if magic != _RECORD_MAGIC:
            raise RecordingError(f"{p}: corrupt record at byte {off}")
        start = off + _RECORD.size
        if start + plen + HEADER_SIZE > len(data):
            log.warning("%s: recording ends with a partial record at byte %d", p, off)
            return
        peer = bytes(view[start : start + plen]).decode("utf-8", "replace")
        hstart = start + plen
        try:
            header = parse_header(view[hstart : hstart + HEADER_SIZE], 2**62)
        except MalformedMessage as e:
            raise RecordingError(f"{p}: corrupt message header at byte {hstart}: {e}") from e
        end = hstart + HEADER_SIZE + header.body_size
        if end > len(data):
            log.warning("%s: recording ends with a partial record at byte %d", p, off)
            return
        raw = bytes(view[hstart:end])
        if verify_crc and crc64(raw[HEADER_SIZE:]) != header.crc:
            raise RecordingError(f"{p}: CRC mismatch in the record at byte {off}")
        yield RecordedMessage(received_ns, peer, header, raw)
        off = end
