"""The planning view: the planning CT in three orthogonal planes and a reformat along
the trajectory, click to set target and entry, structure outlines, a clearance table,
automatic planning with its candidates, save and load ``plan.json``.

Slow work (automatic planning, seconds) runs on a worker thread; its result is taken
by the GUI thread from a one-value slot polled by a timer. Errors (a broken plan file, a
target outside the analysed region) go to the message line, naming the file or point.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QColor, QKeySequence
from PyQt5.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QShortcut,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from guidance.geometry import ImageVolume
from guidance.gui import theme
from guidance.gui.panes import Overlay, PlanePane, attach_side_panel
from guidance.gui.planes import orthogonal_planes, render_plane, trajectory_plane
from guidance.planning.auto import explain_rejection
from guidance.planning.plan import Plan, PlanError
from guidance.planning.provenance import PlanAnatomy
from guidance.planning.structures import StructureSet
from guidance.planning.targets import Target
from guidance.planning.trajectory import TrajectoryMetrics, evaluate_trajectory

__all__ = ["PlanningView"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
WINDOWS = {"soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}


class PlanningView(QWidget):
    """Plan a trajectory on a CT.

    Args:
        ct: the planning CT (HU), LPS.
        structures: structures with distance fields, built around the target.
        target: the resolved target (``None``: click one).
        plan: a plan to start from (entry and target), or ``None``.
        out_path: where Save writes ``plan.json`` (editable in the view).
        ct_source, labels_source: recorded in the saved plan.
        anatomy: the inputs and region ``structures`` were built from, with their hashes
            (:func:`guidance.planning.provenance.record_anatomy`), recorded in the saved
            plan so that the live loop rebuilds the same structures; ``None``: none.
        auto: ``auto(ct, structures, target) -> AutoPlanResult``; default
            :func:`guidance.planning.auto.auto_plan`.
    """

    def __init__(self, ct: ImageVolume, structures: StructureSet, target: Target | None = None,
                 plan: Plan | None = None, out_path: Path = Path("plan.json"),
                 ct_source: str = "", labels_source: str = "",
                 auto: Callable[..., Any] | None = None, parent: QWidget | None = None,
                 *, anatomy: PlanAnatomy | None = None) -> None:
        super().__init__(parent)
        self.ct, self.structures = ct, structures
        self.target_obj = target
        self.ct_source, self.labels_source = ct_source, labels_source
        self.anatomy = anatomy
        self._auto = auto
        self.target_lps: F64 | None = None if target is None else target.point_lps.copy()
        self.entry_lps: F64 | None = None
        if plan is not None:
            self.entry_lps, self.target_lps = plan.entry_lps.copy(), plan.target_lps.copy()
        self.metrics: TrajectoryMetrics | None = None
        self.candidates: list[Any] = []
        self.ct_window = "soft tissue"
        self._job: threading.Thread | None = None
        self._job_result: list[Any] = []  # the worker's one-value slot
        self._job_target: Target | None = None
        self._build(out_path)
        self._poll = QTimer(self)
        self._poll.timeout.connect(self._take_job_result)
        self.refresh()

    # -- layout ----------------------------------------------------------------------

    def _build(self, out_path: Path) -> None:
        grid = QGridLayout()
        self.panes = [PlanePane(t) for t in ("Axial", "Coronal", "Sagittal",
                                             "Along the trajectory")]
        for k, pane in enumerate(self.panes):
            grid.addWidget(pane, k // 2, k % 2)
            pane.clicked.connect(self._clicked)
        side = QVBoxLayout()
        mode = QHBoxLayout()
        self.set_target = QRadioButton("click sets TARGET (T)")
        self.set_entry = QRadioButton("click sets ENTRY (E)")
        self.set_target.setChecked(True)
        mode.addWidget(self.set_target)
        mode.addWidget(self.set_entry)
        side.addLayout(mode)
        self.summary = QLabel("")
        self.summary.setFont(theme.font(20, bold=True))
        self.summary.setWordWrap(True)
        side.addWidget(self.summary)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["structure", "clearance mm", "margin mm",
                                              "status"])
        self.table.setFont(theme.font(16))
        self.table.verticalHeader().setVisible(False)  # type: ignore[union-attr]
        side.addWidget(self.table, 3)
        self.auto_button = QPushButton("Auto plan (P)")
        self.auto_button.setFont(theme.font(20, bold=True))
        self.auto_button.clicked.connect(self.start_auto_plan)
        side.addWidget(self.auto_button)
        self.cand_list = QListWidget()
        self.cand_list.setFont(theme.font(15))
        self.cand_list.currentRowChanged.connect(self.choose_candidate)
        side.addWidget(self.cand_list, 1)
        io = QHBoxLayout()
        self.path_edit = QLineEdit(str(out_path))
        self.save_button = QPushButton("Save (Ctrl+S)")
        self.load_button = QPushButton("Load (Ctrl+O)")
        self.save_button.clicked.connect(self._save_key)
        self.load_button.clicked.connect(self._load_key)
        io.addWidget(self.path_edit, 1)
        io.addWidget(self.save_button)
        io.addWidget(self.load_button)
        side.addLayout(io)
        self.message = attach_side_panel(
            self, grid, side, "left click: set the point; W: soft tissue / bone window")
        keys: dict[str, Callable[[], None]] = {
            "T": lambda: self.set_target.setChecked(True),
            "E": lambda: self.set_entry.setChecked(True),
            "P": self.start_auto_plan,
            "W": self._toggle_window,
            "Ctrl+S": self._save_key,
            "Ctrl+O": self._load_key,
        }
        for key, fn in keys.items():
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(fn)

    def say(self, text: str) -> None:
        """One line on the message line (no dialogs), logged."""
        self.message.setText(text)
        log.info("%s", text)

    # -- state -----------------------------------------------------------------------

    def set_points(self, entry_lps: npt.ArrayLike | None, target_lps: npt.ArrayLike | None,
                   ) -> None:
        """Set entry and/or target (LPS mm; ``None`` keeps the current one)."""
        if target_lps is not None:
            self.target_lps = np.asarray(target_lps, np.float64).reshape(3)
            if self.target_obj is not None and not np.allclose(self.target_obj.point_lps,
                                                               self.target_lps):
                self.target_obj = None  # a clicked point, not the anatomical target
        if entry_lps is not None:
            self.entry_lps = np.asarray(entry_lps, np.float64).reshape(3)
        self.refresh()

    def _clicked(self, lps: F64, button: int) -> None:
        entry = self.set_entry.isChecked() or button == int(Qt.MouseButton.RightButton)
        if entry:
            self.set_points(lps, None)
        else:
            self.set_points(None, lps)
        which = "entry" if entry else "target"
        self.say(f"{which} set at {np.round(lps, 1).tolist()} LPS mm")

    def _evaluate(self) -> None:
        self.metrics = None
        if self.entry_lps is None or self.target_lps is None:
            return
        try:
            self.metrics = evaluate_trajectory(self.entry_lps, self.target_lps, self.structures,
                                               target=self.target_obj,
                                               ijk_to_lps=self.ct.ijk_to_lps)
        except ValueError as e:
            self.say(f"cannot evaluate this trajectory: {e}")

    def refresh(self) -> None:
        """Recompute the metrics and redraw every pane and the table."""
        self._evaluate()
        centre = self.target_lps if self.target_lps is not None else \
            self.ct.ijk_to_lps_points([np.array(self.ct.size_ijk) / 2.0])[0]
        specs = orthogonal_planes(centre)
        if self.entry_lps is not None and self.target_lps is not None:
            specs.append(trajectory_plane(self.entry_lps, self.target_lps))
        overlays = self._overlays()
        win = WINDOWS[self.ct_window]
        for pane, spec in zip(self.panes, specs, strict=False):
            pane.set_image(spec, render_plane(self.ct, spec, win, self.structures), overlays)
        if len(specs) < 4:
            self.panes[3].rgb = None
            self.panes[3].update()
        self._fill_table()

    def _overlays(self) -> list[Overlay]:
        out: list[Overlay] = []
        if self.entry_lps is not None and self.target_lps is not None:
            ok = self.metrics is not None and self.metrics.ok
            colour = theme.PLAN_COLOUR if ok else QColor(255, 60, 60)
            out.append((np.stack([self.entry_lps, self.target_lps]), colour, ""))
        if self.target_lps is not None:
            out.append((self.target_lps[None], theme.PLAN_COLOUR, "target"))
        if self.entry_lps is not None:
            out.append((self.entry_lps[None], QColor(0, 255, 120), "entry"))
        return out

    def _fill_table(self) -> None:
        m = self.metrics
        if m is None:
            self.table.setRowCount(0)
            self.summary.setText("set a target and an entry" if self.entry_lps is None
                                 or self.target_lps is None else "trajectory not evaluated")
            return
        a = m.angles_deg
        verdict = "ACCEPTABLE" if m.ok else "REJECTED: " + "; ".join(
            v.message for v in m.violations[:2])
        self.summary.setText(
            f"{verdict}\nlength {m.length_mm:.1f} mm, needle {m.needle_length_mm:g} mm\n"
            f"craniocaudal {a['craniocaudal']:.1f} deg, mediolateral "
            f"{a['mediolateral']:.1f} deg")
        self.summary.setStyleSheet(f"color: {(theme.TEXT if m.ok else QColor(255, 80, 80)).name()}")
        rows = sorted(m.clearances, key=lambda c: (c.min_mm - c.margin_mm)
                      if math.isfinite(c.min_mm) else -math.inf)
        self.table.setRowCount(len(rows))
        for k, c in enumerate(rows):
            excess = c.min_mm - c.margin_mm
            status = ("unknown" if not math.isfinite(c.min_mm) else "INSIDE" if c.min_mm < 0
                      else "MARGIN" if excess < 0 else "ok")
            vals = [c.structure, f"{c.min_mm:.1f}" if math.isfinite(c.min_mm) else "-",
                    f"{c.margin_mm:g}", status]
            for col, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)  # type: ignore[arg-type]
                if status != "ok" and c.hard:
                    item.setForeground(QColor(255, 80, 80))
                self.table.setItem(k, col, item)
        self.table.resizeColumnsToContents()

    def _toggle_window(self) -> None:
        self.ct_window = "bone" if self.ct_window == "soft tissue" else "soft tissue"
        self.say(f"{self.ct_window} window")
        self.refresh()

    # -- automatic planning ----------------------------------------------------------

    def start_auto_plan(self) -> None:
        """Search trajectories for the current target on a worker thread."""
        if self._job is not None:
            self.say("automatic planning is already running")
            return
        if self.target_lps is None:
            self.say("set a target first")
            return
        target = self.target_obj or Target(
            ",".join(f"{v:.1f}" for v in self.target_lps), "point", self.target_lps.copy(),
            (), "clicked point")
        from guidance.planning.auto import auto_plan

        auto: Callable[..., Any] = self._auto or auto_plan

        def work() -> None:
            try:
                self._job_result.append(auto(self.ct, self.structures, target))
            except Exception as e:  # reported on the message line, never lost
                self._job_result.append(e)

        self._job_result.clear()
        self._job_target = target
        self._job = threading.Thread(target=work, name="auto-plan", daemon=True)
        self._job.start()
        self.auto_button.setEnabled(False)
        self.say("automatic planning ...")
        self._poll.start(100)

    def _take_job_result(self) -> None:
        if not self._job_result:
            return
        res = self._job_result.pop()
        self._poll.stop()
        self._job = None
        self.auto_button.setEnabled(True)
        if isinstance(res, Exception):
            self.say(f"automatic planning failed: {res}")
            return
        self.candidates = list(res.candidates)
        self.cand_list.clear()
        for k, c in enumerate(self.candidates):
            m = c.metrics
            self.cand_list.addItem(
                f"{k + 1}. score {c.score:.2f}  length {m.length_mm:.0f} mm  "
                f"min excess {m.min_excess_mm:.1f} mm")
        if not self.candidates:
            if self._job_target is not None:
                self.say("; ".join(explain_rejection(res, self._job_target)))
            return
        self.say(f"{len(self.candidates)} candidates from {res.n_directions} directions "
                 f"in {res.elapsed_s:.1f} s")
        self.cand_list.setCurrentRow(0)

    def wait_auto_plan(self, timeout_s: float) -> bool:
        """Block until the worker is done (tests, screenshots); True when it finished."""
        job = self._job
        if job is not None:
            job.join(timeout_s)
        self._take_job_result()
        return self._job is None

    def choose_candidate(self, row: int) -> None:
        """Use candidate ``row`` (0 = best)."""
        if 0 <= row < len(self.candidates):
            m = self.candidates[row].metrics
            self.set_points(m.entry_lps, m.target_lps)

    # -- files -----------------------------------------------------------------------

    def _save_key(self) -> None:
        self.save_plan()

    def _load_key(self) -> None:
        self.load_plan()

    def save_plan(self, path: Path | None = None) -> bool:
        """Write ``plan.json``; the message line says where or why not."""
        p = Path(path or self.path_edit.text().strip())
        if self.entry_lps is None or self.target_lps is None:
            self.say("cannot save: set a target and an entry first")
            return False
        try:
            extra: dict[str, object] = {}
            length = math.nan
            if self.metrics is not None:
                extra = dict(self.metrics.to_json())
                for k in ("entry_lps_mm", "target_lps_mm", "needle_length_mm"):
                    extra.pop(k, None)
                length = self.metrics.needle_length_mm
            spec = self.target_obj.spec if self.target_obj is not None else ",".join(
                f"{v:.2f}" for v in self.target_lps)
            plan = Plan(self.entry_lps, self.target_lps, spec, self.ct_source,
                        self.labels_source, length, extra, anatomy=self.anatomy)
            plan.save(p)
        except (OSError, ValueError) as e:
            self.say(f"cannot save plan {p}: {e}")
            return False
        self.say(f"plan saved: {p}")
        return True

    def load_plan(self, path: Path | None = None) -> bool:
        """Read ``plan.json``; errors name the file and go to the message line."""
        p = Path(path or self.path_edit.text().strip())
        try:
            plan = Plan.load(p)
        except PlanError as e:
            self.say(f"cannot load plan: {e}")
            return False
        ijk = self.structures.to_grid_ijk(np.stack([plan.entry_lps, plan.target_lps]))
        self.set_points(plan.entry_lps, plan.target_lps)
        if not self.structures.in_roi(ijk).all():
            self.say(f"plan {p} loaded, but it leaves the analysed region: distances there "
                     "are unknown (restart with --target near it)")
        else:
            self.say(f"plan loaded: {p}")
        return True
