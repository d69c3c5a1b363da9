"""Latest-value-wins slots per device, with counters; the consumer waits on a condition.

A slow consumer never makes a queue grow: each device name holds only its newest
message; a message replaced before anyone took it counts as dropped for that device.
Thread-safe: one lock (with a condition variable) guards everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyigtl.messages import MessageBase

__all__ = ["DeviceCounters", "LatestSlots", "Received"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Received:
    """One decoded message as the application sees it.

    Attributes:
        seq: sequence number of this device's messages (1, 2, ...), per slot set.
        device_name: OpenIGTLink device name.
        message_type: ``IMAGE``, ``TRANSFORM``, ...
        message: the decoded pyigtl-style message object.
        timestamp_s: the sender's timestamp, seconds (sender's clock).
        received_ns: local ``time.monotonic_ns()`` when the last byte was received.
        peer: ``host:port`` of the sender.
    """

    seq: int
    device_name: str
    message_type: str
    message: MessageBase
    timestamp_s: float
    received_ns: int
    peer: str

    @property
    def age_s(self) -> float:
        """Seconds since it was received (local monotonic clock)."""
        return (time.monotonic_ns() - self.received_ns) * 1e-9


@dataclass
class DeviceCounters:
    """Per-device counters: messages received, replaced before being taken (dropped),
    taken by a consumer."""

    received: int = 0
    dropped: int = 0
    taken: int = 0


@dataclass
class _Slot:
    item: Received | None = None
    taken_seq: int = 0
    next_seq: int = 0
    counters: DeviceCounters = field(default_factory=DeviceCounters)


class LatestSlots:
    """Newest message per device name, with wake-up on arrival (no polling).

    Typical consumer loop::

        seq = 0
        while running:
            item = slots.wait_newer("Image_Reference", seq, timeout_s=0.5)
            if item is None:   # nothing new within the timeout: input is stale
                continue
            seq = item.seq
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[Callable[[Received], None]] = []
        self.unknown_types: dict[str, int] = {}
        #: Listener calls that raised (logged; the message was still stored).
        self.listener_errors = 0

    def add_listener(self, fn: Callable[[Received], None]) -> None:
        """Call ``fn(item)`` (from the receiving thread) for every message put, before
        the message is visible to consumers (so that what a listener derives from it --
        a pose in the transform graph -- is there when a consumer wakes on it). ``fn``
        must be quick; should it raise, the error is logged and counted
        (``listener_errors``) and the message is stored all the same."""
        with self._cond:
            self._listeners.append(fn)

    def put(
        self,
        device_name: str,
        message_type: str,
        message: MessageBase,
        timestamp_s: float,
        received_ns: int,
        peer: str,
    ) -> Received:
        """Give a message to the listeners, then store it as the newest for its device
        and wake waiting consumers."""
        with self._cond:
            slot = self._slots.get(device_name)
            if slot is None:
                slot = self._slots[device_name] = _Slot()
            slot.next_seq += 1
            seq = slot.next_seq
            listeners = list(self._listeners)
        item = Received(seq, device_name, message_type, message, timestamp_s, received_ns, peer)
        for fn in listeners:
            try:
                fn(item)
            except Exception:  # one consumer's failure must not lose the message
                log.exception("listener failed on %s '%s'", message_type, device_name)
                with self._cond:
                    self.listener_errors += 1
        with self._cond:
            prev = slot.item
            if prev is None or seq > prev.seq:  # two senders of one device: newest wins
                if prev is not None and prev.seq > slot.taken_seq:
                    slot.counters.dropped += 1
                slot.item = item
            else:
                slot.counters.dropped += 1
            slot.counters.received += 1
            self._cond.notify_all()
        return item

    def count_unknown(self, message_type: str) -> None:
        """Count a message of a type we do not decode (skipped)."""
        with self._cond:
            self.unknown_types[message_type] = self.unknown_types.get(message_type, 0) + 1

    def latest(self, device_name: str) -> Received | None:
        """The newest message of a device (without marking it taken)."""
        with self._cond:
            slot = self._slots.get(device_name)
            return slot.item if slot else None

    def take(self, device_name: str) -> Received | None:
        """The newest message of a device, marking it taken (not counted as dropped)."""
        with self._cond:
            slot = self._slots.get(device_name)
            if slot is None or slot.item is None:
                return None
            self._mark_taken(slot)
            return slot.item

    def _mark_taken(self, slot: _Slot) -> None:
        assert slot.item is not None
        if slot.item.seq > slot.taken_seq:
            slot.counters.taken += 1
            slot.taken_seq = slot.item.seq

    def wait_newer(self, device_name: str, after_seq: int, timeout_s: float) -> Received | None:
        """Wait until the device has a message with ``seq > after_seq``; return it (marked
        taken), or ``None`` after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                slot = self._slots.get(device_name)
                if slot is not None and slot.item is not None and slot.item.seq > after_seq:
                    self._mark_taken(slot)
                    return slot.item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_any(
        self, message_types: Iterable[str], seen: dict[str, int], timeout_s: float
    ) -> Received | None:
        """Wait for a newer message of any device whose type is in ``message_types``;
        ``seen`` maps device name -> last seq handled and is updated. Returns the newest
        such message (marked taken) or ``None`` on timeout."""
        types = set(message_types)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                best: _Slot | None = None
                for name, slot in self._slots.items():
                    it = slot.item
                    if it is None or it.message_type not in types or it.seq <= seen.get(name, 0):
                        continue
                    if best is None or it.received_ns > best.item.received_ns:  # type: ignore[union-attr]
                        best = slot
                if best is not None and best.item is not None:
                    self._mark_taken(best)
                    seen[best.item.device_name] = best.item.seq
                    return best.item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def counters(self) -> dict[str, DeviceCounters]:
        """A copy of the per-device counters."""
        with self._cond:
            return {
                name: DeviceCounters(s.counters.received, s.counters.dropped, s.counters.taken)
                for name, s in self._slots.items()
            }

    def device_names(self) -> list[str]:
        """Names of every device seen so far."""
        with self._cond:
            return list(self._slots)
