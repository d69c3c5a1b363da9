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

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from guidance.cli.common import path_arg
from guidance.cli.main import UsageError
from guidance.records import MODALITIES

__all__ = ["evaluate_and_record", "evaluate_site", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a segmentation model (held-out + real images)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=MODALITIES, required=True,
                   help="which model: ultrasound, fluoroscopy or CT(-fluoroscopy) slices")
    p.add_argument("--model", type=path_arg("input_file", Path), default=None, metavar="CARD",
                   help="model card JSON (default: the shipped model of the modality)")
    p.add_argument("--json", type=path_arg("output_file", special=("-",)), nargs="?", const="-",
                   default=None, metavar="FILE",
                   help="write the report as JSON to FILE (no FILE: stdout)")
    p.add_argument("--png", type=path_arg("output_file", Path), default=None, metavar="FILE",
                   help="example predictions (default: <card>-examples.png beside --json "
                        "or in the current folder)")
    p.add_argument("--frames", type=int, default=400, help="held-out frames (default 400)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated evaluation frames")
    p.add_argument("--backends", default="auto", help="backend chain, e.g. auto or "
                   "onnxruntime-cpu,torch-cpu")
    p.add_argument("--cache", type=path_arg("output_dir", Path, parents=True),
                   default=Path.home() / ".cache" / "guidance" / "datasets", metavar="DIR",
                   help="dataset cache folder")
    p.add_argument("--needle-free-frames", type=int, default=400,
                   help="ultrasound: frames of the simulated needle-free set (scanned "
                        "without the needle, with straight hard negatives)")
    p.add_argument("--images", type=path_arg("input_dir", Path), default=None, metavar="DIR",
                   help="a site's annotated DICOM images (needs --labels; see above)")
    p.add_argument("--labels", type=path_arg("input_dir", Path), default=None, metavar="DIR",
                   help="label maps NAME.png / NAME.npy and needle-free.txt for --images")
    p.add_argument("--slabs", type=int, default=100, metavar="N",
                   help="CT: also run the whole control-scan path (registration, batched "
                        "segmentation, 3D needle) on N held-out simulated slabs with a "
                        "needle, max(100, N) needle-free and N/3 after 10 mm / 3 deg of "
                        "patient motion (default 100; 0: slices only)")
    p.add_argument("--update-card", action="store_true", help="store the metrics in the card")
    p.set_defaults(func=run)


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


def evaluate_and_record(card_path: Path, modality: str, *, n_test: int = 400, seed: int = 0,
                        cache: Path | None = None, backends: str = "auto",
                        json_out: str | None = None, png: Path | None = None,
                        update_card: bool = False,
                        n_needle_free: int | None = None, n_slabs: int = 0
                        ) -> dict[str, Any]:
    """Evaluate the model behind ``card_path``; write JSON/PNG; optionally update the card.

    Returns:
        The metrics (as written).
    """
    from guidance.cli.common import progress_line
    from guidance.training.evaluate import evaluate_model
    from models.card import load_card

    seg = _segmenter(card_path, modality, backends)
    if png is None:
        base = Path(json_out).parent if json_out not in (None, "-") else card_path.parent
        png = base / f"{seg.card.name}-examples.png"
    show = progress_line(f"eval {modality}")
    metrics = evaluate_model(seg, modality, n_test=n_test, seed=seed, cache_dir=cache, png=png,
                             progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"),
                             n_needle_free=n_needle_free)
    if modality == "ct" and n_slabs > 0:
        metrics["control_slabs"] = _slab_eval(seg, n_slabs)
        for k, v in metrics["control_slabs"]["targets"].items():
            metrics.setdefault("targets", {})[f"slab_{k}"] = v
    metrics = _clean(metrics)
    text = json.dumps(metrics, indent=1)
    if json_out == "-":
        sys.stdout.write(text + "\n")
    elif json_out is not None:
        Path(json_out).write_text(text + "\n")
        print(f"wrote {json_out}", file=sys.stderr)
    print(f"wrote {png}", file=sys.stderr)
    if update_card:
        import dataclasses

        card, _ = load_card(card_path)
        slim = {k: metrics[k] for k in ("backend", "held_out", "dice", "needle",
                                        "needle_free_sim", "targets", "control_slabs")
                if k in metrics}
        slim["real_needle_free"] = metrics["real_needle_free"]
        dataclasses.replace(card, metrics=slim).save(card_path)
        print(f"updated metrics in {card_path}", file=sys.stderr)
    return metrics


def _slab_eval(seg: Any, n_slabs: int) -> dict[str, Any]:
    """The control-scan path on held-out simulated slabs of the real CT
    (:mod:`guidance.training.ct_slab_eval`): n_slabs with a needle, as many needle-free
    (at least 100), a third as many after 10 mm / 3 deg of motion."""
    from guidance.cli.common import progress_line
    from guidance.data import RealDataMissing, load_real_ct, load_real_labels, structure_names
    from guidance.training.ct_slab_eval import evaluate_slabs

    try:
        ct, labels, names = load_real_ct(), load_real_labels(), structure_names()
    except RealDataMissing as e:
        raise UsageError(f"--slabs needs the real CT: {e}") from e
    show = progress_line("eval ct control slabs")
    return evaluate_slabs(seg, ct, labels, names, n=n_slabs, n_free=max(100, n_slabs),
                          n_motion=max(10, n_slabs // 3),
                          progress=lambda d, t: show(d / t, f"{d}/{t} slabs"))


def _segmenter(card_path: Path, modality: str, backends: str) -> Any:
    from models.card import CardError
    from models.segmenter import Segmenter

    chain: Any = backends if backends == "auto" else [b.strip() for b in backends.split(",")]
    try:
        seg = Segmenter(card_path, chain=chain)
    except (CardError, ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    if seg.card.modality != modality:
        raise UsageError(f"{card_path}: model {seg.card.name} is for {seg.card.modality!r}, "
                         f"not {modality!r}")
    return seg


def evaluate_site(card_path: Path, modality: str, images: Path, labels: Path, *,
                  backends: str = "auto", json_out: str | None = None) -> dict[str, Any]:
    """``guidance eval --images DIR --labels DIR``: the report on a site's annotated DICOM
    images (:func:`guidance.training.site_eval.evaluate_site_images`); written as JSON
    like the shipped report.

    Returns:
        The report (as written).
    """
    from guidance.cli.common import progress_line
    from guidance.training.site_eval import evaluate_site_images

    seg = _segmenter(card_path, modality, backends)
    show = progress_line(f"eval {modality} site images")
    try:
        report = evaluate_site_images(seg, modality, images, labels,
                                      progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    report = _clean(report)
    text = json.dumps(report, indent=1)
    if json_out == "-":
        sys.stdout.write(text + "\n")
    elif json_out is not None:
        Path(json_out).write_text(text + "\n")
        print(f"wrote {json_out}", file=sys.stderr)
    free = report["needle_free"]
    for name in free["frames_with_false_needle"]:
        print(f"false needle: {name}", file=sys.stderr)
    for f in report["files"]:
        if f["error"] or f["labels"] == "unlabelled":
            print(f"not used: {f['file']}: {f['error'] or 'unlabelled'}", file=sys.stderr)
    return report


def run(args: argparse.Namespace) -> int:
    from models.shipped import shipped_card

    if args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    if args.slabs < 0:
        raise UsageError(f"--slabs must be >= 0, got {args.slabs}")
    if args.needle_free_frames < 0:
        raise UsageError(f"--needle-free-frames must be >= 0, got {args.needle_free_frames}")
    if (args.images is None) != (args.labels is None):
        raise UsageError("--images and --labels go together (a site's DICOM images and "
                         "their labels)")
    try:
        card = args.model or shipped_card(args.modality)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if args.images is not None:
        if args.update_card:
            raise UsageError("--update-card stores the shipped measurements; it does not go "
                             "with --images")
        m = evaluate_site(card, args.modality, args.images, args.labels,
                          backends=args.backends, json_out=args.json)
    else:
        m = evaluate_and_record(card, args.modality, n_test=args.frames, seed=args.seed,
                                cache=args.cache, backends=args.backends, json_out=args.json,
                                png=args.png, update_card=args.update_card,
                                n_needle_free=args.needle_free_frames,
                                n_slabs=args.slabs if args.modality == "ct" else 0)
    t = m["targets"]
    for k, v in t.items():
        if isinstance(v, dict):
            val = v["value"]
            ci = v.get("ci95")
            of = f" [95 % {ci[0]:.3f}-{ci[1]:.3f} of {v['of_frames']} frames]" if ci else ""
            print(f"{k:26s} {val if val is None else round(val, 3)!s:>8} "
                  f"(target {v['target']}) {'PASS' if v['pass'] else 'FAIL'}{of}",
                  file=sys.stderr)
    return 0
