"""Transform graph: names, inverses, composition, rigid checks, staleness, identity."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackers.transform_graph import (
    NoPathError,
    TransformGraph,
    TransformState,
    parse_transform_name,
)


class FakeClock:
    """Monotonic clock under test control (ns)."""

    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def _rigid(rng: np.random.Generator) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    m[:3, 3] = rng.uniform(-300, 300, 3)
    return m


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("NeedleTipToTracker", ("NeedleTip", "Tracker")),
        ("ToolToTracker", ("Tool", "Tracker")),
        ("CTToLPS", ("CT", "LPS")),
        ("Probe2ToTorso", ("Probe2", "Torso")),
    ],
)
def test_valid_names(name: str, frames: tuple[str, str]) -> None:
    assert parse_transform_name(name) == frames


@pytest.mark.parametrize(
    ("name", "exc", "message"),
    [
        ("needleToTracker", ValueError, "must look like 'FromToTo'"),
        ("NeedleTracker", ValueError, "must look like 'FromToTo'"),
        ("Needle_TipToTracker", ValueError, "must look like 'FromToTo'"),
        ("NeedleTo", ValueError, "must look like 'FromToTo'"),
        ("StylusToToolToTracker", ValueError, "ambiguous: 2 possible 'To' separators"),
        (42, TypeError, "must be a str, got int"),
    ],
)
def test_bad_names(name: object, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        parse_transform_name(name)
    with pytest.raises(exc, match=message):
        TransformGraph().update(name, np.eye(4))  # type: ignore[arg-type]


def test_inverse_and_path_composition_round_trip(rng: np.random.Generator) -> None:
    clock = FakeClock()
    g = TransformGraph(clock_ns=clock)
    needle_to_tracker, ref_to_tracker, ct_to_ref = _rigid(rng), _rigid(rng), _rigid(rng)
    g.update("NeedleToTracker", needle_to_tracker)
    g.update("ReferenceToTracker", ref_to_tracker)
    g.set_static("CTToReference", ct_to_ref)
    q = g.query("Needle", "CT")
    want = np.linalg.inv(ct_to_ref) @ np.linalg.inv(ref_to_tracker) @ needle_to_tracker
    np.testing.assert_allclose(q.matrix, want, atol=1e-9)
    assert q.path == ("Needle", "Tracker", "Reference", "CT")
    assert q.ok
    back = g.query("CTToNeedle")
    np.testing.assert_allclose(back.matrix @ q.matrix, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(
        g.query("Tracker", "Needle").matrix, np.linalg.inv(needle_to_tracker), atol=1e-9
    )
    assert g.query("CT", "CT").path == ("CT",)
    assert g.frames() == ("CT", "Needle", "Reference", "Tracker")


def test_no_path(rng: np.random.Generator) -> None:
    g = TransformGraph()
    g.update("NeedleToTracker", _rigid(rng))
    g.update("CTToPatient", _rigid(rng))
    with pytest.raises(NoPathError, match="no path from 'Needle' to 'CT'"):
        g.query("Needle", "CT")
    g.remove("CTToPatient")
    with pytest.raises(KeyError, match="no transform 'CTToPatient'"):
        g.remove("CTToPatient")


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.diag([1.0, 1.0, 2.0, 1.0]), "not rigid"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "determinant -1"),
        (np.eye(3), r"must be 4x4, got shape \(3, 3\)"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.vstack([np.eye(4)[:3], [0.0, 0.0, 1.0, 1.0]]), r"bottom row must be \[0, 0, 0, 1\]"),
    ],
)
def test_non_rigid_refused(matrix: np.ndarray, message: str) -> None:
    g = TransformGraph()
    with pytest.raises(ValueError, match=message):
        g.update("ToolToTracker", matrix)
    with pytest.raises(ValueError, match=message):
        g.set_static("ToolTipToTool", matrix)
    assert g.frames() == ()


def test_float32_round_off_is_accepted_and_cleaned(rng: np.random.Generator) -> None:
    m = _rigid(rng).astype(np.float32)
    g = TransformGraph()
    g.update("ToolToTracker", m)
    r = g.query("ToolToTracker").matrix[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)


def test_stale_by_age_and_oldest_age_reported(rng: np.random.Generator) -> None:
    clock = FakeClock()
    g = TransformGraph(default_max_age_s=0.2, clock_ns=clock)
    g.update("NeedleToTracker", _rigid(rng))
    clock.advance(0.15)
    g.update("ReferenceToTracker", _rigid(rng), max_age_s=1.0)
    g.set_static("CTToReference", _rigid(rng))
    q = g.query("Needle", "CT")
    assert q.state is TransformState.OK
    assert q.age_s == pytest.approx(0.15)
    clock.advance(0.1)  # the needle is now 0.25 s old (> 0.2), the reference 0.1 s
    q = g.query("Needle", "CT")
    assert q.state is TransformState.STALE
    assert not q.ok
    assert q.age_s == pytest.approx(0.25)
    assert g.query("Reference", "CT").state is TransformState.OK
    g.update("NeedleToTracker", _rigid(rng))  # a fresh sample clears it
    assert g.query("Needle", "CT").state is TransformState.OK


def test_identity_from_tracker_is_flagged_static_identity_is_not(rng: np.random.Generator) -> None:
    g = TransformGraph(clock_ns=FakeClock())
    g.update("NeedleToTracker", np.eye(4))
    g.set_static("NeedleTipToNeedle", np.eye(4))
    assert g.query("NeedleToTracker").state is TransformState.IDENTITY
    assert g.query("NeedleTipToNeedle").state is TransformState.OK
    assert g.query("NeedleTip", "Tracker").state is TransformState.IDENTITY
    g.update("NeedleToTracker", _rigid(rng), valid=False)
    assert g.query("NeedleTip", "Tracker").state is TransformState.INVALID


def test_worst_state_wins_along_the_path(rng: np.random.Generator) -> None:
    clock = FakeClock()
    g = TransformGraph(clock_ns=clock)
    g.update("AToB", _rigid(rng), valid=False)
    clock.advance(1.0)
    g.update("BToC", _rigid(rng))
    g.update("CToD", np.eye(4))
    assert g.query("A", "D").state is TransformState.INVALID
    assert g.query("B", "D").state is TransformState.IDENTITY
    assert max(TransformState) is TransformState.INVALID


def test_concurrent_updates_and_queries(rng: np.random.Generator) -> None:
    g = TransformGraph(default_max_age_s=10.0)
    mats = [_rigid(rng) for _ in range(50)]
    g.update("ToolToTracker", mats[0])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(20):
                for m in mats:
                    g.update("ToolToTracker", m)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(500):
        q = g.query("Tracker", "Tool")
        # Forward and inverse are swapped together: the pair is always consistent.
        fwd = g.query("Tool", "Tracker")
        assert np.allclose(q.matrix[:3, :3] @ q.matrix[:3, :3].T, np.eye(3))
        assert any(np.allclose(fwd.matrix, m, atol=1e-9) for m in mats)
    for t in threads:
        t.join(timeout=30)
    assert not errors


def _trans(x: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = [x, 0.0, 0.0]
    return m


def test_query_at_a_time_interpolates_each_live_edge() -> None:
    clock = FakeClock()
    g = TransformGraph(default_max_age_s=0.5, clock_ns=clock)
    for k in range(10):  # the needle moves 1 mm per 10 ms
        g.update("NeedleToReference", _trans(float(k)), clock.now_ns, timestamp_s=100.0 + 0.01 * k)
        clock.advance(0.01)
    g.set_static("ReferenceToCT", _trans(1000.0), source="reg.json")
    q = g.query("Needle", "CT", at_s=100.035)
    assert q.matrix[0, 3] == pytest.approx(1003.5)
    assert q.ok and q.time_gap_s == 0.0
    assert [(e.name, e.static, e.source) for e in q.edges] == [
        ("NeedleToReference", False, "live"), ("ReferenceToCT", True, "reg.json")]
    # Without a time: the newest sample; its age on the local clock.
    newest = g.query("Needle", "CT")
    assert newest.matrix[0, 3] == pytest.approx(1009.0)
    assert newest.age_s == pytest.approx(0.01)


def test_query_beyond_the_history_holds_the_nearest_sample_and_reports_the_gap() -> None:
    clock = FakeClock()
    g = TransformGraph(default_max_age_s=0.1, clock_ns=clock)
    g.update("NeedleToReference", _trans(1.0), clock.now_ns, timestamp_s=10.0)
    g.update("NeedleToReference", _trans(5.0), clock.now_ns, timestamp_s=10.05)
    q = g.query("NeedleToReference", at_s=10.08)  # 30 ms after the newest: held, OK
    assert q.matrix[0, 3] == pytest.approx(5.0) and q.time_gap_s == pytest.approx(0.03)
    assert q.ok
    q = g.query("NeedleToReference", at_s=10.2)  # 150 ms after: no pose for that time
    assert q.state is TransformState.STALE and q.time_gap_s == pytest.approx(0.15)
    assert q.worst_edge() is not None and q.worst_edge().name == "NeedleToReference"
    q = g.query("NeedleToReference", at_s=9.5)  # before the history
    assert q.state is TransformState.STALE and q.matrix[0, 3] == pytest.approx(1.0)
    # A different clock (a sender timestamp of 0 against an epoch time) is STALE too.
    assert g.query("NeedleToReference", at_s=1.7e9).state is TransformState.STALE


def test_out_of_order_samples_are_kept_sorted_and_flags_count_between_samples() -> None:
    clock = FakeClock()
    g = TransformGraph(default_max_age_s=1.0, clock_ns=clock)
    g.update("AToB", _trans(0.0), timestamp_s=1.0)
    g.update("AToB", _trans(20.0), timestamp_s=3.0)
    g.update("AToB", _trans(10.0), timestamp_s=2.0)  # arrives late
    assert g.query("AToB", at_s=1.5).matrix[0, 3] == pytest.approx(5.0)
    assert g.query("AToB", at_s=2.5).matrix[0, 3] == pytest.approx(15.0)
    g.update("AToB", _trans(30.0), timestamp_s=4.0, valid=False)
    assert g.query("AToB", at_s=3.5).state is TransformState.INVALID
    assert g.query("AToB", at_s=2.5).state is TransformState.OK


def test_per_edge_stale_limits_and_no_path_names_the_reachable_frames() -> None:
    clock = FakeClock()
    g = TransformGraph(default_max_age_s=1.0, clock_ns=clock)
    g.set_max_age("NeedleToReference", 0.05)
    g.update("NeedleToReference", _trans(1.0))
    g.update("ProbeToReference", _trans(1.0))
    clock.advance(0.1)
    assert g.query("NeedleToReference").state is TransformState.STALE
    assert g.query("ProbeToReference").state is TransformState.OK
    with pytest.raises(NoPathError, match="Needle is joined to") as err:
        g.query("Needle", "CT")
    assert err.value.reachable == {"Needle", "Reference", "Probe"}
    assert err.value.from_frame == "Needle" and err.value.to_frame == "CT"


def test_a_static_edge_replaces_a_live_one_of_the_same_name() -> None:
    g = TransformGraph(clock_ns=FakeClock())
    g.update("ReferenceToCT", _trans(1.0))
    g.set_static("ReferenceToCT", _trans(2.0), source="reg.json")
    q = g.query("ReferenceToCT")
    assert q.edges[0].static and q.matrix[0, 3] == pytest.approx(2.0)
    assert g.names() == ("ReferenceToCT",) and g.has("CTToReference")
