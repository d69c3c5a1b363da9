"""The focus window (``segment.focus_px``): once a needle is found, the fluoroscopy
model runs on a window around its tip only. On the simulator's fluoroscopy of the real
CT (needle advancing) it finds the same needle as the whole frame; a needle that leaves
the window sends the frame back to the whole frame; ultrasound never uses it."""

from __future__ import annotations

import numpy as np
import pytest

from guidance.io.config_schema import ConfigError
from guidance.pipeline.config import PreprocessConfig, SegmentConfig
from guidance.pipeline.frame import Frame, WorkItem
from guidance.pipeline.segment import SegmentStage, load_segmenters
from guidance.pipeline.stages import PreprocessStage
from tests.peers import require_real_ct

#: Simulated times of the frames: the needle 30-35 mm in, advancing 0.5 mm a frame.
TIMES = [6.0 + 0.13 * i for i in range(10)]


@pytest.fixture(scope="module")
def frames() -> list:
    require_real_ct()
    from guidance.sim import make_scanner

    sc = make_scanner("fluoro", size=512, seed=0)
    return [sc.frame(i, t) for i, t in enumerate(TIMES)]


def _stage(focus_px: int) -> SegmentStage:
    cfg = SegmentConfig(focus_px=focus_px)
    segs, errors = load_segmenters(cfg, ("fluoro",))
    assert not errors
    return SegmentStage(cfg, segs)


def _process(stage: SegmentStage, f, i: int) -> WorkItem:
    item = WorkItem(Frame(i, "Image_Reference", f.image, f.t_s, 0), t_s=f.t_s,
                    modality="fluoro")
    PreprocessStage(PreprocessConfig()).process(item)
    stage.process(item)
    return item


def test_the_window_finds_the_needle_the_whole_frame_finds(frames: list) -> None:
    whole, focused = _stage(0), _stage(96)
    spacing = float(frames[0].image.spacing_mm[0])
    for i, f in enumerate(frames):
        a, b = _process(whole, f, i), _process(focused, f, i)
        assert a.needle is not None and b.needle is not None, f"frame {i}: no needle"
        gap_mm = float(np.linalg.norm(a.needle.tip_ij - b.needle.tip_ij)) * spacing
        assert gap_mm < 1.0, f"frame {i}: tips {gap_mm:.2f} mm apart"
        err_mm = float(np.linalg.norm(b.needle.tip_ij - f.truth.tip_ij)) * spacing
        assert err_mm < 2.0, f"frame {i}: tip {err_mm:.2f} mm from the truth"
        if i:  # the first frame has no tip to centre on yet
            assert b.metrics.get("segment_focus") == 1.0, f"frame {i}: whole frame"


def test_labels_outside_the_window_are_not_claimed(frames: list) -> None:
    stage = _stage(96)
    _process(stage, frames[0], 0)
    item = _process(stage, frames[1], 1)
    res = item.segmentation
    assert res.window is not None
    r0, c0, r1, c1 = res.window
    outside = np.ones(res.labels.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not res.labels[outside].any()


def test_a_window_reports_only_the_needle_and_where_it_looked(frames: list) -> None:
    """Anatomy cut at the window's edges would draw the window as a vertebra: only the
    needle class is reported from a window, and the window itself is in the result."""
    stage = _stage(96)
    _process(stage, frames[0], 0)
    item = _process(stage, frames[1], 1)
    assert item.labels is not None
    assert set(np.unique(item.labels).tolist()) <= {0, 1}
    assert item.focus_window is not None
    x0, y0, x1, y1 = item.focus_window
    assert x1 - x0 == y1 - y0 == 192  # 96 model pixels, the 512 frame on a 256 grid
    tip = item.needle.tip_ij
    assert x0 <= tip[0] < x1 and y0 <= tip[1] < y1


def test_a_needle_outside_the_window_sends_the_frame_to_the_whole_frame(frames: list) -> None:
    stage = _stage(96)
    _process(stage, frames[0], 0)
    stage._focus["fluoro"] = np.array([5.0, 5.0])  # where the needle is not
    item = _process(stage, frames[1], 1)
    assert item.metrics.get("segment_focus_miss") == 1.0
    assert item.segmentation.window is None
    assert item.needle is not None


def test_ultrasound_is_never_focused() -> None:
    with pytest.raises(ConfigError, match="focus_modalities"):
        SegmentConfig(focus_modalities=("fluoro", "us"))


def test_the_window_is_a_multiple_of_the_network_stride() -> None:
    with pytest.raises(ConfigError, match="focus_px"):
        SegmentConfig(focus_px=100)


def test_a_segmenter_refuses_a_window_as_large_as_its_grid() -> None:
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    with pytest.raises(ValueError, match="focus_px"):
        Segmenter(shipped_card("fluoro"), "onnxruntime-cpu", threads=1, focus_px=256)


def test_the_window_stays_inside_the_grid_at_a_corner() -> None:
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    seg = Segmenter(shipped_card("fluoro"), "onnxruntime-cpu", threads=1, focus_px=96)
    plane = np.random.default_rng(1).integers(0, 65535, (512, 512)).astype(np.uint16)
    res = seg.segment(plane, 0.39, focus_ij=np.array([0.0, 511.0]))
    assert res.window == (160, 0, 256, 96)
    assert float(res.probs[0, 0, 200]) == 1.0  # outside: background, not looked at
