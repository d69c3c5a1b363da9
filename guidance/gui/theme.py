"""Dark procedure-room theme: colours per warning level and per class, fonts, palette."""

from __future__ import annotations

from PyQt5.QtGui import QColor, QFont, QPalette
from PyQt5.QtWidgets import QApplication

from guidance.pipeline import overlay
from guidance.records import WarningLevel

__all__ = [
    "BACKGROUND",
    "DETECTED_NEEDLE",
    "LEVEL_COLOURS",
    "NO_GUIDANCE_COLOUR",
    "OUTLINE_COLOUR",
    "PLAN_COLOUR",
    "STALE_COLOUR",
    "apply_dark_theme",
    "class_colour",
    "font",
]

BACKGROUND = QColor(18, 18, 20)
PANEL = QColor(30, 30, 34)
TEXT = QColor(235, 235, 235)
#: Banner colour per warning level (white text on all of them).
LEVEL_COLOURS: dict[WarningLevel, QColor] = {
    WarningLevel.NONE: QColor(20, 110, 50),
    WarningLevel.INFO: QColor(20, 90, 170),
    WarningLevel.CAUTION: QColor(215, 130, 0),
    WarningLevel.DANGER: QColor(215, 0, 0),
}
#: STALE: neutral grey with a yellow hatch (no level colour: nothing current is shown).
STALE_COLOUR = QColor(90, 90, 90)
STALE_HATCH = QColor(255, 210, 0)
#: NO_GUIDANCE and DEGRADED without a warning: the headless overlay's colours, never OK's.
NO_GUIDANCE_COLOUR = QColor(*overlay.NO_GUIDANCE_COLOUR)
DEGRADED_COLOUR = QColor(*overlay.DEGRADED_COLOUR)
PLAN_COLOUR = QColor(0, 220, 255)
#: The plan's structures projected by the C-arm calibration (fluoroscopy).
OUTLINE_COLOUR = QColor(255, 140, 0)
DETECTED_NEEDLE = QColor(0, 255, 120)
STREAM_COLOURS = {"LIVE": QColor(40, 200, 90), "LATE": QColor(230, 160, 0),
                  "LOST": QColor(220, 40, 40)}

_CLASS_RGB = {"needle": (255, 200, 0), "nerve": (235, 90, 255), "vessel": (255, 70, 70),
              "vertebra": (90, 170, 255), "bone": (90, 170, 255)}
_CYCLE = [(255, 150, 60), (120, 255, 200), (255, 120, 180), (180, 180, 255), (200, 255, 90)]


def class_colour(class_id: int, name: str) -> tuple[int, int, int]:
    """RGB of a segmentation class: fixed for the known names, else a stable cycle."""
    key = name.lower()
    for k, rgb in _CLASS_RGB.items():
        if k in key:
            return rgb
    return _CYCLE[class_id % len(_CYCLE)]


def font(pixel_size: int, bold: bool = False) -> QFont:
    """The UI font at a pixel size (pixel sizes, so that screenshots match the screen)."""
    f = QFont("DejaVu Sans")
    f.setPixelSize(max(int(pixel_size), 6))
    f.setBold(bold)
    return f


def apply_dark_theme(app: QApplication) -> None:
    """Dark Fusion palette and a large default font for the whole application."""
    app.setStyle("Fusion")
    p = QPalette()
    p.setColor(QPalette.Window, PANEL)
    p.setColor(QPalette.WindowText, TEXT)
    p.setColor(QPalette.Base, BACKGROUND)
    p.setColor(QPalette.AlternateBase, PANEL)
    p.setColor(QPalette.Text, TEXT)
    p.setColor(QPalette.Button, QColor(50, 50, 56))
    p.setColor(QPalette.ButtonText, TEXT)
    p.setColor(QPalette.Highlight, QColor(0, 120, 200))
    p.setColor(QPalette.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.ToolTipBase, PANEL)
    p.setColor(QPalette.ToolTipText, TEXT)
    p.setColor(QPalette.Disabled, QPalette.Text, QColor(120, 120, 120))
    p.setColor(QPalette.Disabled, QPalette.ButtonText, QColor(120, 120, 120))
    app.setPalette(p)
    app.setFont(font(16))
