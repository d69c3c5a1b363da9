"""``guidance eval``: measure a segmentation model on held-out simulated frames and on
real needle-free images (Dice per class, needle tip and angle error, false needles).

Writes a JSON report (``--json FILE``, or ``--json`` alone for stdout) and a PNG of
example predictions; ``--update-card`` stores the metrics in the model card.
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

__all__ = ["evaluate_and_record", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a segmentation model (held-out + real images)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=("us", "fluoro", "ct"), required=True,
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
                        update_card: bool = False) -> dict[str, Any]:
    """Evaluate the model behind ``card_path``; write JSON/PNG; optionally update the card.

    Returns:
        The metrics (as written).
    """
    from guidance.cli.common import progress_line
    from guidance.training.evaluate import evaluate_model
    from models.card import CardError, load_card
    from models.segmenter import Segmenter

    chain: Any = backends if backends == "auto" else [b.strip() for b in backends.split(",")]
    try:
        seg = Segmenter(card_path, chain=chain)
    except (CardError, ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    if seg.card.modality != modality:
        raise UsageError(f"{card_path}: model {seg.card.name} is for {seg.card.modality!r}, "
                         f"not {modality!r}")
    if png is None:
        base = Path(json_out).parent if json_out not in (None, "-") else card_path.parent
        png = base / f"{seg.card.name}-examples.png"
    show = progress_line(f"eval {modality}")
    metrics = evaluate_model(seg, modality, n_test=n_test, seed=seed, cache_dir=cache, png=png,
                             progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
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
        slim = {k: metrics[k] for k in ("backend", "held_out", "dice", "needle", "targets")}
        slim["real_needle_free"] = {k: v for k, v in metrics["real_needle_free"].items()
                                    if k != "frames_with_false_needle"}
        dataclasses.replace(card, metrics=slim).save(card_path)
        print(f"updated metrics in {card_path}", file=sys.stderr)
    return metrics


def run(args: argparse.Namespace) -> int:
    from models.shipped import shipped_card

    if args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    try:
        card = args.model or shipped_card(args.modality)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    m = evaluate_and_record(card, args.modality, n_test=args.frames, seed=args.seed,
                            cache=args.cache, backends=args.backends, json_out=args.json,
                            png=args.png, update_card=args.update_card)
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
