"""``guidance eval``: measure a segmentation model on held-out simulated frames and on
real needle-free images (Dice per class, needle tip and angle error, false needles).

Writes a JSON report (``--json FILE``, or ``--json`` alone for stdout) and a PNG of
example predictions; ``--update-card`` stores the metrics in the model card. Every rate
(detection, false needles) is given with its Wilson 95 % interval.

A site's own images: ``--images DIR --labels DIR`` measures the model on annotated DICOM
files instead (ultrasound or fluoroscopy, also CT), with the same report:

  DIR of --images   DICOM files (every file in the folder, not recursive; multi-frame
                    files count frame by frame; ultrasound is cropped to its B-mode
                    region when the file has a SequenceOfUltrasoundRegions)
  LABELS/NAME.png   label map of single-frame image NAME (or NAME.dcm): the stored
                    frame's rows x columns, pixel value = class id of the model's labels
                    (0 background, 1 needle; us: 2 nerve, 3 vessel; fluoro: 2 vertebra)
  LABELS/NAME.npy   label maps of a multi-frame file, (frames, rows, columns) integers
  LABELS/needle-free.txt
                    file names (or names without suffix), one per line, '#' comments:
                    files with no needle in any frame (no label map needed)

A frame is needle-free when its file is listed or its label map has no needle pixel;
every needle reported there is false and is named in the report. Files with neither
a label map nor a listing are reported as unlabelled and not used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.workflows.shared import Progress, WorkflowError, no_progress

__all__ = ["EvalReport", "EvalRequest", "evaluate", "evaluate_and_record", "evaluate_site",
           "target_lines"]


@dataclass
class EvalReport:
    """An evaluation done: the metrics (JSON-safe, as written), their JSON text, and the
    lines for people about what was written and what was not used (stderr)."""

    metrics: dict[str, Any]
    text: str
    notes: list[str] = field(default_factory=list)


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _report(metrics: dict[str, Any], json_out: str | None) -> EvalReport:
    """The report, written to ``json_out`` (``-``: left to the caller for stdout)."""
    metrics = _clean(metrics)
    report = EvalReport(metrics, json.dumps(metrics, indent=1))
    if json_out not in (None, "-"):
        Path(str(json_out)).write_text(report.text + "\n")
        report.notes.append(f"wrote {json_out}")
    return report


def _segmenter(card_path: Path, modality: str, backends: str) -> Any:
    """The model of ``card_path`` on the backend chain ``backends`` (``auto`` or names
    separated by commas), refused when it is for another modality."""
    from models.card import CardError
    from models.segmenter import Segmenter

    chain: Any = backends if backends == "auto" else [b.strip() for b in backends.split(",")]
    try:
        seg = Segmenter(card_path, chain=chain)
    except (CardError, ValueError, FileNotFoundError) as e:
        raise WorkflowError(str(e)) from e
    if seg.card.modality != modality:
        raise WorkflowError(f"{card_path}: model {seg.card.name} is for "
                            f"{seg.card.modality!r}, not {modality!r}")
    return seg


def evaluate_and_record(card_path: Path, modality: str, *, n_test: int = 400, seed: int = 0,
                        cache: Path | None = None, backends: str = "auto",
                        json_out: str | None = None, png: Path | None = None,
                        update_card: bool = False, n_needle_free: int | None = None,
                        n_slabs: int = 0, progress: Progress = no_progress) -> EvalReport:
    """Evaluate the model behind ``card_path`` on ``n_test`` held-out simulated frames
    (``seed``), the needle-free sets and, for CT, ``n_slabs`` control-scan slabs; write
    the JSON (``json_out``; ``-``: the caller prints ``text``) and the example PNG
    (default ``<card>-examples.png`` beside the JSON or the card); optionally store the
    metrics in the card."""
    from guidance.training.evaluate import evaluate_model
    from models.card import load_card

    seg = _segmenter(card_path, modality, backends)
    if png is None:
        base = Path(json_out).parent if json_out not in (None, "-") else card_path.parent
        png = base / f"{seg.card.name}-examples.png"
    show = progress(f"eval {modality}")
    metrics = evaluate_model(seg, modality, n_test=n_test, seed=seed, cache_dir=cache, png=png,
                             progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"),
                             n_needle_free=n_needle_free)
    if modality == "ct" and n_slabs > 0:
        metrics["control_slabs"] = _slab_eval(seg, n_slabs, progress)
        for k, v in metrics["control_slabs"]["targets"].items():
            metrics.setdefault("targets", {})[f"slab_{k}"] = v
    report = _report(metrics, json_out)
    report.notes.append(f"wrote {png}")
    if update_card:
        import dataclasses

        card, _ = load_card(card_path)
        metrics = report.metrics
        slim: dict[str, Any] = {k: metrics[k] for k in ("backend", "held_out", "dice", "needle",
                                        "needle_free_sim", "targets", "control_slabs")
                if k in metrics}
        slim["real_needle_free"] = metrics["real_needle_free"]
        dataclasses.replace(card, metrics=slim).save(card_path)
        report.notes.append(f"updated metrics in {card_path}")
    return report


def _slab_eval(seg: Any, n_slabs: int, progress: Progress) -> dict[str, Any]:
    """The control-scan path on held-out simulated slabs of the real CT
    (:mod:`guidance.training.ct_slab_eval`): n_slabs with a needle, as many needle-free
    (at least 100), a third as many after 10 mm / 3 deg of motion."""
    from guidance.data import RealDataMissing, load_real_ct, load_real_labels, structure_names
    from guidance.training.ct_slab_eval import evaluate_slabs

    try:
        ct, labels, names = load_real_ct(), load_real_labels(), structure_names()
    except RealDataMissing as e:
        raise WorkflowError(f"--slabs needs the real CT: {e}") from e
    show = progress("eval ct control slabs")
    return evaluate_slabs(seg, ct, labels, names, n=n_slabs, n_free=max(100, n_slabs),
                          n_motion=max(10, n_slabs // 3),
                          progress=lambda d, t: show(d / t, f"{d}/{t} slabs"))


def evaluate_site(card_path: Path, modality: str, images: Path, labels: Path, *,
                  backends: str = "auto", json_out: str | None = None,
                  progress: Progress = no_progress) -> EvalReport:
    """The report on a site's annotated DICOM images
    (:func:`guidance.training.site_eval.evaluate_site_images`), written as JSON like the
    shipped report; the notes name every false needle and every file not used."""
    from guidance.training.site_eval import evaluate_site_images

    seg = _segmenter(card_path, modality, backends)
    show = progress(f"eval {modality} site images")
    try:
        metrics = evaluate_site_images(seg, modality, images, labels,
                                       progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    except ValueError as e:
        raise WorkflowError(str(e)) from e
    report = _report(metrics, json_out)
    report.notes += [f"false needle: {name}"
                     for name in report.metrics["needle_free"]["frames_with_false_needle"]]
    report.notes += [f"not used: {f['file']}: {f['error'] or 'unlabelled'}"
                     for f in report.metrics["files"]
                     if f["error"] or f["labels"] == "unlabelled"]
    return report


@dataclass(frozen=True)
class EvalRequest:
    """What ``guidance eval`` asks: the model (``model`` card, default the shipped model
    of ``modality``), the held-out ``frames`` (``seed``), the needle-free frames, CT
    control ``slabs``, or a site's ``images`` with their ``labels``; ``json_out``
    (``-``: stdout), ``png``, ``update_card``."""

    modality: str
    model: Path | None
    json_out: str | None
    png: Path | None
    frames: int
    seed: int
    backends: str
    cache: Path
    needle_free_frames: int
    images: Path | None
    labels: Path | None
    slabs: int
    update_card: bool


def evaluate(req: EvalRequest, progress: Progress = no_progress) -> EvalReport:
    """Run the evaluation ``req`` asks for.

    Raises:
        WorkflowError: a count out of range, ``images`` without ``labels`` (or the
            reverse), ``update_card`` with ``images``, no model (the messages name the
            command's options).
    """
    from models.shipped import shipped_card

    if req.frames < 1:
        raise WorkflowError(f"--frames must be >= 1, got {req.frames}")
    if req.slabs < 0:
        raise WorkflowError(f"--slabs must be >= 0, got {req.slabs}")
    if req.needle_free_frames < 0:
        raise WorkflowError(f"--needle-free-frames must be >= 0, got {req.needle_free_frames}")
    if (req.images is None) != (req.labels is None):
        raise WorkflowError("--images and --labels go together (a site's DICOM images and "
                            "their labels)")
    try:
        card = req.model or shipped_card(req.modality)
    except FileNotFoundError as e:
        raise WorkflowError(str(e)) from e
    if req.images is not None and req.labels is not None:
        if req.update_card:
            raise WorkflowError("--update-card stores the shipped measurements; it does not "
                                "go with --images")
        return evaluate_site(card, req.modality, req.images, req.labels,
                             backends=req.backends, json_out=req.json_out, progress=progress)
    return evaluate_and_record(card, req.modality, n_test=req.frames, seed=req.seed,
                               cache=req.cache, backends=req.backends, json_out=req.json_out,
                               png=req.png, update_card=req.update_card,
                               n_needle_free=req.needle_free_frames,
                               n_slabs=req.slabs if req.modality == "ct" else 0,
                               progress=progress)


def target_lines(metrics: dict[str, Any]) -> list[str]:
    """Each target of the report: value, its target, PASS/FAIL and, for rates, the
    Wilson 95 % interval with the frame count."""
    lines = []
    for k, v in metrics["targets"].items():
        if isinstance(v, dict):
            val = v["value"]
            ci = v.get("ci95")
            of = f" [95 % {ci[0]:.3f}-{ci[1]:.3f} of {v['of_frames']} frames]" if ci else ""
            lines.append(f"{k:26s} {val if val is None else round(val, 3)!s:>8} "
                         f"(target {v['target']}) {'PASS' if v['pass'] else 'FAIL'}{of}")
    return lines
