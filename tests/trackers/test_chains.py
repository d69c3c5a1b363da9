"""Which link of a room's transform chain is missing, named with what makes it."""

from __future__ import annotations

import numpy as np
import pytest

from trackers.chains import NEEDLE_TIP_TO_CT, Chain, Link, frame_to_ct_chain, missing_link
from trackers.transform_graph import NoPathError, TransformGraph


def _t(x: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = [x, 1.0, 2.0]
    return m


@pytest.mark.parametrize(
    ("live", "static", "missing", "hint"),
    [
        ([], [], "NeedleTipToNeedle", "calibrate pivot --tool Needle"),
        (["NeedleToReference"], ["ReferenceToCT"], "NeedleTipToNeedle", "calibrate pivot"),
        ([], ["NeedleTipToNeedle", "ReferenceToCT"], "NeedleToReference or NeedleToTracker",
         "tracker must send"),
        (["NeedleToReference"], ["NeedleTipToNeedle"], "ReferenceToCT or TrackerToCT",
         "calibrate register --name ReferenceToCT"),
        # PLUS holding the calibration sends the tip itself: only the registration lacks.
        (["NeedleTipToReference"], [], "ReferenceToCT", "calibrate register"),
        (["NeedleToTracker", "ReferenceToTracker"], ["NeedleTipToNeedle"], "ReferenceToCT",
         "register"),
        (["NeedleToTracker", "ReferenceToTracker"], ["NeedleTipToNeedle", "ReferenceToCT"],
         None, ""),
        (["NeedleTipToReference"], ["ReferenceToCT"], None, ""),
    ],
)
def test_needle_tip_chain_names_the_missing_link(live, static, missing, hint) -> None:
    g = TransformGraph(default_max_age_s=10.0)
    for k, name in enumerate(live):
        g.update(name, _t(k + 1.0))
    for k, name in enumerate(static):
        g.set_static(name, _t(k + 10.0), source="file.json")
    got = missing_link(g.reachable("NeedleTip"), NEEDLE_TIP_TO_CT)
    if missing is None:
        assert got is None
        assert g.query("NeedleTip", "CT").ok
        return
    assert got is not None
    assert f"missing {missing}" in got.message
    assert hint in got.message
    assert got.message.startswith("no needle tip (NeedleTip -> CT)")
    with pytest.raises(NoPathError) as err:
        g.query("NeedleTip", "CT")
    assert missing_link(err.value.reachable, NEEDLE_TIP_TO_CT) == got


@pytest.mark.parametrize(
    ("frame", "have", "missing"),
    [
        ("Image", ["ProbeToReference", "ReferenceToCT"], "ImageToProbe"),
        ("Image", ["ImageToProbe", "ReferenceToCT"], "ProbeToReference or ProbeToTracker"),
        ("Image", ["ImageToProbe", "ProbeToReference"], "ReferenceToCT or TrackerToCT"),
        ("Reference", [], "ReferenceToCT"),
        ("Scanner", [], "ScannerToCT"),
        ("CT", [], None),
    ],
)
def test_image_placement_chain(frame, have, missing) -> None:
    g = TransformGraph(default_max_age_s=10.0)
    for k, name in enumerate(have):
        g.set_static(name, _t(k + 1.0))
    got = missing_link(g.reachable(frame), frame_to_ct_chain(frame))
    if missing is None:
        assert got is None
    else:
        assert got is not None and f"missing {missing}" in got.message


def test_bad_chains_are_refused() -> None:
    with pytest.raises(ValueError, match="N - 1 links"):
        Chain("x", (("A",),), ())
    with pytest.raises(ValueError, match="must look like 'FromToTo'"):
        Link(("notaname",), "live", "")
    with pytest.raises(ValueError, match="kind must be"):
        Link(("AToB",), "magic", "")
    with pytest.raises(ValueError, match="frame must match"):
        frame_to_ct_chain("image")
