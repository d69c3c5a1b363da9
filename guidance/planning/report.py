"""Verification report: ``verification.json``, two key images (PNG) and an HTML page.

Images (matplotlib, Agg backend, written beside the HTML):

- ``axial_tip.png``: the axial slice through the tip, with the planned path (projected)
  and the detected needle;
- ``needle_reformat.png``: an oblique reformat in the plane containing the needle axis
  and the planned target, resampled at 0.5 mm (trilinear).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.plan import Plan
from guidance.planning.verify import VerificationResult

__all__ = ["write_verification_report"]

log = logging.getLogger(__name__)


def _axial_png(ct: ImageVolume, plan: Plan, res: VerificationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tip_ijk = ct.lps_to_ijk_points(res.detection.tip_lps)[0]
    k = int(np.clip(round(tip_ijk[2]), 0, ct.voxels.shape[0] - 1))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(ct.voxels[k], cmap="gray", vmin=-400, vmax=1200)
    plan_ijk = ct.lps_to_ijk_points(np.stack([plan.entry_lps, plan.target_lps]))
    needle_ijk = ct.lps_to_ijk_points(np.stack([res.detection.outer_lps,
                                                res.detection.tip_lps]))
    ax.plot(plan_ijk[:, 0], plan_ijk[:, 1], "--", color="lime", lw=1, label="plan")
    ax.plot(plan_ijk[1, 0], plan_ijk[1, 1], "o", color="lime", ms=5, mfc="none")
    ax.plot(needle_ijk[:, 0], needle_ijk[:, 1], "-", color="red", lw=1, label="needle")
    ax.plot(needle_ijk[1, 0], needle_ijk[1, 1], "x", color="red", ms=7)
    c = tip_ijk[:2]
    half = 60.0 / ct.spacing_mm[:2]
    ax.set_xlim(c[0] - half[0], c[0] + half[0])
    ax.set_ylim(c[1] + half[1], c[1] - half[1])
    ax.set_title(f"axial slice k={k} through the tip (projection of plan and needle)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _reformat_png(ct: ImageVolume, plan: Plan, res: VerificationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = res.detection
    u = det.axis_lps
    w = plan.target_lps - det.tip_lps
    w = w - u * float(w @ u)
    if np.linalg.norm(w) < 0.5:  # target on the needle line: use the cranial direction
        w = np.array([0.0, 0.0, 1.0]) - u * u[2]
    v = w / np.linalg.norm(w)
    length = float((det.tip_lps - det.outer_lps) @ u)
    s = np.arange(-length - 10.0, 20.0, 0.5)
    t = np.arange(-30.0, 30.0, 0.5)
    pts = det.tip_lps + s[None, :, None] * u + t[:, None, None] * v
    ijk = ct.lps_to_ijk_points(pts.reshape(-1, 3))
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)) - 1, 0, size - 1).astype(int)
    hi = np.clip(np.ceil(ijk.max(axis=0)) + 2, 1, size).astype(int)
    box = ct.voxels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
    img = ndimage.map_coordinates(box, (ijk - lo)[:, ::-1].T, order=1,
                                  cval=-1000).reshape(len(t), len(s))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.imshow(img, cmap="gray", vmin=-400, vmax=1200, origin="lower",
              extent=(s[0], s[-1], t[0], t[-1]))
    rel_t = plan.target_lps - det.tip_lps
    ax.plot(float(rel_t @ u), float(rel_t @ v), "o", color="lime", mfc="none", ms=8,
            label="planned target")
    rel_e = plan.entry_lps - det.tip_lps
    ax.plot([float(rel_e @ u), float(rel_t @ u)], [float(rel_e @ v), float(rel_t @ v)],
            "--", color="lime", lw=1, label="plan (projected)")
    ax.plot(0, 0, "x", color="red", ms=8, label="detected tip")
    ax.set_xlabel("mm along the needle (0 = tip)")
    ax.set_ylabel("mm across")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reformat along the needle")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def write_verification_report(
    out_dir: str | Path, ct: ImageVolume, plan: Plan, result: VerificationResult,
    *, ct_source: str = "",
) -> dict[str, Path]:
    """Write ``verification.json``, ``axial_tip.png``, ``needle_reformat.png`` and
    ``report.html`` into ``out_dir`` (created). Returns name -> path."""
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
    _axial_png(ct, plan, result, paths["axial"])
    _reformat_png(ct, plan, result, paths["reformat"])
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
<img src="axial_tip.png" alt="axial slice through the tip">
<img src="needle_reformat.png" alt="reformat along the needle">
<h2>Clearance along the final needle (structures within 29 mm)</h2>
<table><tr><th>structure</th><th>min distance (mm)</th><th>margin (mm)</th>
<th>below margin</th></tr>{rows}</table>
<p>{html.escape(str(data["assumption"]))}.</p>
</body></html>
"""
    paths["html"].write_text(page)
    log.info("verification report in %s", out)
    return paths
