"""Needle-rule limits that belong to one model, measured on its own training frames.

:class:`trackers.needle_fit.NeedleRule` decides when a model's needle piece is reported.
Most of its limits hold for every model; the flank limit (a needle is a line, not an
edge: :func:`trackers.needle_fit.flank_asymmetry`) depends on what the model draws, so
``guidance train`` measures it on the frames the model was trained on and writes it into
the model card (``needle_rule``; how it was measured: ``training.needle_rule``). A
retrained model thus carries its own limit, and no real image is looked at to set it.

Only modalities where the needle is the densest thing in the picture get the flank check
(:data:`FLANK_CHECK_MODALITIES`: CT). Ultrasound (shadow and reverberations on one side
of the needle) and fluoroscopy (a projection: the needle crosses bone edges along its
length) do not.

Ultrasound models get a confidence limit instead (:data:`PROB_CHECK_MODALITIES`,
:func:`measure_prob_limit`): the mean needle probability over a reported piece must
reach the 0.5th percentile (:data:`PROB_LIMIT_PERCENTILE`) of that of the model's own
reported needles on its training frames, rounded down to 0.01. The model's false
needles on bright specular lines (fascia, bone surfaces, reverberation) are short pieces
it is less sure of; its true needles are not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from guidance.records import Modality
from trackers.needle_fit import NeedleRule, flank_asymmetry, needle_evidence

__all__ = [
    "FLANK_CHECK_MODALITIES",
    "FLANK_LIMIT_PERCENTILE",
    "PROB_CHECK_MODALITIES",
    "PROB_LIMIT_PERCENTILE",
    "measure_flank_limit",
    "measure_prob_limit",
]

#: Modalities whose models get the flank check.
FLANK_CHECK_MODALITIES: tuple[str, ...] = (Modality.CT.value,)
#: The limit is this percentile of the flank asymmetry of the model's own reported
#: needles on its training frames (the next measured value), rounded up to 0.01.
FLANK_LIMIT_PERCENTILE = 99.5
#: Modalities whose models get the confidence limit.
PROB_CHECK_MODALITIES: tuple[str, ...] = (Modality.US.value,)
#: The confidence limit is this percentile of the mean needle probability of the model's
#: own reported needles on its training frames (a measured value), rounded down to 0.01.
PROB_LIMIT_PERCENTILE = 0.5


def measure_flank_limit(
    segmenter: Any,
    ds: Any,
    *,
    percentile: float = FLANK_LIMIT_PERCENTILE,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Measure a model's flank limit on its training frames.

    On every frame whose labels contain needle, the model's needle probability goes
    through the default rule without a flank check; for each reported needle the flank
    asymmetry is measured on the model input (the picture the model saw).

    Args:
        segmenter: the model (``models.segmenter.Segmenter``: ``card``, ``backend``).
        ds: its training set (``guidance.training.dataset.SegDataset``: ``images``
            (N, rows, cols) model input, ``labels``, ``spacing_mm`` (N,) mm,
            ``description``).
        percentile: in (0, 100].
        progress: ``progress(done, total, message)``.

    Returns:
        (needle_rule, record): ``{"max_flank_asymmetry": limit}`` for the card, and how
        it was measured (frames, needles, median, the percentile before rounding, how
        many training needles lie above the limit).

    Raises:
        ValueError: a percentile out of range, or no needle reported on any frame (the
            limit cannot be measured).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    rule = NeedleRule()
    card = segmenter.card
    x = np.zeros((1, 1, *ds.images.shape[1:]), np.float32)
    frames = [i for i in range(len(ds.images)) if (ds.labels[i] == 1).any()]
    values = []
    for k, i in enumerate(frames):
        x[0, 0] = ds.images[i]
        prob = segmenter.backend.run(x)[0][1]
        sp = float(ds.spacing_mm[i])
        ev = needle_evidence(prob, sp, card.pixel_spacing_mm, rule)
        if ev.needle is not None:
            values.append(flank_asymmetry(ds.images[i], ev.needle, sp, rule.flank_mm))
        if progress and (k + 1) % 200 == 0:
            progress(k + 1, len(frames), "training frames: flank asymmetry")
    if not values:
        raise ValueError(f"model {card.name} reports no needle on its {len(frames)} training "
                         "frames with a needle: the flank limit cannot be measured")
    v = np.asarray(values)
    raw = float(np.percentile(v, percentile, method="higher"))  # a measured value
    if not math.isfinite(raw):
        raise ValueError(f"model {card.name}: more than {100 - percentile:g} % of its training "
                         "needles are not brighter than their flanks: no flank limit")
    limit = math.ceil(raw * 100.0 - 1e-9) / 100.0
    record = {
        "max_flank_asymmetry": {
            "measured_on": "training frames with a needle (default rule, no flank check)",
            "data": ds.description, "frames": len(frames), "needles": int(v.size),
            "median": float(np.median(v)), "percentile": percentile,
            "value_at_percentile": raw, "limit": limit,
            "needles_above_limit": int((v > limit).sum()),
            "flank_mm": list(rule.flank_mm),
        }
    }
    return {"max_flank_asymmetry": limit}, record


def measure_prob_limit(
    segmenter: Any,
    ds: Any,
    *,
    percentile: float = PROB_LIMIT_PERCENTILE,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Measure a model's confidence limit (``min_mean_prob``) on its training frames.

    On every frame whose labels contain needle, the model's needle probability goes
    through the default rule; for each reported needle the mean probability over its
    piece (:attr:`trackers.needle_detect.NeedleDetection.score`) is recorded.

    Args:
        segmenter: the model (``models.segmenter.Segmenter``: ``card``, ``backend``).
        ds: its training set (``guidance.training.dataset.SegDataset``).
        percentile: in [0, 100).
        progress: ``progress(done, total, message)``.

    Returns:
        (needle_rule, record): ``{"min_mean_prob": limit}`` for the card, and how it was
        measured (frames, needles, median, the percentile before rounding, how many
        training needles lie below the limit).

    Raises:
        ValueError: a percentile out of range, or no needle reported on any frame.
    """
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    rule = NeedleRule()
    card = segmenter.card
    x = np.zeros((1, 1, *ds.images.shape[1:]), np.float32)
    frames = [i for i in range(len(ds.images)) if (ds.labels[i] == 1).any()]
    values = []
    for k, i in enumerate(frames):
        x[0, 0] = ds.images[i]
        prob = segmenter.backend.run(x)[0][1]
        ev = needle_evidence(prob, float(ds.spacing_mm[i]), card.pixel_spacing_mm, rule)
        if ev.needle is not None:
            values.append(ev.needle.score)
        if progress and (k + 1) % 200 == 0:
            progress(k + 1, len(frames), "training frames: needle probability")
    if not values:
        raise ValueError(f"model {card.name} reports no needle on its {len(frames)} training "
                         "frames with a needle: the confidence limit cannot be measured")
    v = np.asarray(values)
    raw = float(np.percentile(v, percentile, method="lower"))  # a measured value
    limit = math.floor(raw * 100.0 + 1e-9) / 100.0
    record = {
        "min_mean_prob": {
            "measured_on": "training frames with a needle (default rule)",
            "data": ds.description, "frames": len(frames), "needles": int(v.size),
            "median": float(np.median(v)), "percentile": percentile,
            "value_at_percentile": raw, "limit": limit,
            "needles_below_limit": int((v < limit).sum()),
        }
    }
    return {"min_mean_prob": limit}, record
