"""Synthetic PET/CT phantom sites: the data every test and ``petct-release demo`` runs on.

A whole-body-ish phantom lies supine in DICOM patient coordinates (LPS, mm):
a head (scalp, face, skull shell, brain, eyes, a nose sticking out in front of
the skull), a neck with trachea and thyroid, a torso with lungs, heart, aorta,
liver, spleen, stomach, kidneys, spine, ribs, back muscles and fat, a pelvis,
arms raised beside the head (separated from it by air) and a hot lesion in the
right lung.  The anatomy is a fixed function of the position in millimetres;
only the lesion position and the noise depend on the seed.  Every volume is
sampled at the voxel centres of its own grid, so a feet-first phantom has its
head at the same patient coordinates as a head-first one and the PET and CT
grids (different spacing, origin and extent) describe the same body.

:func:`write_study` writes one study as a site would deliver it (anonymised,
vendor-styled headers, opaque nested file names, decoy series and files,
optionally a defect that must get the study rejected or planted identifiers
that must get it quarantined); :func:`write_segmentations` and
:func:`write_lesion` write the site's label maps; :func:`write_demo_sites`
writes three complete sites and their ``release.toml``.  Everything is
deterministic: the same arguments give byte-identical files.

Conventions: volume arrays are indexed ``[i, j, k] = [column, row, slice]``,
slice ``k`` increasing along the slice normal (row direction x column
direction), so ``PhantomGeometry.origin`` is the ImagePositionPatient of the
first slice in that spatial order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
)

from curation.atomic import atomic_output, atomic_write_json, atomic_write_text
from curation.model import CATEGORIES, CATEGORY_ALIASES

logger = logging.getLogger(__name__)

__all__ = [
    "DEFECTS",
    "EXPECTED_REASON",
    "LANDMARKS",
    "PLANTED_PHI",
    "SIZES",
    "PatientInfo",
    "Phantom",
    "PhantomGeometry",
    "StudyFiles",
    "Vendor",
    "make_phantom",
    "moose_label_table",
    "read_manifest",
    "release_label_table",
    "write_demo_sites",
    "write_lesion",
    "write_segmentations",
    "write_study",
]

#: Defects :func:`write_study` can plant (each must get the study rejected).
DEFECTS: tuple[str, ...] = (
    "missing-pet-slice",
    "frame-of-reference-mismatch",
    "nac-only",
    "gantry-tilt",
    "non-uniform-spacing",
)

AIR_HU = -1000
BONE_HU = 700
RESCALE_INTERCEPT = -1024
F18_HALF_LIFE_S = 6586.2
_HFS_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# feet-first supine: the patient is turned end over end, so image columns run to patient right
_FFS_ORIENTATION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class PhantomGeometry:
    """One image grid in DICOM patient coordinates (LPS, mm).

    ``pixel_spacing`` is DICOM PixelSpacing: (row spacing, column spacing), i.e.
    the distance between rows (along the column direction) first.
    """

    rows: int
    columns: int
    slices: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    origin: tuple[float, float, float]
    orientation: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(columns, rows, slices)`` of volumes on this grid."""
        return (self.columns, self.rows, self.slices)

    @property
    def row_direction(self) -> np.ndarray:
        return np.asarray(self.orientation[:3], dtype=float)

    @property
    def column_direction(self) -> np.ndarray:
        return np.asarray(self.orientation[3:], dtype=float)

    @property
    def normal(self) -> np.ndarray:
        """The slice normal (row direction x column direction)."""
        return np.cross(self.row_direction, self.column_direction)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix from (column i, row j, slice k) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, 0] = self.row_direction * self.pixel_spacing[1]
        affine[:3, 1] = self.column_direction * self.pixel_spacing[0]
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """The same for NIfTI world coordinates (RAS+): x and y of LPS negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k`` (spatial order)."""
        p = np.asarray(self.origin) + k * self.slice_spacing * self.normal
        return (float(p[0]), float(p[1]), float(p[2]))

    def slice_points(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates (x, y, z), each ``(columns, rows)``, of the voxel centres of slice ``k``."""
        i = np.arange(self.columns, dtype=float)[:, None]
        j = np.arange(self.rows, dtype=float)[None, :]
        a = self.affine_lps()
        coords = []
        for axis in range(3):
            coords.append(a[axis, 0] * i + a[axis, 1] * j + (a[axis, 2] * k + a[axis, 3]))
        return coords[0], coords[1], coords[2]

    def world_points(self) -> np.ndarray:
        """LPS coordinates of every voxel centre, shape ``(columns, rows, slices, 3)``."""
        idx = np.indices(self.shape, dtype=float)
        a = self.affine_lps()
        return np.einsum("ab,bijk->ijka", a[:3, :3], idx) + a[:3, 3]


@dataclass(frozen=True)
class _SizeSpec:
    ct_matrix: int
    ct_pixel: float
    ct_slices: int
    ct_dz: float
    pt_matrix: int
    pt_pixel: float
    pt_slices: int
    pt_dz: float


#: Grid sizes. The PET grid is coarser in-plane, has its own slice spacing,
#: origin and extent. Every PET spacing is >= 4 mm so that the defacing slab
#: (16 PET slices up from the brain bottom) holds the eyes and the whole nose.
SIZES: dict[str, _SizeSpec] = {
    "small": _SizeSpec(64, 7.0, 120, 5.0, 32, 14.0, 100, 6.0),
    "demo": _SizeSpec(96, 4.8, 160, 4.0, 48, 9.6, 130, 5.0),
    # clinical-like in-plane sampling with labels: per-case work of realistic weight (scaling benchmark)
    "large": _SizeSpec(256, 1.875, 256, 2.5, 128, 3.75, 162, 4.0),
    "bench": _SizeSpec(512, 0.9765625, 320, 2.5, 200, 3.0, 205, 4.0),
}
_CT_TOP_Z = 12.0  # most superior CT slice (the vertex is at z = 0)
_PT_TOP_Z = 14.5
_PT_SHIFT_XY = (1.7, -2.1)
_Y_CENTRE = 4.0  # the grids are centred a little posterior of the head centre


def _grid(matrix: int, pixel: float, slices: int, dz: float, top_z: float, shift_xy: tuple[float, float],
          feet_first: bool) -> PhantomGeometry:
    half = (matrix - 1) / 2 * pixel
    y0 = -half + _Y_CENTRE + shift_xy[1]
    if feet_first:
        orientation = _FFS_ORIENTATION
        x0 = half + shift_xy[0]
        z0 = top_z  # normal is -z: spatial order starts at the top
    else:
        orientation = _HFS_ORIENTATION
        x0 = -half + shift_xy[0]
        z0 = top_z - (slices - 1) * dz
    return PhantomGeometry(
        rows=matrix,
        columns=matrix,
        slices=slices,
        pixel_spacing=(pixel, pixel),
        slice_spacing=dz,
        origin=(x0, y0, z0),
        orientation=orientation,
    )


# ---------------------------------------------------------------------------
# anatomy (LPS mm: +x patient left, +y posterior, +z superior; vertex at z = 0)

_Bbox = tuple[float, float, float, float]  # in-plane extent: x_lo, x_hi, y_lo, y_hi


@dataclass(frozen=True)
class _Shape:
    """A solid: a test on LPS coordinates plus its in-plane bounding box (to skip empty pixels)."""

    test: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    bbox: _Bbox

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.test(x, y, z)


def _ellipsoid(c: Sequence[float], s: Sequence[float]) -> _Shape:
    def test(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2 <= 1.0

    return _Shape(test, (c[0] - s[0], c[0] + s[0], c[1] - s[1], c[1] + s[1]))


def _cylinder(cx: float, cy: float, ax: float, ay: float, z0: float, z1: float) -> _Shape:
    """Elliptic cylinder along z from ``z0`` to ``z1`` (z0 < z1)."""

    def test(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & (z >= z0) & (z <= z1)

    return _Shape(test, (cx - ax, cx + ax, cy - ay, cy + ay))


def _box(lo: Sequence[float], hi: Sequence[float]) -> _Shape:
    def test(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        inside = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])
        return inside & (z >= lo[2]) & (z <= hi[2])

    return _Shape(test, (lo[0], hi[0], lo[1], hi[1]))


def _union(*masks: _Shape) -> _Shape:
    def test(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = masks[0](x, y, z)
        for m in masks[1:]:
            out = out | m(x, y, z)
        return out

    boxes = [m.bbox for m in masks]
    bbox = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
    return _Shape(test, bbox)


def _minus(a: _Shape, b: _Shape) -> _Shape:
    return _Shape(lambda x, y, z: a(x, y, z) & ~b(x, y, z), a.bbox)


def _where(a: _Shape, cond: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> _Shape:
    return _Shape(lambda x, y, z: a(x, y, z) & cond(x, y, z), a.bbox)


@dataclass(frozen=True)
class _Tissue:
    """One painted structure: later tissues override earlier ones where they overlap."""

    name: str
    mask: _Shape
    z_range: tuple[float, float]
    hu: float
    bq: float
    labels: tuple[tuple[str, str], ...] = ()  # (release category, release label name)
    landmarks: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # labels outside the release set (MOOSE only), e.g. trachea
    clears: bool = True  # clear every label (release and extra) under the mask before painting


# head: cerebrum and cerebellum/brainstem ellipsoids; skull, scalp are offsets of both
_CEREBRUM = ((0.0, 10.0, -62.0), (62.0, 80.0, 55.0))
_CEREBELLUM = ((0.0, 35.0, -118.0), (45.0, 40.0, 30.0))
_EYE_CENTRES = ((32.0, -70.0, -100.0), (-32.0, -70.0, -100.0))  # clear of the skull shell at any resolution
_EYE_RADIUS = 11.5
_NOSE = ((0.0, -98.0, -119.0), (12.0, 18.0, 20.0))
_FACE = ((0.0, -25.0, -120.0), (66.0, 75.0, 60.0))
_ARM_X = 175.0  # far enough out that the defacing cylinder (radius ~ nose tip + margin) misses the arms
_ARM_Y = 20.0
_LESION_CENTRE = (-70.0, -5.0, -420.0)
_LESION_RADIUS = 12.0


def _grown(part: tuple[tuple[float, float, float], tuple[float, float, float]], d: float) -> _Shape:
    c, s = part
    return _ellipsoid(c, (s[0] + d, s[1] + d, s[2] + d))


def _zr(part: tuple[tuple[float, float, float], tuple[float, float, float]], d: float = 0.0) -> tuple[float, float]:
    c, s = part
    return (c[2] - s[2] - d, c[2] + s[2] + d)


def _span(*ranges: tuple[float, float]) -> tuple[float, float]:
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


def _side(x: np.ndarray, left: bool) -> np.ndarray:
    return x > 0 if left else x <= 0


def _tissues(lesion_centre: tuple[float, float, float]) -> list[_Tissue]:
    """The paint list of the phantom, in painting order."""
    t: list[_Tissue] = []
    head_lm = ("head_outline",)
    # torso: fat everywhere, then a soft-tissue core; the remaining ring is subcutaneous fat
    torso_outer = _union(_cylinder(0, 15, 165, 105, -2000, -262), _ellipsoid((0, 15, -262), (165, 105, 40)))
    torso_core = _union(_cylinder(0, 15, 150, 92, -2000, -270), _ellipsoid((0, 15, -270), (150, 92, 30)))
    t.append(_Tissue("torso", torso_outer, (-2000, -222), -100, 800, (("Body-Composition", "subcutaneous_fat"),)))
    t.append(_Tissue("torso core", torso_core, (-2000, -240), 40, 2000))
    # neck (only its upper part counts as head outline: below, the shoulders join the arms)
    t.append(_Tissue("neck", _cylinder(0, 22, 55, 62, -260, -140), (-260, -140), 40, 2000))
    t.append(_Tissue("upper neck", _cylinder(0, 22, 55, 62, -200, -140), (-200, -140), 40, 2000,
                     landmarks=head_lm))
    scalp = _union(_grown(_CEREBRUM, 15), _grown(_CEREBELLUM, 15))
    t.append(_Tissue("scalp", scalp, _span(_zr(_CEREBRUM, 15), _zr(_CEREBELLUM, 15)), 40, 1800, landmarks=head_lm))
    t.append(_Tissue("face", _ellipsoid(*_FACE), _zr(_FACE), 40, 1800, landmarks=head_lm))
    skull = _minus(_union(_grown(_CEREBRUM, 9), _grown(_CEREBELLUM, 9)),
                   _union(_grown(_CEREBRUM, 2), _grown(_CEREBELLUM, 2)))
    t.append(_Tissue("skull", skull, _span(_zr(_CEREBRUM, 9), _zr(_CEREBELLUM, 9)), BONE_HU, 1500,
                     (("Peripheral-Bones", "skull"),), ("skull", "head_outline")))
    brain = _union(_ellipsoid(*_CEREBRUM), _ellipsoid(*_CEREBELLUM))
    t.append(_Tissue("brain", brain, _span(_zr(_CEREBRUM), _zr(_CEREBELLUM)), 30, 20000,
                     (("Organs", "brain"),), ("brain", "head_outline")))
    eyes = _union(*(_ellipsoid(c, (_EYE_RADIUS,) * 3) for c in _EYE_CENTRES))
    eye_z = (_EYE_CENTRES[0][2] - _EYE_RADIUS, _EYE_CENTRES[0][2] + _EYE_RADIUS)
    t.append(_Tissue("eyes", eyes, eye_z, 10, 3000, landmarks=("eyes", "head_outline")))
    t.append(_Tissue("nose", _ellipsoid(*_NOSE), _zr(_NOSE), 40, 1800, landmarks=("nose", "head_outline")))
    # neck contents
    t.append(_Tissue("trachea", _cylinder(0, -20, 9, 9, -330, -175), (-330, -175), -950, 0, extra=("trachea",)))
    for left in (True, False):
        sx = 1 if left else -1
        name = "thyroid_left" if left else "thyroid_right"
        t.append(_Tissue(name, _ellipsoid((sx * 20, -25, -235), (10, 8, 18)), (-253, -217), 60, 3000,
                         (("Organs", name),)))
    # back muscles and spine
    for left in (True, False):
        sx = 1 if left else -1
        lo, hi = sorted((sx * 20, sx * 50))
        name = "autochthon_left" if left else "autochthon_right"
        t.append(_Tissue(name, _box((lo, 86, -850), (hi, 106, -260)), (-850, -260), 50, 2500,
                         (("Muscles", name), ("Body-Composition", "skeletal_muscle"))))
    vertebrae = [f"vertebra_C{n}" for n in range(1, 8)] + [f"vertebra_T{n}" for n in range(1, 13)]
    vertebrae += [f"vertebra_L{n}" for n in range(1, 6)]
    for n, name in enumerate(vertebrae):
        top = -180.0 - 27.0 * n
        t.append(_Tissue(name, _cylinder(0, 65, 16, 16, top - 23, top), (top - 23, top), 450, 1500,
                         (("Vertebrae", name),)))
    sacrum_top = -180.0 - 27.0 * len(vertebrae)
    t.append(_Tissue("sacrum", _ellipsoid((0, 70, sacrum_top - 30), (40, 25, 30)),
                     (sacrum_top - 60, sacrum_top), 450, 1500, (("Vertebrae", "sacrum"),)))
    # thorax
    lungs = {
        True: _ellipsoid((72, 5, -400), (58, 70, 115)),
        False: _ellipsoid((-72, 5, -395), (62, 70, 115)),
    }
    lobes = [
        ("lung_upper_lobe_left", lungs[True], lambda x, y, z: z > -410),
        ("lung_lower_lobe_left", lungs[True], lambda x, y, z: z <= -410),
        ("lung_upper_lobe_right", lungs[False], lambda x, y, z: z > -370),
        ("lung_middle_lobe_right", lungs[False], lambda x, y, z: (z <= -370) & (z > -440) & (y < 5)),
        ("lung_lower_lobe_right", lungs[False], lambda x, y, z: (z <= -440) | ((z <= -370) & (y >= 5))),
    ]
    for name, lung, cond in lobes:
        t.append(_Tissue(name, _where(lung, cond), (-515, -280), -800, 400, (("Organs", name),)))
    t.append(_Tissue("heart", _ellipsoid((25, -15, -430), (55, 48, 50)), (-480, -380), 45, 12000,
                     (("Cardiac", "heart_myocardium"),)))
    t.append(_Tissue("left ventricle", _ellipsoid((30, -15, -435), (33, 28, 30)), (-465, -405), 40, 3000,
                     (("Cardiac", "heart_ventricle_left"),)))
    t.append(_Tissue("aorta", _cylinder(20, 40, 12, 12, -720, -385), (-720, -385), 45, 2500,
                     (("Cardiac", "aorta"),)))
    t.append(_Tissue("sternum", _box((-15, -74, -470), (15, -62, -300)), (-470, -300), 500, 1500,
                     (("Ribs", "sternum"),)))
    # abdomen
    t.append(_Tissue("visceral fat", _ellipsoid((0, -45, -590), (55, 30, 30)), (-620, -560), -90, 600,
                     (("Body-Composition", "visceral_fat"),)))
    t.append(_Tissue("stomach", _ellipsoid((45, -30, -530), (40, 30, 35)), (-565, -495), 30, 2500,
                     (("Organs", "stomach"),)))
    t.append(_Tissue("liver", _ellipsoid((-60, 5, -540), (80, 75, 65)), (-605, -475), 60, 5000,
                     (("Organs", "liver"),)))
    t.append(_Tissue("spleen", _ellipsoid((85, 40, -540), (35, 30, 45)), (-585, -495), 50, 3500,
                     (("Organs", "spleen"),)))
    for left in (True, False):
        sx = 1 if left else -1
        psoas = "iliopsoas_left" if left else "iliopsoas_right"
        t.append(_Tissue(psoas, _cylinder(sx * 40, 50, 15, 15, -820, -650), (-820, -650), 50, 2500,
                         (("Muscles", psoas), ("Body-Composition", "skeletal_muscle"))))
        kidney = "kidney_left" if left else "kidney_right"
        t.append(_Tissue(kidney, _ellipsoid((sx * 75, 60, -620), (28, 25, 50)), (-670, -570), 35, 8000,
                         (("Organs", kidney),)))
        hip = "hip_left" if left else "hip_right"
        t.append(_Tissue(hip, _ellipsoid((sx * 95, 40, -760), (35, 45, 50)), (-810, -710), 500, 1500,
                         (("Vertebrae", hip),)))
    t.append(_Tissue("bladder", _ellipsoid((0, -20, -780), (45, 35, 35)), (-815, -745), 10, 15000,
                     (("Organs", "bladder"),)))
    # ribs: bands of the torso wall, not in front (cartilage) and not beside the spine (muscles)
    rib_wall = _minus(_cylinder(0, 15, 146, 88, -2000, 0), _cylinder(0, 15, 139, 81, -2000, 0))
    for r in range(1, 13):
        top = -290.0 - 24.0 * (r - 1)
        for left in (True, False):
            name = f"rib_{'left' if left else 'right'}_{r}"
            cond = (lambda lf, tp: lambda x, y, z: _side(x, lf) & (z <= tp) & (z >= tp - 10) & (y > -40)
                    & ~((np.abs(x) < 60) & (y > 40)))(left, top)
            t.append(_Tissue(name, _where(rib_wall, cond), (top - 10, top), 600, 1500, (("Ribs", name),)))
    # arms raised beside the head: upper arm, forearm, hand; bones inside
    for left in (True, False):
        ax = _ARM_X if left else -_ARM_X
        side = "left" if left else "right"
        arm = ("arms",)
        t.append(_Tissue(f"upper arm {side}", _cylinder(ax, _ARM_Y, 30, 30, -330, -140), (-330, -140), 45, 1500,
                         landmarks=arm))
        t.append(_Tissue(f"forearm {side}", _cylinder(ax, _ARM_Y, 28, 28, -140, -40), (-140, -40), 45, 1500,
                         landmarks=arm))
        t.append(_Tissue(f"hand {side}", _ellipsoid((ax, _ARM_Y, -22), (16, 32, 26)), (-48, 4), 45, 1500,
                         landmarks=arm))
        bones = [
            (f"humerus_{side}", _cylinder(ax, _ARM_Y, 11, 11, -320, -150), (-320, -150)),
            (f"radius_{side}", _cylinder(ax, _ARM_Y - 12, 6, 6, -135, -55), (-135, -55)),
            (f"ulna_{side}", _cylinder(ax, _ARM_Y + 12, 6, 6, -135, -55), (-135, -55)),
            (f"carpal_{side}", _ellipsoid((ax, _ARM_Y, -45), (10, 16, 7)), (-52, -38)),
            (f"fingers_{side}", _box((ax - 6, _ARM_Y - 16, -32), (ax + 6, _ARM_Y + 16, -6)), (-32, -6)),
        ]
        for name, mask, zr in bones:
            t.append(_Tissue(name, mask, zr, BONE_HU, 1500, (("Peripheral-Bones", name),), arm))
    # the lesion keeps the lung label under it: removing it is the segmentation stage's job
    t.append(_Tissue("lesion", _ellipsoid(lesion_centre, (_LESION_RADIUS,) * 3),
                     (lesion_centre[2] - _LESION_RADIUS, lesion_centre[2] + _LESION_RADIUS), 40, 60000,
                     landmarks=("lesion",), clears=False))
    return t


LANDMARKS: tuple[str, ...] = ("brain", "skull", "eyes", "nose", "arms", "head_outline")


# ---------------------------------------------------------------------------
# label tables


def release_label_table() -> dict[str, dict[str, int]]:
    """Release category -> {label name: release value} from ``curation/data/enhance_pet_labels.json``."""
    raw = json.loads(resources.files("curation").joinpath("data/enhance_pet_labels.json").read_text("utf-8"))
    return {cat: {name: int(value) for value, name in labels.items()} for cat, labels in raw.items()}


#: release category -> the model name in MOOSE's label table
_MOOSE_MODEL = {
    "Body-Composition": "body_composition",
    "Cardiac": "cardiac",
    "Muscles": "muscles",
    "Organs": "organs",
    "Peripheral-Bones": "peripheral_bones",
    "Ribs": "ribs",
    "Vertebrae": "vertebrae",
}


def moose_label_table() -> dict[str, dict[str, int]]:
    """Release category -> {label name: MOOSE value} from ``curation/data/moose_label_codes.csv``."""
    text = resources.files("curation").joinpath("data/moose_label_codes.csv").read_text("utf-8")
    by_model: dict[str, dict[str, int]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        by_model.setdefault(row["model"], {})[row["label_name"]] = int(row["label_id"])
    return {cat: by_model[model] for cat, model in _MOOSE_MODEL.items()}


# ---------------------------------------------------------------------------
# the phantom


@dataclass(frozen=True, eq=False)
class Phantom:
    """A phantom on its CT and PET grids (arrays indexed [column, row, slice]).

    Every array is read-only (phantoms are shared between tests): copy before
    changing one.  ``lesion``, ``labels``, ``landmarks`` and ``extra_labels``
    are empty when the phantom was made with ``with_labels=False``.
    """

    ct_geometry: PhantomGeometry
    pt_geometry: PhantomGeometry
    ct_hu: np.ndarray  # int16
    pt_bqml: np.ndarray  # float32
    labels: dict[str, np.ndarray]  # category -> uint8 map, release values, CT grid
    lesion: np.ndarray  # bool, CT grid
    landmarks: dict[str, np.ndarray]  # bool masks on the CT grid (see LANDMARKS)
    extra_labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # e.g. "trachea"
    size: str = "small"
    seed: int = 0
    feet_first: bool = False
    lesion_centre: tuple[float, float, float] = _LESION_CENTRE

    @property
    def patient_position(self) -> str:
        return "FFS" if self.feet_first else "HFS"


def _index_range(coord: np.ndarray, lo: float, hi: float) -> slice:
    """The index range of a monotonic 1-D coordinate array that falls inside [lo, hi]."""
    inside = np.nonzero((coord >= lo) & (coord <= hi))[0]
    if inside.size == 0:
        return slice(0, 0)
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _paint(geometry: PhantomGeometry, tissues: list[_Tissue], *, quantity: str, want_labels: bool,
           table: dict[str, dict[str, int]]) -> tuple[np.ndarray, dict, dict, dict]:
    """Sample the tissues' ``quantity`` ("hu" or "bq") at the voxel centres of an axial grid, slice by slice.

    Only the in-plane bounding box of each tissue is evaluated, which keeps the
    512 x 512 benchmark phantom affordable.
    """
    if abs(abs(geometry.normal[2]) - 1.0) > 1e-9:
        raise ValueError(f"phantom grids are axial; got ImageOrientationPatient {geometry.orientation}")
    shape = geometry.shape
    background = float(AIR_HU) if quantity == "hu" else 0.0
    # Fortran order: a slice [:, :, k] is contiguous, which is how every volume is filled and written
    values = np.full(shape, background, dtype=np.float32, order="F")
    labels = {c: np.zeros(shape, dtype=np.uint8, order="F") for c in CATEGORIES} if want_labels else {}
    extra_names = sorted({e for t in tissues for e in t.extra})
    extra = {e: np.zeros(shape, dtype=bool, order="F") for e in extra_names} if want_labels else {}
    lm_names = sorted({m for t in tissues for m in t.landmarks})
    landmarks = {m: np.zeros(shape, dtype=bool, order="F") for m in lm_names} if want_labels else {}
    for k in range(geometry.slices):
        x, y, z = geometry.slice_points(k)
        zk = float(z[0, 0])
        xs, ys = x[:, 0], y[0, :]
        for tissue in tissues:
            if not tissue.z_range[0] <= zk <= tissue.z_range[1]:
                continue
            x_lo, x_hi, y_lo, y_hi = tissue.mask.bbox
            block = (_index_range(xs, x_lo, x_hi), _index_range(ys, y_lo, y_hi), k)
            if block[0].start == block[0].stop or block[1].start == block[1].stop:
                continue
            m = tissue.mask(x[block[:2]], y[block[:2]], z[block[:2]])
            if not m.any():
                continue
            values[block][m] = getattr(tissue, quantity)
            if not want_labels:
                continue
            if tissue.clears:
                for arr in labels.values():
                    arr[block][m] = 0
                for arr in extra.values():
                    arr[block][m] = False
            for category, name in tissue.labels:
                labels[category][block][m] = table[category][name]
            for name in tissue.extra:
                extra[name][block][m] = True
            for name in tissue.landmarks:
                landmarks[name][block][m] = True
    return values, labels, extra, landmarks


def make_phantom(*, size: str = "small", seed: int = 0, feet_first: bool = False,
                 with_labels: bool | None = None) -> Phantom:
    """Build the phantom on its CT and PET grids.

    Parameters
    ----------
    size
        ``"small"`` (unit tests: CT 64x64x120 at 7 x 7 x 5 mm, PET
        32x32x100 at 14 x 14 x 6 mm), ``"demo"`` (CT 96x96x160, PET 48x48x130),
        ``"large"`` (CT 256x256x256, PET 128x128x162, with labels: the scaling
        benchmark) or ``"bench"`` (CT 512x512x320, PET 200x200x205: the conversion
        benchmark).
    seed
        Seeds the lesion position (within a few mm) and the CT and PET noise.
    feet_first
        Scan feet first (PatientPosition FFS): the grids start at the head's
        end along their own normal (pointing inferior) and the image columns
        run to patient right; the anatomy stays where it is in patient
        coordinates.
    with_labels
        Compute label maps and landmark masks (default: yes, except for
        ``"bench"`` where they would cost gigabytes).

    Raises
    ------
    ValueError
        For an unknown ``size``.
    """
    if size not in SIZES:
        raise ValueError(f"make_phantom: size {size!r} is not one of {', '.join(SIZES)}")
    spec = SIZES[size]
    if with_labels is None:
        with_labels = size != "bench"
    ct_geo = _grid(spec.ct_matrix, spec.ct_pixel, spec.ct_slices, spec.ct_dz, _CT_TOP_Z, (0.0, 0.0), feet_first)
    pt_geo = _grid(spec.pt_matrix, spec.pt_pixel, spec.pt_slices, spec.pt_dz, _PT_TOP_Z, _PT_SHIFT_XY,
                   feet_first)
    rng = np.random.default_rng([seed, 20260101])
    jitter = rng.uniform(-6.0, 6.0, size=3)
    lesion_centre = tuple(float(c + d) for c, d in zip(_LESION_CENTRE, jitter, strict=True))
    tissues = _tissues(lesion_centre)  # type: ignore[arg-type]
    table = release_label_table()

    hu, labels, extra, landmarks = _paint(ct_geo, tissues, quantity="hu", want_labels=with_labels, table=table)
    # noise: small in air so HU thresholds (-500 body, +300 bone) stay clean
    ct_rng = np.random.default_rng([seed, 1])
    ct_hu = np.empty(ct_geo.shape, dtype=np.int16, order="F")
    for k in range(ct_geo.slices):
        sl = hu[:, :, k]
        air = sl <= AIR_HU + 1
        noise = ct_rng.standard_normal(size=sl.shape, dtype=np.float32) * 7.0
        noise[air] *= 0.4
        sl += noise
        sl[air] = np.clip(sl[air], RESCALE_INTERCEPT, AIR_HU + 8)
        ct_hu[:, :, k] = np.rint(np.clip(sl, RESCALE_INTERCEPT, 3000))
    del hu

    bq, _, _, _ = _paint(pt_geo, tissues, quantity="bq", want_labels=False, table=table)
    pt_rng = np.random.default_rng([seed, 2])
    for k in range(pt_geo.slices):
        sl = bq[:, :, k]
        sl *= 1.0 + 0.05 * pt_rng.standard_normal(size=sl.shape, dtype=np.float32)
        np.clip(sl, 0.0, None, out=sl)
    lesion = landmarks.pop("lesion") if with_labels else np.zeros(0, dtype=bool)
    for arr in (ct_hu, bq, lesion, *labels.values(), *landmarks.values(), *extra.values()):
        arr.flags.writeable = False
    return Phantom(
        ct_geometry=ct_geo,
        pt_geometry=pt_geo,
        ct_hu=ct_hu,
        pt_bqml=bq,
        labels=labels,
        lesion=lesion,
        landmarks=landmarks,
        extra_labels=extra,
        size=size,
        seed=seed,
        feet_first=feet_first,
        lesion_centre=lesion_centre,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------
# DICOM writing


class Vendor(StrEnum):
    """Header and file-layout styles of three scanner makers."""

    SIEMENS = "siemens"
    PHILIPS = "philips"
    GE = "ge"


@dataclass(frozen=True)
class _Style:
    manufacturer: str
    ct_model: str
    pt_model: str
    software: str
    ct_kernel: str
    ct_filter: str
    ct_signed: bool
    ct_bits_stored: int
    instance_order: str  # "scan" | "reversed" | "shuffled"
    spacing_between_slices: bool
    focal_spots: str


_STYLES = {
    Vendor.SIEMENS: _Style("SIEMENS", "Biograph Vision 600", "Biograph Vision 600", "VG80B", "Br38f", "FLAT",
                           False, 12, "scan", False, "0.7"),
    Vendor.PHILIPS: _Style("Philips", "Vereos PET/CT", "Vereos PET/CT", "2.0.1", "B", "B", False, 12,
                           "reversed", True, "1.1"),
    Vendor.GE: _Style("GE MEDICAL SYSTEMS", "Discovery MI", "Discovery MI", "pet_coreload.46", "STANDARD",
                      "BODY FILTER", True, 16, "shuffled", True, "0.7\\1.2"),
}


@dataclass(frozen=True)
class PatientInfo:
    """Patient characteristics a PET/CT header keeps after de-identification."""

    sex: str  # "M" | "F"
    age_years: int
    weight_kg: float
    height_m: float


@dataclass(frozen=True)
class StudyFiles:
    """What :func:`write_study` wrote: the UIDs, and the files by role.

    Roles: ``ct``, ``pt`` (attenuation-corrected), ``pt_nac``, ``localizer``,
    ``secondary_capture``, ``text``, ``truncated``, ``dicomdir``.  The
    truncated file is a copy of a middle CT slice of the CT series (own
    SOPInstanceUID, same position) cut in the middle of its pixel data, as an
    interrupted transfer leaves it.
    """

    root: Path
    vendor: str
    StudyInstanceUID: str
    PatientID: str
    PatientName: str
    StudyDate: str
    FrameOfReferenceUID: str
    ct_series_uid: str
    pt_series_uid: str | None  # None for "nac-only"
    pt_nac_series_uid: str | None
    pt_frame_of_reference_uid: str
    defect: str | None
    plant_phi: bool
    feet_first: bool
    files: dict[str, tuple[Path, ...]]
    patient: PatientInfo
    injected_activity_bq: float
    planted_phi: dict[str, str] = dataclasses.field(default_factory=dict)  # keyword -> planted value
    missing_pt_index: int | None = None  # spatial index of the PET slice left out

    @property
    def all_files(self) -> tuple[Path, ...]:
        return tuple(p for role in sorted(self.files) for p in self.files[role])


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def _uid(*parts: object) -> str:
    """A deterministic UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(_digest("uid", *parts)[:16], "big"))


def _hexname(n: int, *parts: object) -> str:
    return _digest("name", *parts).hex()[:n]


def _ds_str(value: float) -> str:
    """A DS string (at most 16 characters) for ``value``."""
    for digits in range(10, 3, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {value!r} as a DICOM DS")


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class _SeriesEncoder:
    """Encode the slices of one series fast: constant elements once, per slice only the changing ones.

    Explicit VR little endian data elements are self-delimiting, so a dataset's
    encoding is the concatenation of its elements' encodings in tag order; the
    result is byte-identical to :func:`pydicom.filewriter.dcmwrite` (tested).
    Every element not named in ``varying`` must be set before construction and
    left alone afterwards.
    """

    def __init__(self, ds: Dataset, varying: Sequence[str]) -> None:
        self.ds = ds
        self.varying = sorted(int(tag_for_keyword(k)) for k in varying)  # type: ignore[arg-type]
        static = [e for e in ds if int(e.tag) not in self.varying]
        self.static_runs: list[bytes] = []  # run i holds the static elements before varying tag i
        for i in range(len(self.varying) + 1):
            lo = self.varying[i - 1] if i else -1
            hi = self.varying[i] if i < len(self.varying) else 1 << 33
            run = Dataset()
            for elem in static:
                if lo < int(elem.tag) < hi:
                    run.add(elem)
            self.static_runs.append(self._encode(run))

    @staticmethod
    def _encode(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_dataset(fp, ds)
        return fp.getvalue()

    def encode(self) -> bytes:
        """The complete file (preamble, file meta, dataset) for the current element values."""
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = False, True
        write_file_meta_info(meta, self.ds.file_meta, enforce_standard=True)
        parts = [b"\x00" * 128, b"DICM", meta.getvalue(), self.static_runs[0]]
        for tag, run in zip(self.varying, self.static_runs[1:], strict=True):
            if tag in self.ds:
                elem = self.ds[tag]
                if elem.VR == "OB or OW":  # native PixelData: dcmwrite resolves it from BitsAllocated
                    elem = DataElement(elem.tag, "OW" if self.ds.BitsAllocated > 8 else "OB", elem.value)
                single = Dataset()
                single.add(elem)
                parts.append(self._encode(single))
            parts.append(run)
        return b"".join(parts)


def _write_file(path: Path, data: bytes) -> None:
    """Write a drop file: temporary name in the same folder, then rename (no fsync: test data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _new_dataset(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


#: the elements that change from slice to slice of a CT or PET series
_SLICE_VARYING = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


@dataclass(frozen=True)
class _StudyContext:
    vendor: Vendor
    style: _Style
    seed: int
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    injection: datetime
    patient: PatientInfo
    dose_bq: float
    frame_of_reference: str
    feet_first: bool
    plant_phi: dict[str, str]


def _patient_study_module(ds: Dataset, ctx: _StudyContext) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ctx.patient.sex
    ds.PatientAge = f"{ctx.patient.age_years:03d}Y"
    ds.PatientWeight = _ds_str(ctx.patient.weight_kg)
    ds.PatientSize = _ds_str(ctx.patient.height_m)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 E basic; retain pat chars, device id; dates shifted"
    ds.DeidentificationMethodCodeSequence = DicomSequence([
        _code("113100", "DCM", "Basic Application Confidentiality Profile"),
        _code("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
        _code("113108", "DCM", "Retain Patient Characteristics Option"),
        _code("113109", "DCM", "Retain Device Identity Option"),
    ])
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = ctx.study_date
    ds.StudyTime = ctx.study_time
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET-CT whole body FDG"
    ds.Manufacturer = ctx.style.manufacturer
    ds.SoftwareVersions = ctx.style.software
    for keyword, value in ctx.plant_phi.items():
        setattr(ds, keyword, value)


def _series_module(ds: Dataset, ctx: _StudyContext, *, modality: str, series_uid: str, number: int,
                   description: str, when: datetime, model: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.SeriesTime = when.strftime("%H%M%S")
    ds.ManufacturerModelName = model
    ds.PatientPosition = "FFS" if ctx.feet_first else "HFS"
    ds.BodyPartExamined = "WHOLEBODY"


def _image_pixel_module(ds: Dataset, rows: int, columns: int, *, bits_stored: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def _instance_numbers(n: int, order: str, feet_first: bool, key: object) -> list[int]:
    """InstanceNumber of each spatial index: acquisition order, reversed, or shuffled (deterministic)."""
    # acquisition runs head to feet for HFS (down the z axis), feet to head for FFS;
    # spatial index 0 is the most inferior slice for HFS and the most superior for FFS
    scan = list(range(n, 0, -1)) if not feet_first else list(range(1, n + 1))
    if order == "reversed":
        return [n + 1 - v for v in scan]
    if order == "shuffled":
        perm = np.random.default_rng(list(_digest("order", key)[:8])).permutation(n)
        return [int(v) + 1 for v in perm]
    return scan


def _layout(ctx: _StudyContext, out_dir: Path, series_key: str, index: int) -> Path:
    """Opaque, vendor-typical nested file names (deterministic)."""
    study = _hexname(12, ctx.study_uid, ctx.seed)
    if ctx.vendor is Vendor.SIEMENS:
        return (out_dir / _hexname(8, ctx.patient_id, "pat") / study / _hexname(10, series_key)
                / _hexname(16, series_key, index))
    if ctx.vendor is Vendor.PHILIPS:
        return out_dir / study / "DICOM" / _hexname(8, series_key).upper() / _hexname(8, series_key, index).upper()
    return out_dir / study / f"{_hexname(20, series_key, index)}.dcm"


def _ct_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, series_uid: str, defect: str | None,
               when: datetime, truncated_copy: bool) -> tuple[list[Path], Path | None]:
    geo = phantom.ct_geometry
    style = ctx.style
    ds = _new_dataset(CTImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="CT", series_uid=series_uid, number=2, description=f"CT WB {geo.slice_spacing:g} {style.ct_kernel}",
                   when=when, model=style.ct_model)
    ds.FrameOfReferenceUID = ctx.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.KVP = "120"
    ds.ConvolutionKernel = style.ct_kernel
    ds.FilterType = style.ct_filter
    ds.FocalSpots = style.focal_spots.split("\\") if "\\" in style.focal_spots else style.focal_spots
    ds.SliceThickness = _ds_str(geo.slice_spacing)
    if style.spacing_between_slices:
        ds.SpacingBetweenSlices = _ds_str(geo.slice_spacing)
    ds.XRayTubeCurrent = 80 + ctx.seed % 40
    ds.Exposure = 40 + ctx.seed % 20
    ds.ExposureTime = 500
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ReconstructionDiameter = _ds_str(geo.columns * geo.pixel_spacing[1])
    ds.PixelSpacing = [_ds_str(geo.pixel_spacing[0]), _ds_str(geo.pixel_spacing[1])]
    orientation = [float(v) for v in geo.orientation]
    if defect == "gantry-tilt":
        # a tilted gantry: the image plane is rotated about x while the table moves straight along z
        tilt = np.deg2rad(7.0)
        col = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        orientation = [*orientation[:3], *(float(v) for v in col)]
        ds.GantryDetectorTilt = "7"
    ds.ImageOrientationPatient = [_ds_str(v) for v in orientation]
    _image_pixel_module(ds, geo.rows, geo.columns, bits_stored=style.ct_bits_stored, signed=style.ct_signed)
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    numbers = _instance_numbers(geo.slices, style.instance_order, ctx.feet_first, series_uid)
    dtype = np.int16 if style.ct_signed else np.uint16
    encoder = _SeriesEncoder(ds, _SLICE_VARYING)
    paths: list[Path] = []
    truncated: Path | None = None
    mid = geo.slices // 2
    for k in range(geo.slices):
        pos = np.asarray(geo.position(k))
        if defect == "non-uniform-spacing" and k > mid:
            pos = pos + (k - mid) * 0.35 * geo.slice_spacing * geo.normal
        sop = _uid(ctx.study_uid, series_uid, "ct", k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in pos]
        ds.SliceLocation = _ds_str(float(pos[2]))
        stored = phantom.ct_hu[:, :, k].astype(np.int32) - RESCALE_INTERCEPT
        ds.PixelData = np.ascontiguousarray(stored.T, dtype=dtype).tobytes()
        data = encoder.encode()
        path = _layout(ctx, out_dir, series_uid, k)
        _write_file(path, data)
        paths.append(path)
        if k == mid and truncated_copy:
            # the interrupted copy of this slice: another SOPInstanceUID, cut inside the pixel data
            cut_sop = _uid(ctx.study_uid, series_uid, "ct-truncated", k)
            ds.SOPInstanceUID = cut_sop
            ds.file_meta.MediaStorageSOPInstanceUID = cut_sop
            cut = encoder.encode()
            truncated_bytes = cut[: len(cut) - len(ds.PixelData) // 2]
            truncated = _layout(ctx, out_dir, series_uid, "truncated")
            _write_file(truncated, truncated_bytes)
    return paths, truncated


def _pt_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, series_uid: str, frame_of_reference: str,
               when: datetime, nac: bool, skip_index: int | None, number: int) -> list[Path]:
    geo = phantom.pt_geometry
    style = ctx.style
    ds = _new_dataset(PositronEmissionTomographyImageStorage)
    _patient_study_module(ds, ctx)
    description = "PET NAC" if nac else "PET WB AC"
    _series_module(ds, ctx, modality="PT", series_uid=series_uid, number=number, description=description,
                   when=when, model=style.pt_model)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CorrectedImage = ["NORM", "DTIM", "RAN", "DECY"] if nac else ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "NONE" if nac else "measured,AC_CT"
    ds.ScatterCorrectionMethod = "NONE" if nac else "Model-based"
    ds.ReconstructionMethod = "OSEM3D 4i5s"
    ds.NumberOfSlices = geo.slices
    ds.SliceThickness = _ds_str(geo.slice_spacing)
    if style.spacing_between_slices:
        ds.SpacingBetweenSlices = _ds_str(geo.slice_spacing)
    ds.PixelSpacing = [_ds_str(geo.pixel_spacing[0]), _ds_str(geo.pixel_spacing[1])]
    ds.ImageOrientationPatient = [_ds_str(float(v)) for v in geo.orientation]
    ds.ActualFrameDuration = 120000
    delay = (when - ctx.injection).total_seconds()
    ds.DecayFactor = _ds_str(float(2 ** (delay / F18_HALF_LIFE_S)))
    ds.FrameReferenceTime = "0"
    ds.DoseCalibrationFactor = "1"
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = ctx.injection.strftime("%H%M%S")
    radio.RadiopharmaceuticalStartDateTime = ctx.injection.strftime("%Y%m%d%H%M%S")
    radio.RadionuclideTotalDose = _ds_str(ctx.dose_bq)
    radio.RadionuclideHalfLife = "6586.2"
    radio.RadionuclidePositronFraction = "0.9673"
    radio.RadionuclideCodeSequence = DicomSequence([_code("C-111A1", "SRT", "^18^Fluorine")])
    radio.RadiopharmaceuticalCodeSequence = DicomSequence([_code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
    _image_pixel_module(ds, geo.rows, geo.columns, bits_stored=16, signed=False)
    ds.RescaleIntercept = "0"
    ds.RescaleType = "BQML"
    if ctx.vendor is Vendor.PHILIPS:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        suv_factor = ctx.patient.weight_kg * 1000.0 / (ctx.dose_bq / float(ds.DecayFactor))
        block.add_new(0x00, "DS", _ds_str(suv_factor))
        block.add_new(0x09, "DS", "1")
    elif ctx.vendor is Vendor.GE:
        block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
        block.add_new(0x01, "LO", "GE_PET_RECON")
    values = phantom.pt_bqml * (0.45 if nac else 1.0)
    numbers = _instance_numbers(geo.slices, style.instance_order, ctx.feet_first, series_uid)
    encoder = _SeriesEncoder(ds, (*_SLICE_VARYING, "ImageIndex", "RescaleSlope"))
    paths: list[Path] = []
    for k in range(geo.slices):
        if k == skip_index:
            continue
        sl = values[:, :, k]
        peak = float(sl.max())
        slope = float(_ds_str(peak / 65000.0)) if peak > 0 else 1.0
        stored = np.clip(np.rint(sl.astype(np.float64) / slope), 0, 65535).astype(np.uint16)
        pos = geo.position(k)
        sop = _uid(ctx.study_uid, series_uid, "pt", k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = numbers[k]
        ds.ImageIndex = numbers[k]
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in pos]
        ds.SliceLocation = _ds_str(float(pos[2]))
        ds.RescaleSlope = _ds_str(slope)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
        path = _layout(ctx, out_dir, series_uid, k)
        _write_file(path, encoder.encode())
        paths.append(path)
    return paths


def _localizer_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, when: datetime) -> list[Path]:
    """An AP and a lateral topogram: projections of the CT, on the CT's frame of reference."""
    geo = phantom.ct_geometry
    series_uid = _uid(ctx.study_uid, "localizer")
    ds = _new_dataset(CTImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="CT", series_uid=series_uid, number=1, description="Topogram 0.6 T20f",
                   when=when - timedelta(minutes=3), model=ctx.style.ct_model)
    ds.FrameOfReferenceUID = ctx.frame_of_reference
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.KVP = "120"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    mu = np.clip(phantom.ct_hu.astype(np.float32) + 1000.0, 0, None)
    # z runs down the image: spatial slice order flipped so that the head is at the top
    top_first = slice(None, None, -1) if not ctx.feet_first else slice(None)
    views = [("AP", mu.sum(axis=1), geo.pixel_spacing[1]), ("LAT", mu.sum(axis=0), geo.pixel_spacing[0])]
    paths = []
    for n, (view, proj, spacing) in enumerate(views):
        image = proj[:, top_first].T  # rows = z from top, columns = x (AP) or y (LAT)
        image = np.rint(image / image.max() * 4000.0).astype(np.uint16)
        _image_pixel_module(ds, image.shape[0], image.shape[1], bits_stored=16, signed=False)
        top = geo.position(geo.slices - 1 if not ctx.feet_first else 0)
        if view == "AP":
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = [_ds_str(min(geo.origin[0], top[0])), "0", _ds_str(top[2])]
        else:
            ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = ["0", _ds_str(geo.origin[1]), _ds_str(top[2])]
        ds.PixelSpacing = [_ds_str(geo.slice_spacing), _ds_str(spacing)]
        sop = _uid(ctx.study_uid, series_uid, n)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = n + 1
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        path = _layout(ctx, out_dir, series_uid, n)
        _write_file(path, _dicom_bytes(ds))
        paths.append(path)
    return paths


def _secondary_capture(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, when: datetime) -> Path:
    """A screen capture of a PET MIP, as a reading workstation stores it."""
    series_uid = _uid(ctx.study_uid, "screen capture")
    ds = _new_dataset(SecondaryCaptureImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="OT", series_uid=series_uid, number=900, description="Screen Capture MIP",
                   when=when + timedelta(minutes=30), model=ctx.style.pt_model)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    mip = phantom.pt_bqml.max(axis=1)
    mip = mip[:, ::-1] if not ctx.feet_first else mip
    image = np.rint(mip.T / max(float(mip.max()), 1.0) * 255.0).astype(np.uint8)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    sop = _uid(ctx.study_uid, series_uid, 0)
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.PixelData = image.tobytes()
    path = _layout(ctx, out_dir, series_uid, 0)
    _write_file(path, _dicom_bytes(ds))
    return path


def _dicomdir(ctx: _StudyContext, out_dir: Path) -> Path:
    """A DICOMDIR-like media directory (parseable DICOM, but no image)."""
    ds = _new_dataset(MediaStorageDirectoryStorage)
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(ctx.study_uid, "dicomdir")
    ds.FileSetID = "PETCT"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    path = _layout(ctx, out_dir, "dicomdir", 0).parent / "DICOMDIR"
    _write_file(path, _dicom_bytes(ds))
    return path


#: identifying values ``plant_phi=True`` puts into every CT and PET header
PLANTED_PHI: dict[str, str] = {
    "PatientBirthDate": "19580312",
    "OtherPatientIDs": "MRN-4471920",
    "ReferringPhysicianName": "Hausmann^Karl^^Dr.",
    "InstitutionAddress": "Liebigstrasse 20, 04103 Leipzig",
    "AccessionNumber": "ACC88172635",
    "PatientAddress": "Karl-Heine-Strasse 7, Leipzig",
}


def _patient_for(seed: int, patient_id: str) -> PatientInfo:
    rng = np.random.default_rng(list(_digest("patient", seed, patient_id)[:8]))
    sex = "M" if rng.random() < 0.55 else "F"
    height = float(np.round(rng.normal(1.77 if sex == "M" else 1.65, 0.06), 2))
    weight = float(np.round(rng.normal(24.0, 3.0) * height**2, 1))
    return PatientInfo(sex=sex, age_years=int(rng.integers(35, 84)), weight_kg=weight, height_m=height)


def write_study(phantom: Phantom, out_dir: Path, *, vendor: str | Vendor, seed: int, patient_id: str,
                patient_name: str, study_uid: str | None = None, decoys: bool = True, defect: str | None = None,
                plant_phi: bool = False, study_date: date | None = None,
                patient: PatientInfo | None = None) -> StudyFiles:
    """Write one PET/CT study as a site delivers it.

    Parameters
    ----------
    phantom
        The phantom to write (its ``feet_first`` decides PatientPosition).
    out_dir
        The site's drop folder; the study goes into vendor-typical nested
        folders with opaque names below it.
    vendor
        ``"siemens"`` (InstanceNumber in acquisition order, unsigned 12-bit CT),
        ``"philips"`` (reversed InstanceNumber, PET private group 7053 with SUV
        and activity concentration scale factors, a DICOMDIR) or ``"ge"``
        (shuffled InstanceNumber, signed CT, ``.dcm`` files all in one folder,
        a GEMS_PETD_01 private block).
    seed
        Fixes every UID, date, time, file name and patient characteristic.
    patient_id, patient_name
        The site's pseudonym.
    study_uid
        StudyInstanceUID (default: derived from ``seed`` and ``patient_id``).
    decoys
        Add a CT localiser, a non-attenuation-corrected PET series, a screen
        capture, a text file and a truncated copy of a CT slice.
    defect
        One of :data:`DEFECTS`, or None.
    plant_phi
        Put the identifying values of :data:`PLANTED_PHI` into every CT and PET
        header (the de-identification gate must quarantine the study).
    study_date, patient
        Override the (shifted) study date and the patient characteristics.

    Returns
    -------
    StudyFiles

    Raises
    ------
    ValueError
        For an unknown vendor or defect.
    """
    try:
        vendor = Vendor(vendor)
    except ValueError:
        raise ValueError(f"write_study: vendor {vendor!r} is not one of {', '.join(v.value for v in Vendor)}") from None
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"write_study: defect {defect!r} is not one of {', '.join(DEFECTS)}")
    out_dir = Path(out_dir)
    study_uid = study_uid or _uid("study", seed, patient_id)
    patient = patient or _patient_for(seed, patient_id)
    rng = np.random.default_rng(list(_digest("study", seed, study_uid)[:8]))
    if study_date is None:
        study_date = date(2019, 1, 7) + timedelta(days=int(rng.integers(0, 1500)))
    injection = datetime(study_date.year, study_date.month, study_date.day, 8, 0, 0) + timedelta(
        minutes=int(rng.integers(0, 360)), seconds=int(rng.integers(0, 60)))
    ct_time = injection + timedelta(minutes=int(rng.integers(55, 70)))
    pt_time = ct_time + timedelta(minutes=2, seconds=int(rng.integers(0, 50)))
    dose = float(np.round(patient.weight_kg * rng.uniform(3.0, 4.0) * 1e6, -4))
    frame_uid = _uid(study_uid, "frame of reference")
    ctx = _StudyContext(
        vendor=vendor,
        style=_STYLES[vendor],
        seed=seed,
        study_uid=study_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_date=study_date.strftime("%Y%m%d"),
        study_time=ct_time.strftime("%H%M%S"),
        injection=injection,
        patient=patient,
        dose_bq=dose,
        frame_of_reference=frame_uid,
        feet_first=phantom.feet_first,
        plant_phi=dict(PLANTED_PHI) if plant_phi else {},
    )
    files: dict[str, tuple[Path, ...]] = {}
    ct_uid = _uid(study_uid, "ct")
    ct_paths, truncated = _ct_series(phantom, ctx, out_dir, series_uid=ct_uid, defect=defect, when=ct_time,
                                     truncated_copy=decoys)
    files["ct"] = tuple(ct_paths)
    if truncated is not None:
        files["truncated"] = (truncated,)
    pt_frame = _uid(study_uid, "other frame of reference") if defect == "frame-of-reference-mismatch" else frame_uid
    pt_uid: str | None = _uid(study_uid, "pt")
    missing = phantom.pt_geometry.slices // 2 if defect == "missing-pet-slice" else None
    if defect == "nac-only":
        pt_uid = None
    else:
        files["pt"] = tuple(_pt_series(phantom, ctx, out_dir, series_uid=pt_uid, frame_of_reference=pt_frame,
                                       when=pt_time, nac=False, skip_index=missing, number=4))
    nac_uid: str | None = None
    if decoys or defect == "nac-only":
        nac_uid = _uid(study_uid, "pt nac")
        files["pt_nac"] = tuple(_pt_series(phantom, ctx, out_dir, series_uid=nac_uid, frame_of_reference=pt_frame,
                                           when=pt_time, nac=True, skip_index=None, number=5))
    if decoys:
        files["localizer"] = tuple(_localizer_series(phantom, ctx, out_dir, when=ct_time))
        files["secondary_capture"] = (_secondary_capture(phantom, ctx, out_dir, when=pt_time),)
        text = _layout(ctx, out_dir, "notes", 0).parent / "export_notes.txt"
        _write_file(text, b"Exported by the site PACS gateway. Series: CT, PET AC, PET NAC, topogram.\n")
        files["text"] = (text,)
        if vendor is Vendor.PHILIPS:
            files["dicomdir"] = (_dicomdir(ctx, out_dir),)
    logger.debug("wrote study %s (%s, %d files) under %s", study_uid, vendor.value,
                 sum(len(v) for v in files.values()), out_dir)
    return StudyFiles(
        root=out_dir,
        vendor=vendor.value,
        StudyInstanceUID=study_uid,
        PatientID=patient_id,
        PatientName=patient_name,
        StudyDate=ctx.study_date,
        FrameOfReferenceUID=frame_uid,
        ct_series_uid=ct_uid,
        pt_series_uid=pt_uid,
        pt_nac_series_uid=nac_uid,
        pt_frame_of_reference_uid=pt_frame,
        defect=defect,
        plant_phi=plant_phi,
        feet_first=phantom.feet_first,
        files=files,
        patient=patient,
        injected_activity_bq=dose,
        planted_phi=dict(ctx.plant_phi),
        missing_pt_index=missing,
    )


# ---------------------------------------------------------------------------
# segmentations and lesions


def _reorder(arr: np.ndarray, affine: np.ndarray, axis_order: str) -> tuple[np.ndarray, np.ndarray]:
    """The same grid in another axis order: flipped or permuted array with its matching affine."""
    if axis_order == "native":
        return arr, affine
    if axis_order == "flipped":
        flip = np.eye(4)
        for axis in (0, 2):
            flip[axis, axis] = -1.0
            flip[axis, 3] = arr.shape[axis] - 1
        return arr[::-1, :, ::-1], affine @ flip
    if axis_order == "permuted":
        perm = (2, 0, 1)
        new = np.transpose(arr, perm)
        out = affine.copy()
        for d, src in enumerate(perm):
            out[:, d] = affine[:, src]
        return new, out
    raise ValueError(f"axis_order {axis_order!r} is not one of 'native', 'flipped', 'permuted'")


def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)


def write_segmentations(phantom: Phantom, seg_dir: Path, study_uid: str, *, axis_order: str = "native",
                        moose_names: bool = False, categories: Iterable[str] = CATEGORIES) -> list[Path]:
    """Write the phantom's label maps as ``seg_dir/<study_uid>/<Category>.nii.gz``.

    Parameters
    ----------
    axis_order
        ``"native"`` (the CT grid as it is), ``"flipped"`` (first and last axes
        reversed) or ``"permuted"`` (axes in the order slice, column, row); the
        affine always describes the same grid in world space.
    moose_names
        Write MOOSE model file names (``clin_ct_organs.nii.gz`` ...) with MOOSE
        label values (looked up by name in ``moose_label_codes.csv``); the
        organs map then also holds ``trachea``, which the release drops.
    categories
        The release categories to write (default: all seven).

    Returns
    -------
    list[Path]
        The files written.
    """
    if not phantom.labels:
        raise ValueError("write_segmentations: the phantom was made without labels (with_labels=False)")
    release = release_label_table()
    moose = moose_label_table()
    alias_for = {cat: alias for alias, cat in CATEGORY_ALIASES.items()}
    affine = phantom.ct_geometry.affine_ras()
    out: list[Path] = []
    for category in categories:
        arr = phantom.labels[category]
        name = category
        if moose_names:
            lut = np.zeros(256, dtype=np.uint8)
            for label, value in release[category].items():
                lut[value] = moose[category][label]
            arr = lut[arr]
            if category == "Organs":
                for extra_name, mask in phantom.extra_labels.items():
                    arr[mask] = moose[category][extra_name]
            name = alias_for[category]
        data, aff = _reorder(arr, affine, axis_order)
        path = Path(seg_dir) / study_uid / f"{name}.nii.gz"
        _save_nifti(data.astype(np.uint8), aff, path)
        out.append(path)
    return out


def write_lesion(phantom: Phantom, lesions_dir: Path, study_uid: str, *, axis_order: str = "native") -> Path:
    """Write the lesion mask as ``lesions_dir/<study_uid>.nii.gz`` (uint8 0/1 on the CT grid)."""
    data, aff = _reorder(phantom.lesion.astype(np.uint8), phantom.ct_geometry.affine_ras(), axis_order)
    path = Path(lesions_dir) / f"{study_uid}.nii.gz"
    _save_nifti(data, aff, path)
    return path


# ---------------------------------------------------------------------------
# demo sites


@dataclass(frozen=True)
class _SitePlan:
    id: str
    vendor: Vendor
    prefix: str
    deface: bool
    license: str
    indication: str
    pattern: str
    moose_names: bool
    axis_order: str
    lesions: bool


_SITES = (
    _SitePlan("leipzig", Vendor.SIEMENS, "LEI", True, "CC-BY-4.0", "lung cancer", r"^LEI-\d{4}$", False,
              "native", True),
    _SitePlan("vienna", Vendor.PHILIPS, "VIE", True, "CC-BY-NC-4.0", "head and neck cancer", r"^VIE-\d{4}$", True,
              "flipped", True),
    _SitePlan("boston", Vendor.GE, "BOS", False, "CC-BY-4.0", "lymphoma", "", False, "permuted", False),
)

#: per site, the extra (non-good) studies of the demo: (defect, plant_phi)
_EXTRA_STUDIES = {
    "leipzig": [("missing-pet-slice", False)],
    "vienna": [("frame-of-reference-mismatch", False), (None, True)],
    "boston": [("nac-only", False), ("gantry-tilt", False)],
}


#: what the pipeline must make of each kind of demo study (a RejectReason value, or "case")
EXPECTED_REASON: dict[str, str] = {
    "missing-pet-slice": "missing-slices",
    "frame-of-reference-mismatch": "frame-of-reference-mismatch",
    "nac-only": "no-ac-pet",
    "gantry-tilt": "gantry-tilt",
    "non-uniform-spacing": "non-uniform-spacing",
    "plant-phi": "phi-detected",
}
MANIFEST_NAME = "phantom_manifest.json"


def read_manifest(config_path: Path) -> dict[str, list[dict[str, object]]]:
    """The manifest :func:`write_demo_sites` wrote beside ``release.toml``.

    Site id -> one entry per study: StudyInstanceUID, PatientID, vendor, defect,
    plant_phi, feet_first, decoys and ``expected`` (``"case"`` or the reason code
    the study must be rejected with).
    """
    return json.loads((Path(config_path).parent / MANIFEST_NAME).read_text("utf-8"))


def write_demo_sites(out_dir: Path, *, cases_per_site: int = 2, seed: int = 0, size: str = "demo") -> Path:
    """Write three phantom sites and their ``release.toml``; return the config path.

    Sites: ``leipzig`` (Siemens style, defaced, release category file names),
    ``vienna`` (Philips style, defaced, MOOSE file names and values in flipped
    axis order, a clinical sheet overriding one study's indication, one study
    with planted identifiers) and ``boston`` (GE style, not defaced, permuted
    axis order, no lesion folder).  Each has ``cases_per_site`` good studies;
    the first good study of every site carries the decoys; leipzig's last good
    study is scanned feet first.  Rejected studies: a missing PET slice
    (leipzig), a frame-of-reference mismatch (vienna), NAC-only and a gantry
    tilt (boston).

    Layout under ``out_dir``: ``drops/<site>/``, ``seg/<site>/<uid>/``,
    ``lesions/<site>/<uid>.nii.gz``, ``clinical/vienna.csv``,
    ``release.toml`` (relative paths, state_dir ``.petct``, output_dir ``dist``)
    and ``phantom_manifest.json`` (what each study must become, see
    :func:`read_manifest`; it is not part of any site's delivery).
    """
    if cases_per_site < 1:
        raise ValueError(f"write_demo_sites: cases_per_site {cases_per_site!r} must be at least 1")
    out_dir = Path(out_dir)
    phantoms: dict[tuple[int, bool], Phantom] = {}

    def phantom_for(phantom_seed: int, feet_first: bool) -> Phantom:
        key = (phantom_seed, feet_first)
        if key not in phantoms:
            phantoms[key] = make_phantom(size=size, seed=phantom_seed, feet_first=feet_first)
        return phantoms[key]

    manifest: dict[str, list[dict[str, object]]] = {}
    sheet_rows: list[tuple[str, str]] = []
    site_blocks: list[str] = []
    for s, plan in enumerate(_SITES):
        drop = out_dir / "drops" / plan.id
        studies = [(None, False, n == cases_per_site - 1 and plan.id == "leipzig") for n in range(cases_per_site)]
        studies += [(defect, phi, False) for defect, phi in _EXTRA_STUDIES[plan.id]]
        for n, (defect, phi, feet_first) in enumerate(studies):
            study_seed = seed * 1000 + s * 100 + n
            good = defect is None and not phi
            # studies that never become cases share one phantom, which keeps the demo quick
            phantom = phantom_for(study_seed if good else seed * 1000 + 999, feet_first)
            patient_id = f"{plan.prefix}-{n + 1:04d}" if plan.pattern else f"{plan.prefix}{n + 1:04d}"
            files = write_study(phantom, drop, vendor=plan.vendor, seed=study_seed, patient_id=patient_id,
                                patient_name=patient_id, decoys=(n == 0), defect=defect, plant_phi=phi)
            manifest.setdefault(plan.id, []).append({
                "StudyInstanceUID": files.StudyInstanceUID,
                "PatientID": patient_id,
                "vendor": plan.vendor.value,
                "defect": defect,
                "plant_phi": phi,
                "feet_first": feet_first,
                "decoys": n == 0,
                "expected": "case" if good else EXPECTED_REASON[defect or "plant-phi"],
            })
            uid = files.StudyInstanceUID
            write_segmentations(phantom, out_dir / "seg" / plan.id, uid, axis_order=plan.axis_order,
                                moose_names=plan.moose_names)
            if plan.lesions:
                write_lesion(phantom, out_dir / "lesions" / plan.id, uid, axis_order=plan.axis_order)
            if plan.id == "vienna" and n == 0:
                sheet_rows.append((uid, "melanoma"))
        sheet = ""
        if plan.id == "vienna":
            sheet = "clinical/vienna.csv"
            lines = ["StudyInstanceUID,indication"] + [f"{u},{ind}" for u, ind in sheet_rows]
            atomic_write_text(out_dir / sheet, "\n".join(lines) + "\n")
        site_blocks.append(
            "\n".join([
                "[[site]]",
                f'id = "{plan.id}"',
                f'dicom_dir = "drops/{plan.id}"',
                f'segmentations_dir = "seg/{plan.id}"',
                f'lesions_dir = "{f"lesions/{plan.id}" if plan.lesions else ""}"',
                f'license = "{plan.license}"',
                f"deface = {'true' if plan.deface else 'false'}",
                f'indication = "{plan.indication}"',
                f'clinical_sheet = "{sheet}"',
                f"pseudonym_pattern = '{plan.pattern}'",
                'deface_missing_head = "hold"',
            ])
        )
    config = "\n".join([
        "# written by curation.synthetic.write_demo_sites (phantom sites)",
        "[release]",
        'name = "enhance-pet-demo"',
        'version = "1.0.0"',
        'output_dir = "dist"',
        'state_dir = ".petct"',
        'labels = "builtin:enhance-pet"',
        "",
        "[defacing]",
        "height_voxels = 16",
        "margin_mm = 5.0",
        "clear_labels = true",
        "",
        "[execution]",
        'runner = "threads"',
        "workers = 2",
        'dask_address = ""',
        "",
        "[schedule]",
        'build_cron = "0 2 * * 1"',
        "",
        "\n\n".join(site_blocks),
        "",
    ])
    path = out_dir / "release.toml"
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    atomic_write_text(path, config)
    logger.info("wrote 3 phantom sites under %s", out_dir)
    return path


# ---------------------------------------------------------------------------
# extra ingest defects (added by the ingest helper for tests/curation/test_ingest.py)

#: Defects :func:`add_ingest_defect` plants into a study :func:`write_study` already wrote.
INGEST_DEFECTS: tuple[str, ...] = ("inconsistent-orientation", "second-ct-series", "short-ct-pixel-data")


def add_ingest_defect(study: StudyFiles, defect: str) -> StudyFiles:
    """Damage a written study in place so that ingest must reject it.

    ``inconsistent-orientation``: the middle CT slice is rotated 10 degrees in
    plane (same normal, other ImageOrientationPatient).  ``second-ct-series``:
    a second diagnostic CT series on the same frame of reference (a copy with
    its own UIDs, role ``ct2``), so the case is ambiguous.
    ``short-ct-pixel-data``: the middle CT slice keeps a well-formed file but
    its PixelData holds half the pixels Rows x Columns needs.

    Returns
    -------
    StudyFiles
        ``study`` with ``files`` and ``defect`` updated.
    """
    import pydicom

    if defect not in INGEST_DEFECTS:
        raise ValueError(f"add_ingest_defect: defect {defect!r} is not one of {', '.join(INGEST_DEFECTS)}")
    files = dict(study.files)
    ct_paths = study.files["ct"]
    middle = ct_paths[len(ct_paths) // 2]
    if defect == "inconsistent-orientation":
        ds = pydicom.dcmread(middle)
        angle = np.deg2rad(10.0)
        row = [np.cos(angle), np.sin(angle), 0.0]
        col = [-np.sin(angle), np.cos(angle), 0.0]
        ds.ImageOrientationPatient = [_ds_str(float(v)) for v in (*row, *col)]
        _write_file(middle, _dicom_bytes(ds))
    elif defect == "short-ct-pixel-data":
        ds = pydicom.dcmread(middle)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        _write_file(middle, _dicom_bytes(ds))
    else:
        series_uid = _uid(study.StudyInstanceUID, "second ct")
        copies = []
        for k, path in enumerate(ct_paths):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 9
            ds.SeriesDescription = "CT WB 2.0 recon"
            ds.SOPInstanceUID = _uid(study.StudyInstanceUID, series_uid, k)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            copy = path.with_name(f"{_hexname(16, series_uid, k)}")
            _write_file(copy, _dicom_bytes(ds))
            copies.append(copy)
        files["ct2"] = tuple(copies)
    return dataclasses.replace(study, files=files, defect=defect)
