"""Geometry QA: ordering along the normal, and each geometry reason code with its evidence.

The slices here are header-only datasets (position and orientation are all the
checks read); whole phantom series go through the same checks in test_ingest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from curation.errors import (
    GantryTiltError,
    InconsistentOrientationError,
    MissingSlicesError,
    NonUniformSpacingError,
)
from curation.geometry import check_series_geometry

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _slices(zs, *, orientation=AXIAL, xy=None, modality="CT", number_of_slices=None) -> list[Dataset]:
    out = []
    for k, z in enumerate(zs):
        ds = Dataset()
        ds.Modality = modality
        ds.InstanceNumber = k + 1
        x, y = (xy[k] if xy is not None else (-100.0, -120.0))
        ds.ImagePositionPatient = [x, y, float(z)]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [2.0, 2.0]
        ds.Rows, ds.Columns = 4, 4
        if number_of_slices is not None:
            ds.NumberOfSlices = number_of_slices
        out.append(ds)
    return out


def test_order_is_by_position_along_the_normal_never_by_instance_number():
    zs = [-10.0, -4.0, -8.0, -2.0, -6.0, 0.0]
    datasets = _slices(zs)
    # InstanceNumber deliberately in the opposite order of the positions
    for ds, number in zip(datasets, [1, 6, 2, 5, 3, 4], strict=True):
        ds.InstanceNumber = number
    stack = check_series_geometry(datasets, series_label="CT x")
    assert [ds.ImagePositionPatient[2] for ds in stack.datasets] == [-10.0, -8.0, -6.0, -4.0, -2.0, 0.0]
    assert stack.order == (0, 2, 4, 1, 3, 5)
    assert stack.spacing == pytest.approx(2.0)
    assert stack.normal == (0.0, 0.0, 1.0)
    assert stack.positions[0] == pytest.approx(-10.0)


def test_oblique_orientation_sorts_along_its_own_normal():
    angle = np.radians(20)
    row = [np.cos(angle), np.sin(angle), 0.0]
    col = [0.0, 0.0, -1.0]  # a coronal-ish oblique plane: normal lies in x-y
    normal = np.cross(row, col)
    origins = [np.array([1.0, 2.0, 3.0]) + normal * 3.0 * k for k in (2, 0, 3, 1)]
    datasets = _slices([o[2] for o in origins], orientation=[*row, *col], xy=[(o[0], o[1]) for o in origins])
    stack = check_series_geometry(datasets, series_label="PT oblique")
    assert stack.order == (1, 3, 0, 2)
    assert stack.spacing == pytest.approx(3.0)


def test_gantry_tilt_is_rejected_with_the_angle():
    tilt = np.radians(15)
    zs = [-5.0 * k for k in range(6)]
    xy = [(-100.0, -120.0 + 5.0 * k * np.tan(tilt)) for k in range(6)]
    with pytest.raises(GantryTiltError, match=r"CT tilted: .*gantry tilt about 15\.00 degrees"):
        check_series_geometry(_slices(zs, xy=xy), series_label="CT tilted")


def test_non_uniform_spacing_names_the_step_and_the_median():
    zs = [0.0, 2.0, 4.0, 6.0, 9.0, 11.0, 13.0]
    with pytest.raises(NonUniformSpacingError, match=r"step of 3\.000 mm .* median spacing 2\.000 mm"):
        check_series_geometry(_slices(zs), series_label="CT uneven")


def test_spacing_within_tolerance_is_accepted():
    zs = [0.0, 2.0, 4.01, 6.0, 8.0]  # 0.5% jitter: scanners round positions
    stack = check_series_geometry(_slices(zs), series_label="CT jitter")
    assert stack.spacing == pytest.approx(2.0)


def test_gap_of_twice_the_spacing_is_a_missing_slice():
    zs = [0.0, 3.0, 6.0, 12.0, 15.0]
    with pytest.raises(MissingSlicesError, match=r"gap of 6\.000 mm .*2\.00 x the spacing 3\.000 mm: 1 slice\(s\) missing"):
        check_series_geometry(_slices(zs), series_label="PT gap")


def test_duplicate_positions_are_missing_slices():
    with pytest.raises(MissingSlicesError, match=r"two slices at the same position 4\.000 mm .*InstanceNumber 3 and 4"):
        check_series_geometry(_slices([0.0, 2.0, 4.0, 4.0, 6.0]), series_label="CT dup")


def test_pet_slice_count_must_match_number_of_slices():
    # the missing slice is at the end: positions alone cannot show it
    datasets = _slices([0.0, 3.0, 6.0, 9.0], modality="PT", number_of_slices=5)
    with pytest.raises(MissingSlicesError, match=r"PT s: NumberOfSlices \(0054,0081\) says 5 but the series has 4"):
        check_series_geometry(datasets, series_label="PT s")
    assert len(check_series_geometry(_slices([0.0, 3.0], modality="PT", number_of_slices=2), series_label="p").datasets) == 2


def test_two_orientations_in_one_series():
    datasets = _slices([0.0, 2.0, 4.0, 6.0])
    datasets[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    with pytest.raises(InconsistentOrientationError, match=r"CT mixed: more than one ImageOrientationPatient: .*slice 2 \(InstanceNumber 3\)"):
        check_series_geometry(datasets, series_label="CT mixed")


def test_missing_orientation_is_reported():
    datasets = _slices([0.0, 2.0, 4.0])
    del datasets[1].ImageOrientationPatient
    with pytest.raises(InconsistentOrientationError, match=r"slice 1 \(InstanceNumber 2\) has ImageOrientationPatient None"):
        check_series_geometry(datasets, series_label="CT")


def test_single_slice_is_not_a_volume():
    with pytest.raises(MissingSlicesError, match="1 slice"):
        check_series_geometry(_slices([0.0]), series_label="CT one")


@pytest.mark.parametrize(
    ("keyword", "raw", "message"),
    [
        ("PixelSpacing", b"ab\\.", r"slice 2 \(InstanceNumber 3\) has PixelSpacing .*expected 2 positive numbers"),
        ("Rows", b"", r"slice 2 \(InstanceNumber 3\): Rows is missing"),
    ],
)
def test_a_malformed_size_fails_the_conversion_instead_of_escaping(keyword: str, raw: bytes, message: str) -> None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from curation.errors import ConversionFailedError

    datasets = _slices([0.0, 2.0, 4.0, 6.0], modality="PT", number_of_slices=4)
    target = datasets[2]
    tag = tag_for_keyword(keyword)
    # as a site's file carries it: pydicom keeps what it cannot parse as text or nothing
    target[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(raw), raw, 0, False, True)
    with pytest.raises(ConversionFailedError, match=rf"^PT x: {message}"):
        check_series_geometry(datasets, series_label="PT x")
