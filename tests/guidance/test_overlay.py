"""The headless annotated frame (PNG output, benchmark): the warning banner is never cut."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.pipeline.frame import FrameResult, NeedleEstimate2D3D, Reason, StateReason
from guidance.pipeline.overlay import (
    DEGRADED_COLOUR,
    LEVEL_COLOURS,
    NO_GUIDANCE_COLOUR,
    STALE_COLOUR,
    OverlayComposer,
    banner_colour,
    wrap_text,
)
from guidance.records import GuidanceState, SafetyWarning, WarningLevel

LONG = ("vertebra_L1: 2.3 mm, within the 2.8 mm margin; breach expected 4.6 mm ahead "
        "on the current axis")


def _width(s: str, scale: float) -> int:
    return int(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0])


@pytest.mark.parametrize("width_px", [60, 200, 500, 5000])
def test_wrap_text_keeps_every_word_and_fits(width_px: int) -> None:
    scale = 0.5
    lines = wrap_text(LONG, width_px, scale)
    assert "".join(lines).replace(" ", "") == LONG.replace(" ", "")  # nothing dropped
    if max(_width(word, scale) for word in LONG.split()) <= width_px:
        assert " ".join(lines).split() == LONG.split()  # broken at spaces only
    assert all(_width(line, scale) <= width_px for line in lines)
    assert (len(lines) == 1) == (_width(LONG, scale) <= width_px)


def test_wrap_text_breaks_a_word_wider_than_the_line() -> None:
    word = "inferior_vena_cava_and_more_letters_than_fit"
    lines = wrap_text(f"DANGER: {word}", 80, 0.5)
    assert "".join(lines[1:]) == word and len(lines) > 2
    assert all(_width(line, 0.5) <= 80 for line in lines)
    assert wrap_text("", 100, 0.5) == [""]


def _result(message: str, size: int, state: GuidanceState = GuidanceState.OK,
            reasons: tuple[str, ...] = ()) -> FrameResult:
    from tests.guidance.gui.test_display_model import _decision

    w = SafetyWarning(1.0, WarningLevel.DANGER, "vertebra_L1", 2.3, message)
    img = ImageVolume(voxels=np.full((1, size, size), 100, np.uint16), ijk_to_lps=np.eye(4))
    why = Reason.DETECTORS_DISAGREE if state == GuidanceState.DEGRADED else Reason.NO_NEEDLE
    return FrameResult(seq=1, t_s=1.0, received_ns=1, state=state,
                       state_reasons=tuple(StateReason(why, r) for r in reasons),
                       decision=_decision([w]), image=img)


def _banner_rows(rgb: np.ndarray) -> int:
    """Rows from the top whose first column has the DANGER banner colour."""
    col = rgb[:, 1]
    danger = np.all(col == LEVEL_COLOURS[WarningLevel.DANGER], axis=1)
    return int(np.argmin(danger)) if not danger.all() else len(danger)


def test_a_long_warning_grows_the_banner_instead_of_being_cut() -> None:
    comp = OverlayComposer()
    short = comp.compose(_result("L1: 2 mm", 256)).copy()
    long = comp.compose(_result(LONG, 256)).copy()
    one = _banner_rows(short)
    assert one >= 18
    n_lines = len(wrap_text(f"DANGER: {LONG}", 256 - 8, max(18, 256 // 14) / 40.0))
    assert n_lines >= 3
    assert _banner_rows(long) == pytest.approx(one * n_lines, abs=2)
    # white text on every line of the banner
    line_h = max(18, 256 // 14)
    for k in range(n_lines):
        band = long[k * line_h:(k + 1) * line_h, :, :]
        assert (band.min(axis=2) > 200).sum() > 20


def test_a_degraded_frame_says_so_and_why_beside_the_warning(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    drawn: list[str] = []
    real = cv2.putText

    def spy(img, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(text)
        return real(img, text, *args, **kwargs)

    monkeypatch.setattr(cv2, "putText", spy)
    why = "cross-check: model and classical detector disagree (tips 4.2 mm apart)"
    res = _result("vertebra_L1: 2.3 mm", 256, GuidanceState.DEGRADED, (why, "second"))
    OverlayComposer().compose(res)
    banner = " ".join(drawn)
    for part in ("DANGER:", "vertebra_L1:", "DEGRADED:", "cross-check:", "apart)", "(+1 more)"):
        assert part in banner
    drawn.clear()
    OverlayComposer().compose(_result("vertebra_L1: 2.3 mm", 256))
    assert "DEGRADED" not in " ".join(drawn) and "more)" not in " ".join(drawn)


def _plain(state: GuidanceState, decision=None, needle=None, size: int = 128) -> FrameResult:
    from tests.guidance.gui.test_display_model import _WHY

    img = ImageVolume(voxels=np.full((1, size, size), 100, np.uint16), ijk_to_lps=np.eye(4))
    reasons = (StateReason(_WHY[state], "why"),) if state in _WHY else ()
    return FrameResult(seq=1, t_s=1.0, received_ns=1, state=state, state_reasons=reasons,
                       decision=decision, needle=needle, image=img)


@pytest.mark.parametrize(
    ("state", "colour"),
    [
        (GuidanceState.NO_GUIDANCE, NO_GUIDANCE_COLOUR),
        (GuidanceState.DEGRADED, DEGRADED_COLOUR),
        (GuidanceState.STALE, STALE_COLOUR),
        (GuidanceState.OK, LEVEL_COLOURS[WarningLevel.NONE]),
    ],
)
def test_a_state_that_is_not_ok_is_never_drawn_in_the_colour_of_ok(state, colour) -> None:
    rgb = OverlayComposer().compose(_plain(state))
    assert tuple(int(v) for v in rgb[2, 2]) == colour  # inside the banner
    ok = LEVEL_COLOURS[WarningLevel.NONE]
    if state != GuidanceState.OK:
        assert colour != ok and not np.any(np.all(rgb == ok, axis=2))
        assert banner_colour(state, WarningLevel.NONE) != ok
        assert banner_colour(state, WarningLevel.INFO) != ok


def test_numbers_only_when_measured_on_that_update(monkeypatch) -> None:
    from tests.guidance.gui.test_display_model import _decision

    drawn: list[str] = []
    real = cv2.putText

    def spy(img, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(text)
        return real(img, text, *args, **kwargs)

    monkeypatch.setattr(cv2, "putText", spy)
    nan2 = np.full(2, np.nan)
    needle = NeedleEstimate2D3D(nan2, nan2, np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.9,
                                "tracker")
    OverlayComposer().compose(_plain(GuidanceState.OK, _decision(tip_to_target=0.0), needle))
    assert any(t.startswith("tip-target") for t in drawn)
    for state, n in ((GuidanceState.OK, None), (GuidanceState.NO_GUIDANCE, needle),
                     (GuidanceState.STALE, needle)):
        drawn.clear()
        OverlayComposer().compose(_plain(state, _decision(tip_to_target=0.0), n))
        about_target = [t for t in drawn
                        if any(w in t for w in ("tip-target", "to target", "off-plan"))]
        assert not about_target, (state, drawn)


def test_capped_clearances_read_as_bounds() -> None:
    from guidance.gui.live_model import Metric
    from guidance.safety.decision import Clearance
    from tests.guidance.gui.test_display_model import _decision

    far = Clearance("aorta", 30.0, 5.0, capped=True)
    assert far.describe_mm() == "> 30 mm"
    assert Clearance("aorta", 12.34, 5.0).describe_mm() == "12.3 mm"
    assert _decision(clearances=[far]).text() == "OK: closest aorta > 30 mm (margin 5.0 mm)"
    assert Metric("aorta", 30.0, "mm", capped=True).text() == "> 30"
    assert Metric("aorta", 12.34, "mm").text() == "12.3"
    assert Metric("aorta", float("nan"), "mm").text() == "-"
