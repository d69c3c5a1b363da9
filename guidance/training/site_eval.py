"""A model measured on a site's own annotated DICOM images (``guidance eval --images``).

The shipped measurements are on simulated frames and on a handful of public needle-free
images; a site that has its own ultrasound or fluoroscopy images can measure the same
rates on them. Layout (documented in ``guidance eval --help`` and the README):

* ``IMAGES/``: DICOM files (any name; every regular file in the folder, not recursive,
  sorted by name). Multi-frame files count frame by frame. Ultrasound frames are cropped
  to their 2D tissue region when the file has a SequenceOfUltrasoundRegions, as in the
  real-image check (:func:`guidance.training.realimages.dicom_file_frames`).
* ``LABELS/NAME.png`` for image ``NAME`` or ``NAME.dcm`` (``NAME`` is the file name
  without its last suffix): the label map of a single-frame file, the stored frame's
  rows x columns, 8- or 16-bit grey, pixel value = class id of the model's labels
  (0 background, 1 needle; ultrasound 2 nerve, 3 vessel; fluoroscopy 2 vertebra).
* ``LABELS/NAME.npy``: label maps of a multi-frame file, (frames, rows, columns)
  integers (or (rows, columns) for a single frame).
* ``LABELS/needle-free.txt``: file names (or names without the suffix), one per line,
  ``#`` starts a comment: files with no needle in any frame. They need no label map;
  they count for the false-needle rate only.

A file with neither a label map nor a needle-free entry is not used (listed in the
report as ``unlabelled``); a file that cannot be read, or whose label map has another
shape, is listed with its error and the evaluation goes on.

The report has the form of ``guidance eval``'s: per class Dice (pooled over the frames
with a label map, on the model grid), the needle rule's detections (tip and angle
error on frames labelled with a needle, in mm on the model grid), the false-needle
rate on needle-free frames naming every frame with a false needle, every rate with its
Wilson 95 % interval, and the targets with pass flags.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from guidance.training.evaluate import (
    TARGETS,
    _angle_deg,
    _dice,
    _stats,
    rate_report,
    reason_key,
)
from trackers.needle_fit import NeedleRule, needle_evidence

__all__ = ["NEEDLE_FREE_LIST", "evaluate_site_images", "read_site_labels"]

log = logging.getLogger(__name__)

#: Name of the needle-free list in the labels folder.
NEEDLE_FREE_LIST = "needle-free.txt"

Progress = Callable[[int, int, str], None]


def _needle_free_names(labels_dir: Path) -> set[str]:
    path = labels_dir / NEEDLE_FREE_LIST
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def read_site_labels(labels_dir: Path, image: Path, n_frames: int,
                     shape: tuple[int, int]) -> np.ndarray | None:
    """The label maps of one image file, or None when it has none.

    Args:
        labels_dir: the labels folder.
        image: the DICOM file.
        n_frames: frames in the file.
        shape: (rows, columns) of a stored frame.

    Returns:
        (n_frames, rows, columns) uint8 class ids, or None (no ``NAME.png``/``NAME.npy``).

    Raises:
        ValueError: a label file that cannot be read, or of another shape, naming it.
    """
    stem = image.stem
    png, npy = labels_dir / f"{stem}.png", labels_dir / f"{stem}.npy"
    if npy.is_file():
        try:
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{npy}: unreadable label array: {e}") from e
        if arr.ndim == 2:
            arr = arr[None]
        where = npy
    elif png.is_file():
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 2:
            raise ValueError(f"{png}: not a single-channel label image")
        arr, where = img[None], png
    else:
        return None
    if arr.shape != (n_frames, *shape):
        raise ValueError(f"{where}: label shape {arr.shape} differs from the image's "
                         f"(frames, rows, columns) = {(n_frames, *shape)}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{where}: labels must be integer class ids 0-255, got "
                         f"{arr.dtype} {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def _stored_shape(path: Path) -> tuple[int, tuple[int, int]]:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return max(int(getattr(ds, "NumberOfFrames", 1) or 1), 1), (int(ds.Rows), int(ds.Columns))


def evaluate_site_images(segmenter: Any, modality: str, images_dir: Path, labels_dir: Path,
                         progress: Progress | None = None) -> dict[str, Any]:
    """Measure a loaded model (``models.segmenter.Segmenter``) on annotated DICOM images.

    Args:
        segmenter: the model with its backend.
        modality: ``"us"``, ``"fluoro"`` or ``"ct"`` (must match the card).
        images_dir: folder of DICOM files.
        labels_dir: folder of label maps and/or ``needle-free.txt`` (module docstring).
        progress: ``progress(done, total, message)`` after every file.

    Returns:
        The JSON-ready report.

    Raises:
        ValueError: wrong modality, a folder that does not exist, or no usable frame.
    """
    from guidance.training.dataset import labels_to_grid
    from guidance.training.realimages import dicom_file_frames

    card = segmenter.card
    if card.modality != modality:
        raise ValueError(f"model {card.name} is for {card.modality!r}, not {modality!r}")
    for name, d in (("images", images_dir), ("labels", labels_dir)):
        if not Path(d).is_dir():
            raise ValueError(f"--{name} {d}: not a folder")
    free_names = _needle_free_names(labels_dir)
    rule = NeedleRule.for_model(card.needle_rule)
    n_cls = len(card.labels)
    files = sorted(p for p in Path(images_dir).iterdir() if p.is_file())
    report_files: list[dict[str, Any]] = []
    inter = np.zeros(n_cls, np.int64)
    total = np.zeros(n_cls, np.int64)
    per_frame_dice: dict[int, list[float]] = {c: [] for c in range(1, n_cls)}
    tip_err: list[float] = []
    ang_err: list[float] = []
    with_needle = detected = 0
    free_frames = 0
    false: list[str] = []
    why: dict[str, int] = {}
    labelled_frames = 0
    for k, path in enumerate(files, 1):
        entry: dict[str, Any] = {"file": path.name, "frames": 0, "labels": "", "error": ""}
        report_files.append(entry)
        listed_free = path.name in free_names or path.stem in free_names
        try:
            n_frames, shape = _stored_shape(path)
            maps = read_site_labels(labels_dir, path, n_frames, shape)
            if maps is None and not listed_free:
                entry["labels"] = "unlabelled"
                continue
            placed = dicom_file_frames(path, modality)
        except Exception as e:  # pydicom raises many types for broken files
            entry["error"] = f"{type(e).__name__}: {e}"
            log.warning("skipped %s: %s", path, entry["error"])
            continue
        entry["labels"] = "label map" if maps is not None else NEEDLE_FREE_LIST
        entry["frames"] = len(placed)
        for pf in placed:
            seg = segmenter.segment(pf.frame.image, pf.frame.spacing_mm)
            sp = seg.grid.model_spacing_mm
            ev = needle_evidence(seg.probs[1], sp, card.pixel_spacing_mm, rule,
                                 image=seg.image)
            name = f"{path.name} frame {pf.index}" + (
                f" region x{pf.box[0]} y{pf.box[1]}" if pf.box is not None else "")
            truth = None
            if maps is not None:
                lab = maps[pf.index]
                if pf.box is not None:
                    x0, y0, x1, y1 = pf.box
                    lab = lab[y0:y1 + 1, x0:x1 + 1]
                ur, uc = seg.grid.used_shape
                truth = np.zeros_like(seg.labels)
                truth[:ur, :uc] = labels_to_grid(lab, seg.grid, n_cls)
            has_needle = truth is not None and bool((truth == 1).any())
            if listed_free or (truth is not None and not has_needle):
                free_frames += 1
                why[reason_key(ev.reason, rule)] = why.get(reason_key(ev.reason, rule), 0) + 1
                if ev.needle is not None:
                    false.append(f"{name} ({ev.length_mm:.1f} mm piece)")
            if truth is None:
                continue
            labelled_frames += 1
            pred = seg.labels
            for c in range(1, n_cls):
                a, b = pred == c, truth == c
                inter[c] += int((a & b).sum())
                total[c] += int(a.sum()) + int(b.sum())
                if b.any():
                    per_frame_dice[c].append(_dice(a, b))
            if has_needle:
                with_needle += 1
                gt = needle_evidence((truth == 1).astype(np.float32), sp,
                                     card.pixel_spacing_mm, NeedleRule(min_length_mm=1e-3,
                                                                       max_scatter_mm=1e3,
                                                                       min_collinear=1e-3))
                if ev.needle is None:
                    continue
                detected += 1
                if gt.candidate is not None:
                    spacing = sp if math.isfinite(sp) else card.pixel_spacing_mm
                    tip_err.append(float(np.linalg.norm(ev.needle.tip_ij - gt.candidate.tip_ij))
                                   * spacing)
                    ang_err.append(_angle_deg(ev.needle.axis_ij, gt.candidate.axis_ij))
        if progress:
            progress(k, len(files), f"{modality} site images")
    if free_frames + labelled_frames == 0:
        raise ValueError(f"no labelled frame in {images_dir} (label maps in {labels_dir} as "
                         f"NAME.png / NAME.npy, or names in {labels_dir / NEEDLE_FREE_LIST})")
    dice = {name: {"pooled": (2.0 * inter[c] / total[c]) if total[c] else math.nan,
                   "median_per_frame": float(np.median(per_frame_dice[c]))
                   if per_frame_dice[c] else math.nan,
                   "frames_with_class": len(per_frame_dice[c])}
            for c, name in enumerate(card.labels[1:], 1)}
    det = rate_report(detected, with_needle)
    fal = rate_report(len(false), free_frames)
    out: dict[str, Any] = {
        "model": card.name, "version": card.version, "onnx_sha256": card.onnx_sha256,
        "backend": segmenter.backend.name, "images": str(images_dir),
        "labels": str(labels_dir), "files": report_files,
        "frames_with_label_map": labelled_frames,
        "dice": dice,
        "needle": {
            "frames_with_needle": with_needle, "detected": detected,
            "detection_rate": det["rate"], "detection_rate_ci95": det["ci95"],
            "tip_error_mm": _stats(tip_err), "angle_error_deg": _stats(ang_err),
            "tip_error_frame": "model grid spacing (the frame's pixel spacing when the "
                               "file gives it, else the model's nominal spacing)",
        },
        "needle_free": {"frames": free_frames, "needle_reported": fal["count"],
                        "rate": fal["rate"], "rate_ci95": fal["ci95"], "reasons": why,
                        "frames_with_false_needle": false},
        "rule": dataclasses.asdict(rule),
    }
    out["targets"] = _site_targets(out, card.labels)
    return out


def _site_targets(m: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if m["needle"]["frames_with_needle"]:
        nd = m["dice"]["needle"]["pooled"]
        t["needle_dice"] = {"value": nd, "target": f">= {TARGETS['needle_dice_min']}",
                            "pass": bool(nd >= TARGETS["needle_dice_min"])}
        tip = m["needle"]["tip_error_mm"].get("median", math.inf)
        t["tip_error_median_mm"] = {"value": tip,
                                    "target": f"<= {TARGETS['tip_error_median_mm_max']}",
                                    "pass": bool(tip <= TARGETS["tip_error_median_mm_max"])}
    for cls in ("nerve", "vessel"):
        if cls in labels and m["dice"][cls]["frames_with_class"]:
            v = m["dice"][cls]["pooled"]
            t[f"{cls}_dice"] = {"value": v, "target": f">= {TARGETS[cls + '_dice_min']}",
                                "pass": bool(v >= TARGETS[cls + "_dice_min"])}
    free = m["needle_free"]
    if free["frames"]:
        t["false_needle_rate"] = {"value": free["rate"], "ci95": free["rate_ci95"],
                                  "of_frames": free["frames"],
                                  "target": f"<= {TARGETS['real_false_needle_rate_max']}",
                                  "pass": bool(free["rate"]
                                               <= TARGETS["real_false_needle_rate_max"])}
    t["all_pass"] = bool(t) and all(v["pass"] for v in t.values() if isinstance(v, dict))
    return t
