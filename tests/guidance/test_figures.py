"""Display orientation, letters and scale bars (guidance.figures): the one place every
image of the project is oriented as a DICOM viewer shows the slice."""

from __future__ import annotations

import numpy as np
import pytest

from guidance.figures import (
    DisplayFlip,
    annotate,
    display_axes,
    display_flip,
    edge_letters,
    oriented_plane,
    scale_bar_mm,
    structure_legend,
    view_plane,
)


def _grid(col_lps, row_lps, spacing=0.7) -> np.ndarray:
    m = np.eye(4)
    m[:3, 0] = np.asarray(col_lps, float) * spacing
    m[:3, 1] = np.asarray(row_lps, float) * spacing
    m[:3, 2] = np.cross(m[:3, 0], m[:3, 1]) / spacing
    return m


X, Y, Z = np.eye(3)


@pytest.mark.parametrize(
    ("col", "row", "expected"),
    [
        # A scanner's supine axial storage is already radiological.
        (X, Y, DisplayFlip("axial")),
        # The embedded real CT (NIfTI): rows towards anterior -> upside down.
        (X, -Y, DisplayFlip("axial", flip_rows=True)),
        # NIfTI RAS-canonical storage: both flipped (a supine patient, anterior up).
        (-X, -Y, DisplayFlip("axial", flip_rows=True, flip_cols=True)),
        # Stored transposed.
        (Y, X, DisplayFlip("axial", transpose=True)),
        # The C-arm detector at AP: columns to the patient's left, rows to the feet.
        (X, -Z, DisplayFlip("coronal")),
        (-X, Z, DisplayFlip("coronal", flip_rows=True, flip_cols=True)),
        # Sagittal: anterior on the left, head up.
        (Y, -Z, DisplayFlip("sagittal")),
        (-Z, -Y, DisplayFlip("sagittal", transpose=True, flip_cols=True)),
    ],
)
def test_display_flip_shows_every_storage_the_same_way(col, row, expected) -> None:
    m = _grid(col, row)
    flip = display_flip(m)
    assert flip == expected
    right, down = flip.axes(m)
    want_r, want_d = display_axes(flip.view)
    assert np.allclose(right, want_r) and np.allclose(down, want_d)


def test_prone_axial_is_shown_as_acquired() -> None:
    flip = display_flip(_grid(-X, -Y), prone=True)
    assert flip.identity  # the back up, as the scanner stored it
    right, down = display_axes("axial", prone=True)
    assert edge_letters(right, down) == {"left": "L", "right": "R", "top": "P",
                                         "bottom": "A"}


def test_flip_moves_points_with_the_pixels() -> None:
    img = np.zeros((5, 7), np.uint8)
    img[1, 5] = 255  # row 1, column 5
    for t in (False, True):
        for fr in (False, True):
            for fc in (False, True):
                f = DisplayFlip("axial", t, fr, fc)
                shown = f.apply(img)
                col, row = f.points([[5, 1]], img.shape)[0]
                assert shown[int(row), int(col)] == 255


@pytest.mark.parametrize(
    ("view", "letters"),
    [
        ("axial", {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
        ("coronal", {"left": "R", "right": "L", "top": "S", "bottom": "I"}),
        ("sagittal", {"left": "A", "right": "P", "top": "S", "bottom": "I"}),
    ],
)
def test_edge_letters_of_the_standard_views(view: str, letters: dict[str, str]) -> None:
    spec = view_plane(view, [0, 0, 0])
    assert edge_letters(spec.u_lps, spec.v_lps) == letters


def test_oblique_planes_get_two_letters_and_keep_anterior_up() -> None:
    # A needle from the left back towards the disc, 30 deg off the sagittal plane.
    axis = np.array([-np.sin(np.radians(40)), -np.cos(np.radians(40)), 0.0])
    spec = oriented_plane("needle", [0, 0, 0], axis, np.cross(Z, axis))
    assert abs(np.cross(spec.u_lps, spec.v_lps) @ Z) > 0.99  # an axial-like plane
    letters = edge_letters(spec.u_lps, spec.v_lps)
    assert letters["top"] == "A" and letters["right"] == "L"
    tilted = oriented_plane("t", [0, 0, 0], [1, 0.7, 0], [0, 0, 1])
    assert len(edge_letters(tilted.u_lps, tilted.v_lps)["right"]) == 2
    with pytest.raises(ValueError, match="parallel"):
        oriented_plane("bad", [0, 0, 0], X, 2 * X)


@pytest.mark.parametrize(("width", "bar"), [(120.0, 20.0), (160.0, 20.0), (60.0, 10.0),
                                            (300.0, 50.0), (8.0, 1.0)])
def test_scale_bar_is_a_round_length(width: float, bar: float) -> None:
    assert scale_bar_mm(width) == bar


def test_annotate_burns_letters_bar_and_legend() -> None:
    rgb = np.full((300, 300, 3), 60, np.uint8)
    before = rgb.copy()
    spec = view_plane("axial", [0, 0, 0], fov_mm=150, size_px=300)
    annotate(rgb, spec.u_lps, spec.v_lps, spec.pixel_mm, [("aorta", (255, 80, 200))])
    changed = np.any(rgb != before, axis=2)
    assert changed[140:160, :25].any() and changed[140:160, -25:].any()  # R and L
    assert changed[:30, 140:160].any() and changed[-30:, 140:160].any()  # A and P
    assert np.any(np.all(rgb == (255, 80, 200), axis=2))  # the legend's colour


def test_structure_legend_groups_names() -> None:
    legend = structure_legend(["vertebra_L1", "vertebra_L2", "aorta",
                               "nerve_root_L1_left (derived)", "nerve_root_L2_left (derived)"])
    assert [name for name, _ in legend] == ["vertebrae", "aorta", "nerve roots (derived)"]
