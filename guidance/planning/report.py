"""Verification report: ``verification.json``, two key images (PNG) and an HTML page.

Images (written beside the HTML, oriented and annotated by :mod:`guidance.figures` as a
DICOM viewer shows the slice: patient's left on the right, anterior up for a supine
patient, L/R/A/P letters, a scale bar, the structures' outlines with a legend):

- ``axial_tip.png``: the acquired axial slice through the tip, with the planned path
  (dashed, projected), the target and the detected needle;
- ``needle_reformat.png``: the oblique reformat that holds the whole needle (its axis
  and the horizontal across it), resampled at 0.25 mm (trilinear).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from guidance.figures import (
    PlaneSpec,
    annotate,
    legend_panel,
    oriented_plane,
    render_plane,
    structure_legend,
    view_plane,
)
from guidance.geometry import ImageVolume
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.planning.verify import VerificationResult

__all__ = ["axial_tip_plane", "key_image", "key_images", "needle_plane",
           "write_verification_report"]

log = logging.getLogger(__name__)


#: Colours (RGB) of the plan and the detected needle in the key images.
PLAN_RGB = (0, 220, 255)
NEEDLE_RGB = (0, 255, 80)
#: CT window of the key images (centre, width), HU: soft tissue and bone both readable.
WINDOW_HU = (300.0, 1600.0)


def _dashed(rgb: np.ndarray, a: np.ndarray, b: np.ndarray, colour: tuple[int, int, int],
            dash_px: float = 8.0) -> None:
    n = float(np.linalg.norm(b - a))
    steps = max(int(n // dash_px), 1)
    for k in range(0, steps, 2):
        p = a + (b - a) * (k / steps)
        q = a + (b - a) * (min(k + 1, steps) / steps)
        cv2.line(rgb, _pt(p), _pt(q), colour, 2, cv2.LINE_AA)


def _pt(p: np.ndarray) -> tuple[int, int]:
    q = np.clip(np.nan_to_num(p[:2], nan=-1e5), -1e5, 1e5)  # cv2 clips what lies outside
    return round(float(q[0])), round(float(q[1]))


def _label(rgb: np.ndarray, text: str, at: np.ndarray, colour: tuple[int, int, int],
           dx: int = 12, dy: int = -10) -> None:
    """A label beside a point, kept inside the image."""
    h, w = rgb.shape[:2]
    scale = max(0.4, w / 1100.0)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(at[0] + (dx if at[0] + dx + tw < w - 4 else -dx - tw), 4, w - tw - 4))
    y = int(np.clip(at[1] + dy, th + 4, h - 4))
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def key_image(ct: ImageVolume, spec: PlaneSpec, plan: Plan, res: VerificationResult,
              structures: StructureSet | None = None, annotated: bool = True) -> np.ndarray:
    """One key image of the report on ``spec``: the CT with the structures' outlines,
    the plan (dashed, projected) and its target, the detected needle and its tip, the
    tip-to-target distance beside the tip; with ``annotated``, orientation letters and a
    scale bar in the image, the legend in a panel on its right. Returns (size, size
    [+ panel], 3) uint8 RGB in display orientation (:mod:`guidance.figures`)."""
    rgb = render_plane(ct, spec, WINDOW_HU, structures, annotated=False)
    det = res.detection
    ends = np.stack([plan.entry_lps, plan.target_lps, det.outer_lps, det.tip_lps])
    px, off = spec.to_px(ends)
    _dashed(rgb, px[0], px[1], PLAN_RGB)
    cv2.circle(rgb, _pt(px[1]), 7, PLAN_RGB, 2, cv2.LINE_AA)
    cv2.line(rgb, _pt(px[2]), _pt(px[3]), NEEDLE_RGB, 2, cv2.LINE_AA)
    cv2.drawMarker(rgb, _pt(px[3]), NEEDLE_RGB, cv2.MARKER_TILTED_CROSS, 14, 2, cv2.LINE_AA)
    target_text = "target"
    if abs(off[1]) > 1.0:
        target_text += f" ({abs(off[1]):.1f} mm out of plane)"
    _label(rgb, target_text, px[1], PLAN_RGB, dy=22)
    _label(rgb, f"tip {res.tip_to_target_mm:.1f} mm from target", px[3], (255, 255, 255))
    if annotated:
        drawn = [] if structures is None else [
            st.name for st, d in zip(structures.structures,
                                     structures.sample(spec.points_lps()), strict=True)
            if bool(np.any(d < 0))]
        legend = [("plan (dashed)", PLAN_RGB), ("needle (detected)", NEEDLE_RGB),
                  *structure_legend(drawn)]
        annotate(rgb, spec.u_lps, spec.v_lps, spec.pixel_mm)
        title = "axial" if spec.name == "axial" else "oblique reformat"
        rgb = np.hstack([rgb, legend_panel(rgb.shape[0], legend, title=title)])
    return rgb


def axial_tip_plane(ct: ImageVolume, res: VerificationResult, fov_mm: float = 120.0,
                    size_px: int = 480) -> PlaneSpec:
    """The axial plane through the detected tip (the CT's slice nearest to it, so that
    the image is an acquired slice, not an interpolation), in display orientation."""
    tip = res.detection.tip_lps
    ijk = ct.lps_to_ijk_points(tip)[0]
    k = float(np.clip(round(float(ijk[2])), 0, ct.voxels.shape[0] - 1))
    on_slice = ct.ijk_to_lps_points(np.array([[ijk[0], ijk[1], k]]))[0]
    return view_plane("axial", on_slice, fov_mm, size_px)


def needle_plane(res: VerificationResult, fov_mm: float = 140.0,
                 size_px: int = 480) -> PlaneSpec:
    """The oblique reformat that holds the whole needle: its axis and the horizontal
    direction across it (the gantry-tilted axial of CT-guided work), shown like the view
    it is closest to."""
    det = res.detection
    across = np.cross([0.0, 0.0, 1.0], det.axis_lps)
    if np.linalg.norm(across) < 0.2:  # a vertical needle: across towards patient left
        across = np.array([1.0, 0.0, 0.0])
    # The tip a little off centre: the needle's path and what lies around the target.
    centre = det.tip_lps + 0.3 * (det.outer_lps - det.tip_lps)
    return oriented_plane("needle", centre, det.axis_lps, across, fov_mm, size_px)


def key_images(ct: ImageVolume, plan: Plan, result: VerificationResult,
               structures: StructureSet | None = None
               ) -> list[tuple[str, PlaneSpec, np.ndarray]]:
    """The report's two key images, rendered once: ``[(name, plane, rgb)]`` for
    ``axial`` (the acquired slice through the tip) and ``reformat`` (along the needle).
    The plane gives the image's axes and pixel size (the DICOM Secondary Captures)."""
    out = []
    for name, spec in (("axial", axial_tip_plane(ct, result)),
                       ("reformat", needle_plane(result))):
        out.append((name, spec, key_image(ct, spec, plan, result, structures)))
    return out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def write_verification_report(
    out_dir: str | Path, ct: ImageVolume, plan: Plan, result: VerificationResult,
    *, ct_source: str = "", structures: StructureSet | None = None,
    images: list[tuple[str, PlaneSpec, np.ndarray]] | None = None,
) -> dict[str, Path]:
    """Write ``verification.json``, ``axial_tip.png``, ``needle_reformat.png`` and
    ``report.html`` into ``out_dir`` (created). Returns name -> path.

    Args:
        structures: the plan's structures, outlined in the key images (``None``: no
            outlines).
        images: the key images from :func:`key_images` (rendered here when ``None``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["plan"] = {"entry_lps_mm": plan.to_json()["entry_lps_mm"],
                    "target_lps_mm": plan.to_json()["target_lps_mm"],
                    "target_spec": plan.target_spec}
    data["control_ct"] = ct_source
    data["assumption"] = ("control CT in the planning CT frame; structures from the planning "
                          "labels; nerve roots and disc points are derived, not labelled")
    paths = {"json": out / "verification.json", "axial": out / "axial_tip.png",
             "reformat": out / "needle_reformat.png", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    for name, _spec, rgb in images if images is not None else key_images(ct, plan, result,
                                                                         structures):
        _write_png(paths[name], rgb)
    rows = "".join(
        f"<tr><td>{html.escape(c.structure)}</td><td>{c.min_mm:.1f}</td>"
        f"<td>{c.margin_mm:g}</td><td>{'yes' if c.min_mm < c.margin_mm else ''}</td></tr>"
        for c in sorted(result.metrics.clearances, key=lambda c: c.min_mm)
        if c.min_mm < 29.0
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons)
    colour = {"PASS": "#2a2", "OFF_TARGET": "#c80", "VIOLATION": "#c22"}.get(result.verdict,
                                                                               "#555")
    tip = ", ".join(f"{v:.1f}" for v in result.detection.tip_lps)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Needle placement verification</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Needle placement verification</h1>
<p><b>Research software, not for clinical use.</b></p>
<p style="font-size:1.4em;color:{colour}"><b>{html.escape(result.verdict)}</b></p>
<ul>{reasons}</ul>
<table>
<tr><th>target</th><td>{html.escape(plan.target_spec)}</td></tr>
<tr><th>tip (LPS mm)</th><td>{tip}</td></tr>
<tr><th>tip to target</th><td>{result.tip_to_target_mm:.1f} mm</td></tr>
<tr><th>angle to plan</th><td>{result.angle_error_deg:.1f} deg</td></tr>
<tr><th>lateral offset</th><td>{result.lateral_offset_mm:.1f} mm</td></tr>
<tr><th>depth error</th><td>{result.depth_error_mm:+.1f} mm (+ = deeper than planned)</td></tr>
</table>
<h2>Key images</h2>
<p>As on the scanner console: the patient's left on the image's right, anterior up;
dashed: the plan; green: the detected needle.</p>
<figure><img src="axial_tip.png" alt="axial slice through the tip">
<figcaption>axial slice through the tip</figcaption></figure>
<figure><img src="needle_reformat.png" alt="oblique reformat along the needle">
<figcaption>oblique reformat holding the whole needle</figcaption></figure>
<h2>Clearance along the final needle (structures within 29 mm)</h2>
<table><tr><th>structure</th><th>min distance (mm)</th><th>margin (mm)</th>
<th>below margin</th></tr>{rows}</table>
<p>{html.escape(str(data["assumption"]))}.</p>
</body></html>
"""
    paths["html"].write_text(page)
    log.info("verification report in %s", out)
    return paths
