"""Tool streams: TRANSFORM/TDATA values to TrackedPose, graph feed, ring buffer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackers.tool_stream import ToolStreams
from trackers.transform_graph import TransformGraph, TransformState


def _pose(angle_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", angle_deg, degrees=True).as_matrix()
    m[:3, 3] = t
    return m


def test_transform_becomes_tracked_pose_and_feeds_graph() -> None:
    graph = TransformGraph(clock_ns=lambda: 5_000_000_000)
    streams = ToolStreams(graph)
    pose = streams.on_transform("StylusToTracker", _pose(30, (1, 2, 3)), 12.5, 4_990_000_000)
    assert pose is not None
    assert pose.name == "StylusToTracker"
    assert pose.timestamp_s == 12.5
    assert pose.received_ns == 4_990_000_000
    assert pose.valid
    q = graph.query("Stylus", "Tracker")
    np.testing.assert_allclose(q.matrix, _pose(30, (1, 2, 3)), atol=1e-12)
    assert q.age_s == pytest.approx(0.01)
    assert streams.latest("Stylus") is pose
    assert streams.latest("StylusToTracker") is pose


def test_tdata_bare_names_get_the_reference_frame() -> None:
    graph = TransformGraph()
    streams = ToolStreams(graph, reference_frame="Camera")
    poses = streams.on_tdata(
        [("Needle", _pose(10, (0, 0, 0))), ("Probe", _pose(20, (5, 0, 0)))], 1.0, 100
    )
    assert [p.name for p in poses] == ["NeedleToCamera", "ProbeToCamera"]
    assert streams.names() == ("NeedleToCamera", "ProbeToCamera")
    np.testing.assert_allclose(
        graph.query("Needle", "Probe").matrix,
        np.linalg.inv(_pose(20, (5, 0, 0))) @ _pose(10, (0, 0, 0)),
        atol=1e-12,
    )


def test_identity_is_marked_invalid_and_flagged_in_graph() -> None:
    graph = TransformGraph()
    streams = ToolStreams(graph)
    pose = streams.on_transform("NeedleToTracker", np.eye(4), 0.0, 1)
    assert pose is not None and not pose.valid
    assert graph.query("NeedleToTracker").state is TransformState.IDENTITY


def test_bad_pose_is_dropped_counted_and_others_kept(caplog: pytest.LogCaptureFixture) -> None:
    streams = ToolStreams(TransformGraph())
    assert streams.on_transform("ProbeToTracker", np.diag([2.0, 1, 1, 1]), 0.0, 1) is None
    assert streams.on_transform("bad name", _pose(0, (0, 0, 0)), 0.0, 1) is None
    assert streams.rejected == 2
    assert "not rigid" in caplog.text
    ok = streams.on_tdata(
        [("Needle", np.full((4, 4), np.nan)), ("Probe", _pose(5, (1, 1, 1)))], 0.0, 2
    )
    assert [p.name for p in ok] == ["ProbeToTracker"]
    assert streams.rejected == 3


def test_ring_buffer_keeps_the_newest() -> None:
    streams = ToolStreams(buffer_len=5)
    for i in range(12):
        streams.on_transform("StylusToTracker", _pose(i, (i, 0, 0)), i * 0.1, i)
    hist = streams.history("Stylus")
    assert [p.received_ns for p in hist] == [7, 8, 9, 10, 11]
    stacked = ToolStreams.stack(hist)
    assert stacked.shape == (5, 4, 4)
    np.testing.assert_allclose(stacked[:, 0, 3], [7, 8, 9, 10, 11])


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"buffer_len": 0}, ValueError),
        ({"buffer_len": 2.5}, TypeError),
        ({"reference_frame": "tracker"}, ValueError),
        ({"graph": {}}, TypeError),
    ],
)
def test_bad_construction(kwargs: dict[str, object], exc: type) -> None:
    with pytest.raises(exc):
        ToolStreams(**kwargs)  # type: ignore[arg-type]
