"""The phantom's body: a whole-body-ish PET/CT phantom on its CT and PET grids.

A phantom lies supine in DICOM patient coordinates (LPS, mm): a head (scalp,
face, skull shell, brain, eyes, a nose sticking out in front of the skull), a
neck with trachea and thyroid, a torso with lungs, heart, aorta, liver,
spleen, stomach, kidneys, spine, ribs, back muscles and fat, a pelvis, arms
raised beside the head (separated from it by air) and a hot lesion in the
right lung.  The anatomy is a fixed function of the position in millimetres;
only the lesion position and the noise depend on the seed.  Every volume is
sampled at the voxel centres of its own grid, so a feet-first phantom has its
head at the same patient coordinates as a head-first one and the PET and CT
grids (different spacing, origin and extent) describe the same body.

Conventions: volume arrays are indexed ``[i, j, k] = [column, row, slice]``,
slice ``k`` increasing along the slice normal (row direction x column
direction), so ``PhantomGeometry.origin`` is the ImagePositionPatient of the
first slice in that spatial order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from curation.model import CATEGORIES

__all__ = [
    "AIR_HU",
    "BONE_HU",
    "LANDMARKS",
    "RESCALE_INTERCEPT",
    "SIZES",
    "Phantom",
    "PhantomGeometry",
    "make_phantom",
    "release_label_table",
]

AIR_HU = -1000
BONE_HU = 700
RESCALE_INTERCEPT = -1024
_HFS_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# feet-first supine: the patient is turned end over end, so image columns run to patient right
_FFS_ORIENTATION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class PhantomGeometry:
    """One image grid in DICOM patient coordinates (LPS, mm).

    Attributes
    ----------
    rows, columns, slices
        The grid size: DICOM Rows and Columns, and the number of slices.
    pixel_spacing
        DICOM PixelSpacing: (row spacing, column spacing), i.e. the distance
        between rows (along the column direction) first.
    slice_spacing
        The distance between neighbouring slice centres along the normal.
    origin
        ImagePositionPatient of the first slice in spatial order.
    orientation
        DICOM ImageOrientationPatient: row direction, then column direction.
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
        """The direction of increasing column index (along a row), a unit vector."""
        return np.asarray(self.orientation[:3], dtype=float)

    @property
    def column_direction(self) -> np.ndarray:
        """The direction of increasing row index (down a column), a unit vector."""
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
        """ImagePositionPatient of one slice.

        Parameters
        ----------
        k
            The slice index in spatial order (along the normal).

        Returns
        -------
        tuple[float, float, float]
            The LPS position of the slice's first voxel centre, in mm.
        """
        p = np.asarray(self.origin) + k * self.slice_spacing * self.normal
        return (float(p[0]), float(p[1]), float(p[2]))

    def slice_points(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates of the voxel centres of one slice.

        Parameters
        ----------
        k
            The slice index in spatial order (along the normal).

        Returns
        -------
        tuple[np.ndarray, np.ndarray, np.ndarray]
            x, y and z in mm, each of shape ``(columns, rows)``.
        """
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


#: The landmark masks of a phantom made with labels (``Phantom.landmarks``).
LANDMARKS: tuple[str, ...] = ("brain", "skull", "eyes", "nose", "arms", "head_outline")


def release_label_table() -> dict[str, dict[str, int]]:
    """The release label values by name, from ``curation/data/enhance_pet_labels.json``.

    Returns
    -------
    dict[str, dict[str, int]]
        Release category -> {label name: release value}.
    """
    raw = json.loads(resources.files("curation").joinpath("data/enhance_pet_labels.json").read_text("utf-8"))
    return {cat: {name: int(value) for value, name in labels.items()} for cat, labels in raw.items()}


# ---------------------------------------------------------------------------
# the phantom


@dataclass(frozen=True, eq=False)
class Phantom:
    """A phantom on its CT and PET grids (arrays indexed [column, row, slice]).

    Every array is read-only (phantoms are shared between tests): copy before
    changing one.  ``lesion``, ``labels``, ``landmarks`` and ``extra_labels``
    are empty when the phantom was made with ``with_labels=False``.

    Attributes
    ----------
    ct_geometry, pt_geometry
        The CT and PET grids.
    ct_hu
        CT values in HU (int16), CT grid.
    pt_bqml
        PET activity concentration in Bq/ml (float32), PET grid.
    labels
        Release category -> uint8 label map with release values, CT grid.
    lesion
        The lesion mask (bool), CT grid.
    landmarks
        Landmark name (see :data:`LANDMARKS`) -> bool mask on the CT grid.
    extra_labels
        Labels outside the release set (e.g. ``"trachea"``) -> bool mask on
        the CT grid.
    size, seed, feet_first
        The arguments of :func:`make_phantom`.
    lesion_centre
        LPS centre of the lesion in mm (jittered by the seed).
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
        """DICOM PatientPosition: ``"FFS"`` for a feet-first phantom, else ``"HFS"``."""
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

    Returns
    -------
    Phantom
        The phantom, every array read-only.

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
