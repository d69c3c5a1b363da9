"""The segment stage with a model: labels resampled to the frame, the needle from the
model's mask, the classical cross-check, and the DEGRADED cases (fallback backend,
spacing out of range, no model). A scripted segmenter stands in for the network so
every case is exact; the shipped models run in test_shipped_models.py."""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.pipeline.config import ConfigError, PreprocessConfig, SegmentConfig
from guidance.pipeline.frame import Frame, WorkItem
from guidance.pipeline.segment import SegmentStage, load_segmenters
from guidance.pipeline.stages import PreprocessStage
from guidance.records import GuidanceState
from models.card import ModelCard
from models.preprocess import GridMap
from models.segmenter import Segmentation

LABELS = ("background", "needle", "nerve", "vessel")


class ScriptedSegmenter:
    """Returns a fixed model-grid segmentation (128 x 128 for a 256 x 256 frame)."""

    def __init__(self, labels: np.ndarray, degraded_reason: str | None = None,
                 spacing_ok: bool = True, modality: str = "us",
                 image: np.ndarray | None = None) -> None:
        self.card = ModelCard(
            name="scripted", modality=modality, version="0", labels=LABELS, input_shape=(128, 128),
            pixel_spacing_mm=0.4, spacing_range_mm=(0.3, 0.5), normalisation={"method": "zscore"},
            architecture={}, onnx_file="x.onnx", onnx_sha256="0" * 64, opset=17,
            needle_rule={"max_flank_asymmetry": 0.55} if modality == "ct" else {})
        self.degraded = degraded_reason is not None
        self.degraded_reason = degraded_reason
        self.labels = labels
        self.probs = np.stack([(labels == c).astype(np.float32) for c in range(4)])
        self.spacing_ok = spacing_ok
        self.image = np.zeros(labels.shape, np.float32) if image is None else image

    focus_px = 0  # runs on the whole frame only

    def segment(self, plane: np.ndarray, spacing_mm: float,
                focus_ij: np.ndarray | None = None) -> Segmentation:
        assert focus_ij is None
        assert plane.shape == (256, 256)
        grid = GridMap((256, 256), (128, 128), 2.0, spacing_mm * 2.0)
        return Segmentation(self.labels, self.probs, grid, "scripted", 1.0, 1.5, self.spacing_ok,
                            self.image)


def _frame_and_mask(needle_end=(150, 130)) -> tuple[Frame, np.ndarray]:
    img = np.random.default_rng(0).rayleigh(30, (256, 256)).clip(0, 255).astype(np.uint8)
    cv2.line(img, (10, 20), needle_end, 230, 2)
    vol = ImageVolume(img[None], np.diag([0.2, 0.2, 1.0, 1.0]))
    lab = np.zeros((128, 128), np.uint8)
    cv2.circle(lab, (90, 90), 10, 2, -1)  # nerve
    cv2.circle(lab, (30, 100), 8, 3, -1)  # vessel
    cv2.line(lab, (5, 10), (75, 65), 1, 2)  # needle, model grid = frame / 2
    return Frame(1, "Image", vol, time.time(), time.monotonic_ns()), lab


def messages(item: WorkItem) -> list[str]:
    return [r.message for r in item.reasons]


def _run(stage: SegmentStage, frame: Frame) -> WorkItem:
    item = WorkItem(frame=frame, t_s=0.0, modality="us")
    PreprocessStage(PreprocessConfig()).process(item)
    stage.process(item)
    return item


def test_model_labels_and_needle_map_to_the_frame_and_agree_with_classical() -> None:
    frame, lab = _frame_and_mask()
    stage = SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(lab)})  # type: ignore[dict-item]
    item = _run(stage, frame)
    assert item.label_names == LABELS
    assert item.labels is not None and item.labels.shape == (256, 256)
    assert set(np.unique(item.labels)) == {0, 1, 2, 3}
    assert item.labels[180, 180] == 2 and item.labels[200, 60] == 3
    n = item.needle
    assert n is not None
    assert np.linalg.norm(n.tip_ij - (150, 130)) < 4.0  # model grid (75, 65) -> frame
    assert item.metrics["crosscheck_agree"] == 1.0
    assert item.metrics["crosscheck_tip_mm"] < 3.0
    assert item.state == GuidanceState.OK and not item.reasons


def test_disagreement_halves_confidence_degrades_and_is_reported() -> None:
    frame, lab = _frame_and_mask(needle_end=(60, 200))  # classical sees another line
    agree = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(_frame_and_mask()[1])}),  # type: ignore[dict-item]
                 _frame_and_mask()[0])
    item = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(lab)}), frame)  # type: ignore[dict-item]
    assert item.state == GuidanceState.DEGRADED
    assert any("disagree" in r for r in messages(item)), item.reasons
    assert item.metrics["crosscheck_agree"] == 0.0
    assert item.needle is not None and agree.needle is not None
    assert item.needle.confidence < 0.6 * agree.needle.confidence


def test_classical_only_needle_is_reported_not_used() -> None:
    frame, lab = _frame_and_mask()
    lab[lab == 1] = 0  # the model sees no needle; the painted one is still in the image
    item = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(lab)}), frame)  # type: ignore[dict-item]
    assert item.needle is None
    assert any("classical detector sees a needle" in r for r in messages(item))


def test_curved_model_evidence_is_not_a_needle_and_the_rule_is_configurable() -> None:
    frame, lab = _frame_and_mask()
    lab[lab == 1] = 0
    cv2.ellipse(lab, (64, 10), (40, 40), 0, 20, 160, 1, 2)  # a bright curved wall
    item = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(lab)}), frame)  # type: ignore[dict-item]
    assert item.needle is None
    assert item.metrics["needle_scatter_mm"] > 0.45
    assert any("classical detector sees a needle" in r for r in messages(item))
    loose = SegmentConfig(needle_max_scatter_mm=50.0, needle_min_collinear=0.0)
    item = _run(SegmentStage(loose, {"us": ScriptedSegmenter(lab)}), frame)  # type: ignore[dict-item]
    assert item.needle is not None


@pytest.mark.parametrize(("field", "value"), [("needle_min_collinear", 1.2),
                                              ("needle_min_collinear", True),
                                              ("needle_max_scatter_mm", 0.0),
                                              ("needle_max_scatter_px", "wide")])
def test_bad_needle_rule_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"segment.{field}"):
        SegmentConfig(**{field: value})  # type: ignore[arg-type]


def test_a_ct_model_needle_must_be_a_line_not_an_edge() -> None:
    """A CT model's card carries a flank limit: the same needle mask is a needle on a
    picture with alike tissue on both sides, and not one on a bone plate's edge."""
    frame, lab = _frame_and_mask()
    picture = np.zeros((128, 128), np.float32)
    cv2.line(picture, (5, 10), (75, 65), 0.9, 2)
    edge = picture.copy()
    rows, cols = np.mgrid[0:128, 0:128]
    edge[(rows - 10) * 70 - (cols - 5) * 55 < -140] = 0.45  # bone above the line
    found = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(  # type: ignore[dict-item]
        lab, modality="ct", image=picture)}), frame)
    assert found.needle is not None
    assert found.metrics["needle_flank_asymmetry"] < 0.2
    plate = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(  # type: ignore[dict-item]
        lab, modality="ct", image=edge)}), frame)
    assert plate.needle is None
    assert plate.metrics["needle_flank_asymmetry"] > 0.55
    # the classical detector still sees the drawn needle, and says so
    assert any("classical detector sees a needle" in r for r in messages(plate))
    # an ultrasound model's rule does not look at the flanks
    us = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(  # type: ignore[dict-item]
        lab, image=edge)}), frame)
    assert us.needle is not None and "needle_flank_asymmetry" not in us.metrics


def test_backend_fallback_and_spacing_out_of_range_degrade() -> None:
    frame, lab = _frame_and_mask()
    seg = ScriptedSegmenter(lab, degraded_reason="tensorrt failed: engine mismatch")
    item = _run(SegmentStage(SegmentConfig(), {"us": seg}), frame)  # type: ignore[dict-item]
    assert item.state == GuidanceState.DEGRADED
    assert any("engine mismatch" in r for r in messages(item))
    item = _run(SegmentStage(SegmentConfig(), {"us": ScriptedSegmenter(lab, spacing_ok=False)}),  # type: ignore[dict-item]
                frame)
    assert item.state == GuidanceState.DEGRADED
    assert any("training range" in r for r in messages(item))


def test_missing_model_falls_back_to_classical_degraded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = SegmentConfig(model=str(tmp_path / "absent.json"))
    segs, errors = load_segmenters(cfg, ("us",))
    assert segs == {} and "absent.json" in errors["us"]
    frame, _ = _frame_and_mask()
    item = _run(SegmentStage(cfg, segs, errors), frame)
    assert item.state == GuidanceState.DEGRADED
    assert any("absent.json" in r and "classical detector only" in r for r in messages(item))
    assert item.needle is not None  # the classical detector still finds the painted needle
    # Chosen on purpose, classical-only is not a failure.
    item = _run(SegmentStage(dataclasses.replace(cfg, model="none"), {}, {}), frame)
    assert item.state == GuidanceState.OK and item.needle is not None
