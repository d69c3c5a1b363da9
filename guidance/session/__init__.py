"""The composition root of a live session (:class:`LiveSession`): what ``guidance run``,
``guidance demo`` and the GUI share, outside the CLI."""

from guidance.session.live import LiveSession, SessionError
from guidance.session.outputs import FrameWriter, summary_dict, write_summary

__all__ = ["FrameWriter", "LiveSession", "SessionError", "summary_dict", "write_summary"]
