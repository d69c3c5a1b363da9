"""The live session: transport (server or client) + the live loop + recording + PNGs +
``summary.json``, composed in one place for ``guidance run``, ``guidance demo``, the
benchmarks and the GUI. Errors are :class:`SessionError` (the CLI prints them as one
line)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from guidance.io.igtl import ConnectionStats, IgtlClient, IgtlServer, TransportConfig
from guidance.io.recording import Recorder, RecordingError
from guidance.io.slots import LatestSlots
from guidance.navigation.setup import RoomSetup
from guidance.pipeline.config import PipelineConfig
from guidance.pipeline.frame import FrameResult
from guidance.pipeline.loop import Pipeline
from guidance.session.outputs import FrameWriter, summary_dict, write_summary

__all__ = ["LiveSession", "SessionError"]

log = logging.getLogger(__name__)


class SessionError(Exception):
    """A session that cannot be set up as asked (both or neither of listen/connect, a
    recording or output folder that cannot be written, a port that cannot be listened
    on); the text is one line naming what."""


class LiveSession:
    """Transport (server or client) + pipeline + optional recorder and PNG writer.

    Args:
        listen: port to listen on (with ``bind`` host), or
        connect: (host, port) to connect to.
        config: pipeline configuration.
        out_dir: where PNGs and ``summary.json`` go (``None``: nowhere).
        record: recording file (``None``: no recording).
        transport: transport settings.
        bind: interface for ``listen`` (loopback by default).
        png_every_s: seconds between annotated PNGs.
        room: the calibration files' content (static transforms, uncertainties, lag).
    """

    def __init__(
        self,
        listen: int | None = None,
        connect: tuple[str, int] | None = None,
        config: PipelineConfig | None = None,
        out_dir: Path | None = None,
        record: Path | None = None,
        transport: TransportConfig | None = None,
        bind: str = "127.0.0.1",
        png_every_s: float = 1.0,
        room: RoomSetup | None = None,
    ) -> None:
        if (listen is None) == (connect is None):
            raise SessionError("give exactly one of --listen PORT or --connect HOST:PORT")
        self.slots = LatestSlots()
        tcfg = transport or TransportConfig()
        self.server: IgtlServer | None = None
        self.client: IgtlClient | None = None
        if listen is not None:
            self.server = IgtlServer(listen, host=bind, config=tcfg, slots=self.slots)
            send = self.server.send
            raw = self.server.raw_listeners
        else:
            assert connect is not None
            self.client = IgtlClient(connect[0], connect[1], config=tcfg, slots=self.slots)
            send = self._client_send
            raw = self.client.raw_listeners
        self.recorder: Recorder | None = None
        if record is not None:
            try:
                self.recorder = Recorder(record)
            except RecordingError as e:
                raise SessionError(str(e)) from e
            raw.append(self.recorder.on_raw)
        self.out_dir = out_dir
        self.writer: FrameWriter | None = None
        if out_dir is not None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                for old in out_dir.glob("frame_*.png"):  # ours, from an earlier run
                    old.unlink()
            except OSError as e:
                raise SessionError(f"cannot create output folder {out_dir}: {e}") from e
            self.writer = FrameWriter(out_dir, every_s=png_every_s)
        self.pipeline = Pipeline(self.slots, config, send=send, on_result=self._on_result,
                                 room=room)
        if out_dir is not None:
            # CT control scans: one line per scan, written as each is processed.
            self.pipeline.set_timeline(out_dir / "procedure_timeline.jsonl")
        self._t0 = time.monotonic()
        self.last_result: FrameResult | None = None

    def _client_send(self, message: Any, on_sent: Any = None) -> int:
        assert self.client is not None
        return 1 if self.client.send(message, on_sent) else 0

    def _on_result(self, result: FrameResult, rgb: Any) -> None:
        self.last_result = result
        if self.writer is not None and rgb is not None:
            # Every CT control scan is a picture of its own (scans are seconds apart).
            self.writer.offer(result, rgb, force=result.ct_scan is not None)

    def start(self) -> LiveSession:
        """Open the transport and start processing."""
        if self.server is not None:
            try:
                self.server.start()
            except OSError as e:
                raise SessionError(str(e)) from e
        if self.client is not None:
            self.client.start()
        self.pipeline.start()
        self._t0 = time.monotonic()
        return self

    @property
    def raw_listeners(self) -> list[Any]:
        """The transport's raw-bytes listeners (the recorder; the GUI's record button)."""
        if self.server is not None:
            return self.server.raw_listeners
        assert self.client is not None
        return self.client.raw_listeners

    @property
    def port(self) -> int:
        """The listening port (server mode)."""
        assert self.server is not None
        return self.server.port

    def frames_received(self) -> int:
        """IMAGE messages received over all devices."""
        n = 0
        for name, c in self.slots.counters().items():
            it = self.slots.latest(name)
            if it is not None and it.message_type == "IMAGE":
                n += c.received
        return n

    def transport_counters(self) -> dict[str, Any]:
        """Rejections and connection counts for the summary."""
        total = ConnectionStats()
        extra: dict[str, Any] = {}
        if self.server is not None:
            srv = self.server
            total.merge(srv.closed_totals)
            open_now = srv.connections()
            for c in open_now:
                total.merge(c.stats)
            extra = {
                "connections": srv.closed_count + len(open_now),
                "refused_connections": dict(srv.refused),
                "closed": [{"reason": s.close_reason, "rejected": dict(s.rejected)}
                           for s in srv.closed_connections if s.rejected],
                "exposure_warning": srv.exposure,
            }
        elif self.client is not None:
            if self.client.stats is not None:
                total.merge(self.client.stats)
            extra = {"connections": self.client.connections_made}
        return {
            "bad_crc": total.bad_crc,
            "malformed": total.malformed,
            "rejected": dict(sorted(total.rejected.items())),
            "last_errors": list(total.errors[-5:]),
            "unknown_types": dict(self.slots.unknown_types),
            "listener_errors": self.slots.listener_errors,
            **extra,
            "devices": self._device_counters(),
        }

    def _device_counters(self) -> dict[str, dict[str, Any]]:
        """Per device: received / dropped / taken for frames; for poses, how many went
        into the transform graph (every one: a slots listener, so a pose replaced in its
        slot before the loop woke is not lost -- "dropped" would mislead)."""
        from guidance.navigation.navigator import POSE_TYPES

        out: dict[str, dict[str, Any]] = {}
        for name, c in self.slots.counters().items():
            item = self.slots.latest(name)
            kind = item.message_type if item is not None else ""
            if kind in POSE_TYPES:
                out[name] = {"type": kind, "received": c.received,
                             "into_transform_graph": c.received}
            else:
                out[name] = {"type": kind, **vars(c)}
        return out

    def stop(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stop everything; write ``summary.json`` when an output folder was given.
        Returns the summary."""
        wall = time.monotonic() - self._t0
        self.pipeline.stop()
        if self.client is not None:
            self.client.stop()
        if self.server is not None:
            self.server.stop()
        rec: dict[str, Any] = {}
        if self.recorder is not None:
            self.recorder.close()
            rec = {"recording": str(self.recorder.path), "recorded_messages": self.recorder.written,
                   "recording_dropped": self.recorder.dropped}
        if self.writer is not None:
            self.writer.close()
        summary = summary_dict(self.pipeline, self.frames_received(), wall,
                               {"transport": self.transport_counters(), **rec, **(extra or {})})
        if self.out_dir is not None:
            summary["pngs"] = [p.name for p in (self.writer.written if self.writer else [])]
            write_summary(self.out_dir / "summary.json", summary)
        return summary
