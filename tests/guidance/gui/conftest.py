"""GUI tests run offscreen (set before pytest-qt creates the QApplication)."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"
