"""Geometry QA of one series before conversion.

A series becomes a volume only if its slices form a regular stack: one
orientation, slices perpendicular to it (a gantry tilt is rejected, never
sheared silently), uniform spacing within :data:`SPACING_RTOL`, no gaps, no
duplicates, and for PET as many slices as NumberOfSlices (0054,0081) says.
Slices are ordered by their position along the slice normal, never by
InstanceNumber.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from curation.dicomfile import header_int
from curation.errors import (
    ConversionFailedError,
    GantryTiltError,
    InconsistentOrientationError,
    MissingSlicesError,
    NonUniformSpacingError,
)

logger = logging.getLogger(__name__)

#: Two ImageOrientationPatient vectors are "the same" within this absolute tolerance.
ORIENTATION_ATOL = 1e-4
#: Slice steps may differ from the median step by this fraction.
SPACING_RTOL = 0.01
#: A step's component across the normal may be this fraction of the step (~0.57 degrees) ...
TILT_RTOL = 0.01
#: ... or this many mm (rounding of ImagePositionPatient), whichever is larger.
TILT_ATOL_MM = 0.01
#: A step within this fraction of k times the spacing (k >= 2) is k-1 missing slices.
GAP_RTOL = 0.1


@dataclass(frozen=True, eq=False)
class SliceStack:
    """A checked series: its datasets sorted along the slice normal, and the geometry.

    Attributes
    ----------
    datasets
        The instances sorted by position along the normal, ascending.
    order
        Index into the input sequence of each sorted dataset.
    orientation
        ImageOrientationPatient: row cosines, then column cosines.
    normal
        Row x column cosines (DICOM LPS).
    positions
        Position of each sorted slice along the normal, mm.
    spacing
        Mean step along the normal, mm.
    rows, columns
        Rows and Columns of every slice.
    pixel_spacing
        PixelSpacing: (row spacing, column spacing), mm.
    """

    datasets: tuple[Dataset, ...]
    order: tuple[int, ...]
    orientation: tuple[float, ...]
    normal: tuple[float, float, float]
    positions: tuple[float, ...]
    spacing: float
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]


def _floats(ds: Dataset, keyword: str, count: int, label: str, index: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InconsistentOrientationError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}) has {keyword} "
            f"{value!r}; expected {count} numbers"
        )
    return arr


def _whole(ds: Dataset, keyword: str, label: str, index: int) -> int:
    """A required whole-number attribute of one slice; a missing or malformed value fails the conversion."""
    try:
        value = header_int(ds, keyword)
    except ValueError as exc:
        value, why = None, str(exc)
    else:
        why = f"{keyword} is missing"
    if value is None or value < 0:
        raise ConversionFailedError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}): "
            f"{why if value is None else f'{keyword} {value} is negative'}"
        )
    return value


def _pixel_spacing(ds: Dataset, label: str, index: int) -> np.ndarray:
    value = ds.get("PixelSpacing")
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:55] + "...'"
        raise ConversionFailedError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}) has PixelSpacing {shown}; "
            "expected 2 positive numbers"
        )
    return arr


def check_series_geometry(datasets: Sequence[Dataset], *, series_label: str) -> SliceStack:
    """Check that ``datasets`` form a regular stack and sort them along the normal.

    Parameters
    ----------
    datasets
        Every dataset (slice) of one series, in any order.
    series_label
        How messages name the series (e.g. ``"CT series 1.2.3 ('WB CT')"``).

    Returns
    -------
    SliceStack

    Raises
    ------
    InconsistentOrientationError
        Missing or differing ImageOrientationPatient, or cosines that are not
        orthonormal.
    GantryTiltError
        The steps between slice positions are not parallel to the normal.
    MissingSlicesError
        A gap of about a whole multiple of the spacing, two slices at one
        position, too few slices, or (PET) a count that disagrees with
        NumberOfSlices.
    NonUniformSpacingError
        A step differs from the median step by more than :data:`SPACING_RTOL`.
    ConversionFailedError
        Slices with different Rows/Columns/PixelSpacing, or a missing or
        malformed Rows, Columns, PixelSpacing or NumberOfSlices.
    """
    if len(datasets) < 2:
        raise MissingSlicesError(f"{series_label}: {len(datasets)} slice(s); a volume needs at least 2")
    orientations = np.stack(
        [_floats(ds, "ImageOrientationPatient", 6, series_label, i) for i, ds in enumerate(datasets)]
    )
    positions = np.stack(
        [_floats(ds, "ImagePositionPatient", 3, series_label, i) for i, ds in enumerate(datasets)]
    )
    reference = orientations[0]
    deviation = np.abs(orientations - reference).max(axis=1)
    if deviation.max() > ORIENTATION_ATOL:
        bad = int(np.argmax(deviation))
        raise InconsistentOrientationError(
            f"{series_label}: more than one ImageOrientationPatient: slice 0 has "
            f"{np.round(reference, 6).tolist()}, slice {bad} (InstanceNumber "
            f"{datasets[bad].get('InstanceNumber')}) has {np.round(orientations[bad], 6).tolist()}"
        )
    row, col = reference[:3], reference[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(row @ col)) > 1e-3
    ):
        raise InconsistentOrientationError(
            f"{series_label}: ImageOrientationPatient {reference.tolist()} is not two orthonormal vectors"
        )
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)

    shapes = {
        (_whole(ds, "Rows", series_label, i), _whole(ds, "Columns", series_label, i)) for i, ds in enumerate(datasets)
    }
    spacings = {
        tuple(round(float(v), 6) for v in _pixel_spacing(ds, series_label, i)) for i, ds in enumerate(datasets)
    }
    if len(shapes) != 1 or len(spacings) != 1:
        raise ConversionFailedError(
            f"{series_label}: slices differ in matrix size {sorted(shapes)} or PixelSpacing {sorted(spacings)}"
        )

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along_sorted = along[order]
    steps = np.diff(along_sorted)
    step_vectors = np.diff(positions[order], axis=0)

    duplicates = np.flatnonzero(steps < 1e-3)
    if duplicates.size:
        i = int(order[duplicates[0]])
        j = int(order[duplicates[0] + 1])
        raise MissingSlicesError(
            f"{series_label}: two slices at the same position {along_sorted[duplicates[0]]:.3f} mm along "
            f"the normal (InstanceNumber {datasets[i].get('InstanceNumber')} and "
            f"{datasets[j].get('InstanceNumber')})"
        )

    across = np.linalg.norm(step_vectors - np.outer(steps, normal), axis=1)
    tilted = np.flatnonzero(across > np.maximum(TILT_ATOL_MM, TILT_RTOL * steps))
    if tilted.size:
        k = int(tilted[0])
        angle = float(np.degrees(np.arctan2(across[k], steps[k])))
        raise GantryTiltError(
            f"{series_label}: slices are not perpendicular to ImageOrientationPatient (gantry tilt "
            f"about {angle:.2f} degrees): the step from {positions[order[k]].round(3).tolist()} to "
            f"{positions[order[k + 1]].round(3).tolist()} has {across[k]:.3f} mm across the normal"
        )

    spacing = float(np.median(steps))
    off = np.abs(steps - spacing) > SPACING_RTOL * spacing
    if off.any():
        k = int(np.flatnonzero(off)[0])
        ratio = steps[k] / spacing
        multiple = round(ratio)
        if multiple >= 2 and abs(ratio - multiple) <= GAP_RTOL:
            raise MissingSlicesError(
                f"{series_label}: gap of {steps[k]:.3f} mm between positions {along_sorted[k]:.3f} and "
                f"{along_sorted[k + 1]:.3f} mm along the normal, {ratio:.2f} x the spacing "
                f"{spacing:.3f} mm: {multiple - 1} slice(s) missing"
            )
        raise NonUniformSpacingError(
            f"{series_label}: step of {steps[k]:.3f} mm between positions {along_sorted[k]:.3f} and "
            f"{along_sorted[k + 1]:.3f} mm along the normal differs from the median spacing "
            f"{spacing:.3f} mm by more than {SPACING_RTOL:.0%}"
        )

    first = datasets[0]
    if str(first.get("Modality", "")) == "PT" and first.get("NumberOfSlices") not in (None, ""):
        expected = _whole(first, "NumberOfSlices", series_label, 0)
        if expected != len(datasets):
            raise MissingSlicesError(
                f"{series_label}: NumberOfSlices (0054,0081) says {expected} but the series has "
                f"{len(datasets)} slices"
            )

    sorted_datasets = tuple(datasets[int(i)] for i in order)
    (rows, columns), = shapes
    (pixel_spacing,) = spacings
    return SliceStack(
        datasets=sorted_datasets,
        order=tuple(int(i) for i in order),
        orientation=tuple(float(v) for v in reference),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        positions=tuple(float(v) for v in along_sorted),
        spacing=float((along_sorted[-1] - along_sorted[0]) / (len(datasets) - 1)),
        rows=rows,
        columns=columns,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
    )
