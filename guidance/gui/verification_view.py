"""The verification view: the control scan with the needle and the target, the errors,
the verdict, and export of the report (JSON + HTML + key images)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PyQt5.QtCore import Qt
from PyQt5.QtGui import QColor, QKeySequence
from PyQt5.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QShortcut,
    QVBoxLayout,
    QWidget,
)

from guidance.geometry import ImageVolume
from guidance.gui import theme
from guidance.gui.panes import Overlay, PlanePane, attach_side_panel
from guidance.gui.planes import orthogonal_planes, render_plane, trajectory_plane
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.planning.verify import VerificationResult

__all__ = ["VERDICT_COLOURS", "VerificationView"]

log = logging.getLogger(__name__)

VERDICT_COLOURS = {"PASS": QColor(30, 160, 70), "OFF_TARGET": QColor(215, 130, 0),
                   "VIOLATION": QColor(215, 0, 0), "NEEDLE_NOT_FOUND": QColor(215, 0, 0)}

#: ``export(out_dir) -> {"json": path, "html": path, ...}`` writes the report.
ExportFn = Callable[[Path], dict[str, Path]]


class VerificationView(QWidget):
    """The final needle on the control CT against the plan.

    Args:
        ct: the control CT (HU), in the planning frame.
        plan: the plan.
        result: the verification, or ``None`` when the needle was not found.
        error: why there is no result (needle not found ...).
        structures: outlines on the images (optional).
        export: writes the report into a folder; ``None`` disables the button.
        out_dir: default export folder.
    """

    def __init__(self, ct: ImageVolume, plan: Plan, result: VerificationResult | None,
                 error: str = "", structures: StructureSet | None = None,
                 export: ExportFn | None = None, out_dir: Path = Path("verification"),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ct, self.plan, self.result, self._export = ct, plan, result, export
        verdict = result.verdict if result is not None else "NEEDLE_NOT_FOUND"
        self.verdict = verdict
        grid = QGridLayout()
        self.panes = [PlanePane("Axial through the tip"), PlanePane("Along the needle")]
        for k, p in enumerate(self.panes):
            grid.addWidget(p, 0, k)
        side = QVBoxLayout()
        self.verdict_label = QLabel(verdict.replace("_", " "))
        self.verdict_label.setFont(theme.font(54, bold=True))
        self.verdict_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.verdict_label.setStyleSheet(
            f"background: {VERDICT_COLOURS.get(verdict, QColor(215, 0, 0)).name()}; "
            "color: white; padding: 12px")
        side.addWidget(self.verdict_label)
        self.errors = QLabel(self._errors_text(result, error))
        self.errors.setFont(theme.font(22))
        self.errors.setWordWrap(True)
        self.errors.setTextFormat(Qt.TextFormat.RichText)
        side.addWidget(self.errors, 1)
        row = QHBoxLayout()
        self.out_edit = QLineEdit(str(out_dir))
        self.export_button = QPushButton("Export report (Ctrl+E)")
        self.export_button.setFont(theme.font(18, bold=True))
        self.export_button.setEnabled(export is not None and result is not None)
        self.export_button.clicked.connect(self._export_key)
        row.addWidget(self.out_edit, 1)
        row.addWidget(self.export_button)
        side.addLayout(row)
        self.message = attach_side_panel(self, grid, side, "")
        sc = QShortcut(QKeySequence("Ctrl+E"), self)
        sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        sc.activated.connect(self._export_key)
        self._draw(structures)

    @staticmethod
    def _errors_text(res: VerificationResult | None, error: str) -> str:
        if res is None:
            return f"<b>No needle found.</b><br>{error}"

        def mm(v: float) -> str:
            return "-" if not math.isfinite(v) else f"{v:.1f}"

        rows = [("tip to target", mm(res.tip_to_target_mm), "mm"),
                ("lateral offset", mm(res.lateral_offset_mm), "mm"),
                ("depth error (+ deep)", mm(res.depth_error_mm), "mm"),
                ("angle to plan", mm(res.angle_error_deg), "deg")]
        close = sorted(res.metrics.clearances, key=lambda c: c.min_mm - c.margin_mm)[:5]
        rows += [(f"{c.structure}", mm(c.min_mm), f"mm (margin {c.margin_mm:g})")
                 for c in close]
        table = "".join(f"<tr><td>{a}</td><td align='right'><b>{b}</b></td><td>{u}</td></tr>"
                        for a, b, u in rows)
        reasons = "<br>".join(f"- {r}" for r in res.reasons)
        return f"<table cellspacing='6'>{table}</table><p>{reasons}</p>"

    def _draw(self, structures: StructureSet | None) -> None:
        plan = self.plan
        overlays: list[Overlay] = [
            (np.stack([plan.entry_lps, plan.target_lps]), theme.PLAN_COLOUR, "plan"),
            (plan.target_lps[None], theme.PLAN_COLOUR, "target")]
        win = (40.0, 500.0)
        if self.result is None:
            specs = [orthogonal_planes(plan.target_lps)[0],
                     trajectory_plane(plan.entry_lps, plan.target_lps)]
        else:
            det = self.result.detection
            overlays.append((np.stack([det.outer_lps, det.tip_lps]), theme.DETECTED_NEEDLE,
                             "needle"))
            specs = [orthogonal_planes(det.tip_lps, fov_mm=120.0)[0],
                     trajectory_plane(det.outer_lps, det.tip_lps, fov_mm=160.0,
                                      name="needle")]
        for pane, spec in zip(self.panes, specs, strict=True):
            pane.set_image(spec, render_plane(self.ct, spec, win, structures), overlays)

    def say(self, text: str) -> None:
        """One line on the message line (no dialogs), logged."""
        self.message.setText(text)
        log.info("%s", text)

    def _export_key(self) -> None:
        self.export()

    def export(self, out_dir: Path | None = None) -> dict[str, Path] | None:
        """Write the report; the message line says where or why not."""
        if self._export is None or self.result is None:
            self.say("nothing to export: no verification result")
            return None
        out = Path(out_dir or self.out_edit.text().strip())
        try:
            paths = self._export(out)
        except (OSError, ValueError) as e:
            self.say(f"cannot write the report to {out}: {e}")
            return None
        self.say(f"report written: {paths.get('html', out)}")
        return paths
