"""Defacing of a PET/CT case with a cylinder along world z (README, section "Defacing").

The cylinder is planned once, in NIfTI world (RAS+) millimetres, from the brain
and skull landmarks on the CT grid, and then applied to every grid of the case
(CT, PET and the label maps) through each grid's own affine.  Nothing here
assumes an axis order, a flip, a spacing or an origin: a voxel is judged by the
world position of its centre, so the same anatomy is defaced whether the scan
was head-first or feet-first and whatever order the converter wrote the axes in.

Geometry (all in world mm)
--------------------------
* ``z_lo``: the world z of the most inferior brain voxel centre.
* ``z_hi = min(z_lo + height_voxels * dz_PET, z of the most superior skull voxel
  centre)``, where ``dz_PET`` is the distance along world z between two
  neighbouring PET slices (from the PET affine).
* Axis: parallel to z, through the mean (x, y) of the skull voxel centres with
  ``z_lo <= z <= z_hi``.
* Radius: the largest in-plane distance from the axis of any *head* voxel
  centre in that slab, plus ``margin_mm``.  The head is, in each axial CT slice
  of the slab, the union of the 2-D connected pieces (8-connectivity) of the
  body outline (CT > -500 HU, or skull) that contain a skull voxel: the nose,
  ears and skin in front of the bone belong to it, a raised arm or hand beside
  the head (a separate piece of the outline) does not.

A voxel is *inside* when its centre satisfies ``z_lo <= z <= z_hi`` and lies at
in-plane distance ``<= radius`` from the axis.  All three bounds are inclusive,
with a tolerance of :data:`TOLERANCE_MM` so that floating-point round-off never
drops the landmark voxels that define the bounds.

Axial slices are the CT's index planes along the voxel axis closest to world z.
For the axis-aligned grids ingest lets through (any permutation and flip of the
axes, rotations about z) these are exactly the planes of constant world z; a
grid tilted against z is rejected upstream as gantry tilt.  The inside test
itself uses exact world coordinates for any affine.

Cost: planning reads only the CT planes of the slab (plus one pass over each
landmark mask to find its extreme planes), and applying evaluates only the
index box around the cylinder on each grid; for a 512x512x320 CT the two
together take a small fraction of the conversion (``benchmarks/deface_cost.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from curation.errors import HeadNotFoundError
from curation.model import DefaceCylinder, Landmarks

logger = logging.getLogger(__name__)

#: Body outline threshold (HU): the head is the part of ``CT > BODY_HU`` connected to the skull.
BODY_HU = -500.0
#: Value written into CT voxels inside the cylinder (air).
CT_FILL_HU = -1000
#: Value written into PET voxels inside the cylinder.
PET_FILL = 0.0
#: Round-off tolerance (mm) on the three inclusive bounds of "inside".
TOLERANCE_MM = 1e-3
#: Least half side (mm) of the head cube kept and shown for review around a cylinder (:func:`review_half`).
REVIEW_HALF_MM = 160.0

# CT-only fallback (used when the brain or skull segmentation is missing or empty)
#: Bone threshold (HU) for the skull candidates.
FALLBACK_BONE_HU = 300.0
#: Soft tissue range (HU) that counts as brain when enclosed by the skull.
FALLBACK_SOFT_TISSUE_HU = (-50.0, 100.0)
#: The skull is searched for in this many mm below the most superior slice of the scan.
FALLBACK_SEARCH_MM = 400.0
#: A skull candidate must enclose at least this much soft tissue (mL) ...
FALLBACK_MIN_BRAIN_ML = 150.0
#: ... and soft tissue must make up at least this fraction of what it encloses
#: (a closed rib cage encloses air-filled lungs, a skull encloses the brain).
FALLBACK_MIN_SOFT_FRACTION = 0.6
#: Number of the largest bone components tried as the skull.
FALLBACK_CANDIDATES = 5


@dataclass(frozen=True)
class DefacedVolumes:
    """The defaced arrays of one case (new arrays; the inputs are left untouched).

    Attributes
    ----------
    ct, pt
        The CT (HU) and PET arrays on their own grids, same dtype as read.
    labels
        Category -> label map on the CT grid (cleared inside when ``clear_labels``).
    ct_voxels, pt_voxels
        Number of CT / PET voxels whose centre is inside the cylinder.
    label_voxels_cleared
        Category -> number of non-zero label voxels set to 0.
    """

    ct: np.ndarray
    pt: np.ndarray
    labels: dict[str, np.ndarray]
    ct_voxels: int
    pt_voxels: int
    label_voxels_cleared: dict[str, int]


# ---------------------------------------------------------------------------
# public API


def plan_cylinder(
    ct: nib.Nifti1Image,
    pt: nib.Nifti1Image,
    brain: np.ndarray | None,
    skull: np.ndarray | None,
    *,
    height_voxels: int = 16,
    margin_mm: float = 5.0,
) -> DefaceCylinder:
    """Plan the defacing cylinder of one case in world (RAS+) millimetres.

    Parameters
    ----------
    ct, pt
        The converted CT (HU) and PET images of the case (same frame of reference).
    brain, skull
        Boolean masks on the CT grid (Organs ``brain``, Peripheral-Bones ``skull``).
        When either is ``None`` or empty, the CT-only fallback
        (:func:`ct_fallback_landmarks`) finds both from the CT.
    height_voxels
        Cylinder height in PET slice spacings along world z.
    margin_mm
        Added to the radius of the head.

    Returns
    -------
    DefaceCylinder
        ``landmarks`` is ``"segmentation"`` or ``"ct-fallback"``.

    Raises
    ------
    ValueError
        A mask does not have the CT grid's shape, or an option is out of range.
    HeadNotFoundError
        No head could be located in the scan (the message says what was missing).
    """
    if isinstance(height_voxels, bool) or not isinstance(height_voxels, int) or height_voxels < 1:
        raise ValueError(f"height_voxels must be a positive integer, not {height_voxels!r}")
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"margin_mm must be a finite number >= 0, not {margin_mm!r}")
    _check_3d(ct, "CT")
    _check_3d(pt, "PET")
    hu = ct.dataobj  # only the slab is read (a lazily read image inflates only its planes)
    if brain is not None:
        brain = _check_mask(brain, hu.shape, "brain")
    if skull is not None:
        skull = _check_mask(skull, hu.shape, "skull")
    source = Landmarks.SEGMENTATION
    if brain is None or skull is None or not brain.any() or not skull.any():
        missing = [n for n, m in (("brain", brain), ("skull", skull)) if m is None or not np.any(m)]
        logger.info(
            "%s: no %s segmentation, using the CT-only fallback", _name(ct), " and ".join(missing)
        )
        brain, skull = ct_fallback_landmarks(ct)
        source = Landmarks.CT_FALLBACK

    affine = np.asarray(ct.affine, dtype=float)
    z_axis = _z_axis(affine)
    z_lo = _extreme_z(brain, affine, z_axis, lowest=True)
    skull_top = _extreme_z(skull, affine, z_axis, lowest=False)
    if skull_top < z_lo - TOLERANCE_MM:
        raise HeadNotFoundError(
            f"{_name(ct)}: the skull ends at z = {skull_top:.1f} mm, below the most inferior "
            f"brain voxel at z = {z_lo:.1f} mm; no head to deface"
        )
    z_hi = min(z_lo + height_voxels * pet_slice_spacing(pt.affine), skull_top)

    # everything else happens in the slab: the CT planes that reach [z_lo, z_hi]
    zmin, zmax = _plane_z_range(affine, hu.shape, z_axis)
    planes = np.flatnonzero((zmax >= z_lo - TOLERANCE_MM) & (zmin <= z_hi + TOLERANCE_MM))
    box = _plane_box(hu.shape, z_axis, int(planes.min()), int(planes.max()) + 1)
    # the slab, slices first and C-contiguous: the volume and the masks may come in different
    # memory orders (nibabel reads Fortran order), and mixing them costs 100x in numpy
    hu_slab = np.ascontiguousarray(np.moveaxis(np.asarray(hu[box]), z_axis, 0))
    skull_slab = np.ascontiguousarray(np.moveaxis(skull[box], z_axis, 0))
    x, y, z = (np.moveaxis(c, z_axis, 0) for c in _coords(affine, box))
    shape = skull_slab.shape
    in_z = (z >= z_lo - TOLERANCE_MM) & (z <= z_hi + TOLERANCE_MM)
    skull_in = skull_slab & in_z
    if not skull_in.any():
        raise HeadNotFoundError(
            f"{_name(ct)}: no skull voxel between z = {z_lo:.1f} mm (the brain's bottom) and "
            f"z = {z_hi:.1f} mm, the skull's top is at {skull_top:.1f} mm"
        )
    axis_x = float(np.broadcast_to(x, shape)[skull_in].mean())
    axis_y = float(np.broadcast_to(y, shape)[skull_in].mean())

    pieces = _label_per_slice((hu_slab > BODY_HU) | skull_slab, connectivity=2)
    head_ids = np.unique(pieces[skull_slab])
    is_head = np.zeros(int(pieces.max()) + 1, dtype=bool)  # a lookup per voxel (np.isin compares per id)
    is_head[head_ids[head_ids > 0]] = True
    head = is_head[pieces] & in_z
    if not head.any():
        raise HeadNotFoundError(
            f"{_name(ct)}: no body outline (CT > {BODY_HU:g} HU) connected to the skull between "
            f"z = {z_lo:.1f} and {z_hi:.1f} mm"
        )
    dist2 = (x - axis_x) ** 2 + (y - axis_y) ** 2
    reach = float(np.sqrt(np.broadcast_to(dist2, shape)[head].max()))
    cylinder = DefaceCylinder(
        z_lo=z_lo,
        z_hi=float(z_hi),
        axis_x=axis_x,
        axis_y=axis_y,
        radius=reach + float(margin_mm),
        landmarks=source,
    )
    logger.info(
        "%s: deface cylinder z %.1f..%.1f mm, axis (%.1f, %.1f) mm, radius %.1f mm (%s)",
        _name(ct),
        cylinder.z_lo,
        cylinder.z_hi,
        axis_x,
        axis_y,
        cylinder.radius,
        source,
    )
    return cylinder


def apply_cylinder(
    cylinder: DefaceCylinder,
    ct: nib.Nifti1Image,
    pt: nib.Nifti1Image,
    labels: Mapping[str, np.ndarray] | None = None,
    *,
    clear_labels: bool = True,
) -> DefacedVolumes:
    """Deface a case: CT inside -> -1000 HU, PET inside -> 0, labels inside -> 0.

    Parameters
    ----------
    cylinder
        From :func:`plan_cylinder` (or read back from the case's state).
    ct, pt
        The images to deface; they are not modified.
    labels
        Category -> label map on the CT grid (shape of the CT).
    clear_labels
        Clear the labels inside the cylinder (otherwise they are copied unchanged).

    Returns
    -------
    DefacedVolumes
        New arrays and the voxel counts.

    Raises
    ------
    ValueError
        A label map does not have the CT grid's shape.
    """
    _check_3d(ct, "CT")
    _check_3d(pt, "PET")
    ct_arr = np.array(np.asanyarray(ct.dataobj), copy=True)
    pt_arr = np.array(np.asanyarray(pt.dataobj), copy=True)
    label_arrs: dict[str, np.ndarray] = {}
    for category, arr in (labels or {}).items():
        arr = np.asanyarray(arr)
        if arr.shape != ct_arr.shape:
            raise ValueError(
                f"label map {category!r} has shape {arr.shape}, the CT grid is {ct_arr.shape}"
            )
        label_arrs[category] = np.array(arr, copy=True, order="K")  # keep NIfTI's Fortran order

    ct_voxels, _ = deface_array(cylinder, ct_arr, ct.affine, CT_FILL_HU)
    pt_voxels, _ = deface_array(cylinder, pt_arr, pt.affine, PET_FILL)
    cleared: dict[str, int] = {}
    for category, arr in label_arrs.items():
        cleared[category] = deface_array(cylinder, arr, ct.affine, 0)[1] if clear_labels else 0
    result = DefacedVolumes(
        ct=ct_arr,
        pt=pt_arr,
        labels=label_arrs,
        ct_voxels=ct_voxels,
        pt_voxels=pt_voxels,
        label_voxels_cleared=cleared,
    )
    logger.info(
        "%s: defaced %d CT and %d PET voxels, cleared %d label voxels",
        _name(ct),
        result.ct_voxels,
        result.pt_voxels,
        sum(cleared.values()),
    )
    return result


def deface_array(
    cylinder: DefaceCylinder, volume: np.ndarray, affine: np.ndarray, fill: float
) -> tuple[int, int]:
    """Set every voxel of ``volume`` whose centre is inside the cylinder to ``fill``, in place.

    Only the index box around the cylinder is read or written, so the cost
    follows the cylinder's size, not the volume's.

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    volume
        A writable 3-D array on the grid of ``affine`` (CT, PET or a label map).
    affine
        The grid's voxel -> world (RAS+) affine.
    fill
        The value written inside (:data:`CT_FILL_HU`, :data:`PET_FILL` or 0).

    Returns
    -------
    tuple of int
        The number of voxels inside, and how many of them were non-zero before.

    Raises
    ------
    ValueError
        When ``volume`` is not 3-D or not writable.
    """
    if volume.ndim != 3:
        raise ValueError(f"deface_array needs a 3-D volume, not shape {volume.shape}")
    if not volume.flags.writeable:
        raise ValueError("deface_array changes the volume in place: it must be writable")
    box, inside = _cylinder_box(cylinder, volume.shape, affine)
    return int(np.count_nonzero(inside)), _fill(volume[box], inside, fill)


def cylinder_planes(cylinder: DefaceCylinder, shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, int]:
    """The planes ``[start, stop)`` along a grid's last axis that :func:`deface_array` may change.

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    shape
        The grid's shape (3-D).
    affine
        The grid's voxel -> world (RAS+) affine.

    Returns
    -------
    tuple of int
        The index range of the cylinder's box along the last axis.
    """
    box, _ = _cylinder_box(cylinder, tuple(int(n) for n in shape), affine)
    return box[2].start, box[2].stop


def deface_planes(
    cylinder: DefaceCylinder, planes: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], first: int,
    fill: float,
) -> tuple[int, int]:
    """:func:`deface_array` on planes ``first:`` (last axis) of a volume of ``shape``, in place.

    The voxels inside are those of the whole volume, computed on its own grid
    (not on a shifted affine, whose rounding could move a voxel on the edge).

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    planes
        A writable 3-D array: the volume's planes ``first:first + planes.shape[2]``,
        holding every plane of :func:`cylinder_planes`.
    affine, shape
        The whole volume's affine and shape.
    first
        The index of ``planes``' first plane in the volume.
    fill
        The value written inside.

    Returns
    -------
    tuple of int
        The number of voxels inside, and how many of them were non-zero before.

    Raises
    ------
    ValueError
        When ``planes`` do not hold the cylinder's planes or are not writable.
    """
    box, inside = _cylinder_box(cylinder, tuple(int(n) for n in shape), affine)
    if planes.shape[:2] != tuple(shape[:2]) or box[2].start < first or box[2].stop > first + planes.shape[2]:
        raise ValueError(f"planes {first}:{first + planes.shape[2]} of shape {planes.shape} do not hold the "
                         f"cylinder's planes {box[2].start}:{box[2].stop} of a {tuple(shape)} volume")
    if not planes.flags.writeable:
        raise ValueError("deface_planes changes the planes in place: they must be writable")
    local = (box[0], box[1], slice(box[2].start - first, box[2].stop - first))
    return int(np.count_nonzero(inside)), _fill(planes[local], inside, fill)


def cylinder_values(cylinder: DefaceCylinder, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The values of the voxels of ``volume`` whose centre is inside the cylinder (only its box is read).

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    volume
        A 3-D array on the grid of ``affine``.
    affine
        The grid's voxel -> world (RAS+) affine.

    Returns
    -------
    numpy.ndarray
        1-D, in the order of :func:`cylinder_mask`'s voxels; empty when the
        cylinder holds no voxel of the grid.

    Raises
    ------
    ValueError
        When ``volume`` is not 3-D.
    """
    if volume.ndim != 3:
        raise ValueError(f"cylinder_values needs a 3-D volume, not shape {volume.shape}")
    box, inside = _cylinder_box(cylinder, volume.shape, affine)
    return np.asarray(volume[box])[inside]


def cylinder_mask(
    cylinder: DefaceCylinder, shape: tuple[int, ...], affine: np.ndarray
) -> np.ndarray:
    """Boolean mask of the voxels of a grid whose centre is inside the cylinder.

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    shape
        The grid's shape (3-D).
    affine
        The grid's voxel -> world (RAS+) affine.

    Returns
    -------
    numpy.ndarray
        ``bool`` array of ``shape``.

    Raises
    ------
    ValueError
        When ``shape`` is not 3-D.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"cylinder_mask needs a 3-D grid shape, not {shape}")
    mask = np.zeros(shape, dtype=bool)
    box, inside = _cylinder_box(cylinder, shape, affine)
    mask[box] = inside
    return mask


def pet_slice_spacing(affine: np.ndarray) -> float:
    """Distance (mm) along world z between two neighbouring slices of a grid.

    The slice axis is the voxel axis whose direction is closest to world z;
    the result does not depend on the axis order or on flips.

    Parameters
    ----------
    affine
        The grid's voxel -> world (RAS+) affine (4 x 4).

    Returns
    -------
    float
        The spacing in mm, positive.

    Raises
    ------
    ValueError
        When the grid has no extent along world z.
    """
    affine = np.asarray(affine, dtype=float)
    z_axis = _z_axis(affine)
    spacing = abs(float(affine[2, z_axis]))
    if spacing <= 0:
        raise ValueError(f"the grid has no extent along world z (affine {affine.tolist()})")
    return spacing


def landmark_masks(
    labels: Mapping[str, np.ndarray],
    label_names: Mapping[str, Mapping[int, str]] | Mapping[str, Mapping[str, str]],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The brain and skull masks from a case's release label maps, by label name.

    Parameters
    ----------
    labels
        Category -> uint8 label map on the CT grid.
    label_names
        The release label table (``labels.json`` form: category -> value -> name).

    Returns
    -------
    tuple
        ``(brain, skull)``; an entry is ``None`` when its category or label is absent.
    """
    found: list[np.ndarray | None] = []
    for category, name in (("Organs", "brain"), ("Peripheral-Bones", "skull")):
        values = [int(v) for v, n in label_names.get(category, {}).items() if n == name]
        arr = labels.get(category)
        if arr is None or not values:
            found.append(None)
        else:
            found.append(_label_mask(np.asanyarray(arr), values))
    return found[0], found[1]


#: Planes of a label map compared at once by :func:`_label_mask` (its scratch memory).
MASK_BLOCK_PLANES = 8


def _label_mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``labels`` is one of ``values``, as a boolean mask written only in the planes that hold one.

    The mask starts as untouched zero memory and the map is compared a block
    of planes at a time, so a landmark that fills a tenth of the scan (the
    brain, the skull) costs a tenth of a CT-sized mask in fresh memory, not
    all of it.  Planes are taken along the axis the map's memory runs slowest
    on (the last for a NIfTI's Fortran order), so every block is one run of memory.
    """
    fortran = labels.flags.f_contiguous and not labels.flags.c_contiguous
    mask = np.zeros(labels.shape, dtype=bool, order="F" if fortran else "C")
    # the slowest axis first: the transpose of a Fortran-ordered array is C-ordered
    planes_of, mask_planes = (labels.T, mask.T) if fortran else (labels, mask)
    lut = None
    if len(values) > 2:  # a lookup table: one byte-sized pass (np.isin sorts)
        lut = np.zeros(max(256, max(values) + 1), dtype=bool)
        lut[list(values)] = True
    # two scratch blocks used for every block: a fresh temporary per block would be
    # fresh memory each time (2 ms per MB on a virtual machine's first touch)
    scratch = np.empty((2, min(MASK_BLOCK_PLANES, len(planes_of)), *planes_of.shape[1:]), dtype=bool)
    for start in range(0, len(planes_of), MASK_BLOCK_PLANES):
        block = planes_of[start : start + MASK_BLOCK_PLANES]
        hit, other = scratch[0, : len(block)], scratch[1, : len(block)]
        if lut is not None:
            np.take(lut, block, out=hit)
        else:  # the usual one value: a comparison is 8x faster than a gather
            np.equal(block, values[0], out=hit)
            for value in values[1:]:
                hit |= np.equal(block, value, out=other)
        if hit.any():
            mask_planes[start : start + MASK_BLOCK_PLANES] = hit
    return mask


def ct_fallback_landmarks(ct: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Find the skull and the brain from the CT alone (scikit-image).

    The skull is the largest 3-D connected bone component (CT >= FALLBACK_BONE_HU)
    in the top FALLBACK_SEARCH_MM of the scan that encloses soft tissue in its
    axial slices (holes of the bone in a slice that do not reach the slice's
    border); the brain is the largest 3-D connected piece of that enclosed soft
    tissue.  A candidate must enclose at least FALLBACK_MIN_BRAIN_ML of soft
    tissue making up at least FALLBACK_MIN_SOFT_FRACTION of the enclosed volume,
    which turns away a rib cage (it encloses the lungs) and long bones.

    Parameters
    ----------
    ct
        The converted CT (HU), 3-D.

    Returns
    -------
    tuple of numpy.ndarray
        ``(brain, skull)`` boolean masks on the CT grid.

    Raises
    ------
    HeadNotFoundError
        No bone component in the upper part of the scan encloses a brain.
    ValueError
        When the CT is not 3-D.
    """
    _check_3d(ct, "CT")
    hu = np.asanyarray(ct.dataobj)
    affine = np.asarray(ct.affine, dtype=float)
    z_axis = _z_axis(affine)
    hu_z = np.moveaxis(hu, z_axis, 0)  # a view: slices first
    plane_z = _plane_centre_z(affine, hu.shape, z_axis)
    top = plane_z.max()
    planes = np.flatnonzero(plane_z >= top - FALLBACK_SEARCH_MM)
    s0, s1 = int(planes.min()), int(planes.max()) + 1
    upper = np.ascontiguousarray(hu_z[s0:s1])  # slices first, one memory order from here on
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0

    from skimage import measure

    bone_labels = measure.label(upper >= FALLBACK_BONE_HU, connectivity=3)
    # region sizes from their bounding boxes (a bincount over the whole block costs seconds)
    regions = sorted(measure.regionprops(bone_labels), key=lambda r: r.area, reverse=True)
    lo, hi = FALLBACK_SOFT_TISSUE_HU
    tried: list[str] = []
    for region in regions[:FALLBACK_CANDIDATES]:
        label = region.label
        # the candidate's bounding box, one voxel wider in-plane so its outside touches the border
        along, *in_plane = region.slice
        box = (
            along,
            *(
                slice(max(part.start - 1, 0), min(part.stop + 1, n))
                for part, n in zip(in_plane, upper.shape[1:], strict=True)
            ),
        )
        bone = bone_labels[box] == label
        holes = _holes_per_slice(bone)
        enclosed = int(np.count_nonzero(holes))
        soft = holes & (upper[box] >= lo) & (upper[box] <= hi)
        brain_box = _largest_component(soft)
        brain_ml = np.count_nonzero(brain_box) * voxel_ml
        fraction = np.count_nonzero(soft) / enclosed if enclosed else 0.0
        tried.append(
            f"{region.area * voxel_ml:.0f} mL of bone enclosing {brain_ml:.0f} mL of "
            f"soft tissue ({fraction:.0%} of the enclosed volume)"
        )
        if brain_ml < FALLBACK_MIN_BRAIN_ML or fraction < FALLBACK_MIN_SOFT_FRACTION:
            continue
        brain = np.zeros(hu.shape, dtype=bool)
        skull = np.zeros(hu.shape, dtype=bool)
        np.moveaxis(brain, z_axis, 0)[s0:s1][box] = brain_box
        np.moveaxis(skull, z_axis, 0)[s0:s1][box] = bone
        logger.info("%s: CT-only fallback found the skull (%s)", _name(ct), tried[-1])
        return brain, skull
    evidence = "; ".join(tried) if tried else "no bone at all"
    raise HeadNotFoundError(
        f"{_name(ct)}: no skull enclosing a brain in the top {FALLBACK_SEARCH_MM:g} mm of the scan "
        f"(bone >= {FALLBACK_BONE_HU:g} HU enclosing >= {FALLBACK_MIN_BRAIN_ML:g} mL of soft tissue, "
        f">= {FALLBACK_MIN_SOFT_FRACTION:.0%} of the enclosed volume); largest bone components: {evidence}"
    )


# ---------------------------------------------------------------------------
# geometry helpers


def _coords(
    affine: np.ndarray, box: tuple[slice, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World x, y and z of the voxel centres of an index box.

    Each is an array that broadcasts to the box's shape and keeps length 1 along
    the voxel axes it does not depend on: for the usual axis-aligned grid x, y
    and z are 1-D, so a test over the box costs one pass over its voxels.
    """
    index = []
    for axis, part in enumerate(box):
        shape = [1, 1, 1]
        shape[axis] = part.stop - part.start
        index.append(np.arange(part.start, part.stop, dtype=float).reshape(shape))
    coords = []
    for row in range(3):
        value = np.full((1, 1, 1), affine[row, 3])
        for axis in range(3):
            if affine[row, axis] != 0.0:
                value = value + affine[row, axis] * index[axis]
        coords.append(value)
    return coords[0], coords[1], coords[2]


def _plane_box(shape: tuple[int, ...], z_axis: int, start: int, stop: int) -> tuple[slice, ...]:
    """The index box of the planes ``start:stop`` along ``z_axis``."""
    box = [slice(0, n) for n in shape]
    box[z_axis] = slice(start, stop)
    return tuple(box)


def _extreme_z(mask: np.ndarray, affine: np.ndarray, z_axis: int, *, lowest: bool) -> float:
    """World z of the most inferior (``lowest``) or most superior voxel centre of a non-empty mask.

    Only the planes that can hold the extreme are looked at (one plane for an
    axis-aligned grid).
    """
    planes = np.flatnonzero(np.moveaxis(mask, z_axis, 0).any(axis=(1, 2)))
    zmin, zmax = _plane_z_range(affine, mask.shape, z_axis)
    if lowest:
        planes = planes[zmin[planes] <= zmax[planes].min()]
    else:
        planes = planes[zmax[planes] >= zmin[planes].max()]
    box = _plane_box(mask.shape, z_axis, int(planes.min()), int(planes.max()) + 1)
    part = mask[box]
    z = np.broadcast_to(_coords(affine, box)[2], part.shape)[part]
    return float(z.min() if lowest else z.max())


def _index_box(
    ranges: tuple[tuple[float, float], ...], shape: tuple[int, ...], affine: np.ndarray
) -> tuple[slice, ...]:
    """Index box of a grid holding the world box ``ranges`` ((lo, hi) in x, y, z), one voxel more, clipped."""
    corners = np.array([[x, y, z, 1.0] for x in ranges[0] for y in ranges[1] for z in ranges[2]]).T
    ijk = (np.linalg.inv(np.asarray(affine, dtype=float)) @ corners)[:3]
    lo = np.maximum(np.floor(ijk.min(axis=1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, np.asarray(shape) - 1)
    return tuple(slice(int(a), int(max(b + 1, a))) for a, b in zip(lo, hi, strict=True))


def _cylinder_box(
    cylinder: DefaceCylinder, shape: tuple[int, ...], affine: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Index box of a grid around the cylinder and the inside mask within it.

    Only the box (the cylinder's world bounding box mapped into index space) is
    evaluated, so the cost follows the size of the cylinder, not of the volume.
    """
    affine = np.asarray(affine, dtype=float)
    r = cylinder.radius
    box = _index_box(
        ((cylinder.axis_x - r, cylinder.axis_x + r), (cylinder.axis_y - r, cylinder.axis_y + r),
         (cylinder.z_lo, cylinder.z_hi)),
        shape, affine,
    )
    x, y, z = _coords(affine, box)
    in_z = (z >= cylinder.z_lo - TOLERANCE_MM) & (z <= cylinder.z_hi + TOLERANCE_MM)
    in_disc = (x - cylinder.axis_x) ** 2 + (y - cylinder.axis_y) ** 2 <= (
        cylinder.radius + TOLERANCE_MM
    ) ** 2
    inside = np.broadcast_to(in_z & in_disc, tuple(b.stop - b.start for b in box))
    return box, inside


def review_half(cylinder: DefaceCylinder) -> float:
    """Half the side (mm) of the head cube kept and shown for review around a cylinder.

    At least :data:`REVIEW_HALF_MM`, and 20 mm beyond the cylinder in every
    direction, so the whole cut and what surrounds it are in view.
    """
    return max(REVIEW_HALF_MM, cylinder.radius + 20.0, (cylinder.z_hi - cylinder.z_lo) / 2 + 20.0)


def review_box(cylinder: DefaceCylinder, shape: tuple[int, ...], affine: np.ndarray) -> tuple[slice, ...]:
    """Index box of the head cube around the cylinder on a grid (clipped to the grid).

    The cube is centred on the cylinder's axis at mid-height, with half side
    :func:`review_half`.  Prepare keeps the converted CT's voxels of this box
    before it defaces them, so the QC pictures can show the head before and
    after without inflating the whole converted CT again; every voxel the
    defacing changes lies inside it.

    Parameters
    ----------
    cylinder
        The cylinder in world (RAS+) mm.
    shape
        The grid's shape.
    affine
        The grid's voxel -> world (RAS+) affine.

    Returns
    -------
    tuple of slice
        One slice per axis, in the grid's own axis order.
    """
    half = review_half(cylinder)
    z = (cylinder.z_lo + cylinder.z_hi) / 2
    ranges = ((cylinder.axis_x - half, cylinder.axis_x + half), (cylinder.axis_y - half, cylinder.axis_y + half),
              (z - half, z + half))
    return _index_box(ranges, shape, affine)


def _z_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to world z."""
    columns = np.asarray(affine, dtype=float)[:3, :3]
    cosines = np.abs(columns[2]) / np.linalg.norm(columns, axis=0)
    return int(np.argmax(cosines))


def _plane_z_range(
    affine: np.ndarray, shape: tuple[int, ...], z_axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max world z of the voxel centres of each index plane along ``z_axis``."""
    affine = np.asarray(affine, dtype=float)
    base = affine[2, z_axis] * np.arange(shape[z_axis]) + affine[2, 3]
    spread_lo = spread_hi = 0.0
    for a in range(3):
        if a != z_axis:
            ends = (0.0, affine[2, a] * (shape[a] - 1))
            spread_lo += min(ends)
            spread_hi += max(ends)
    return base + spread_lo, base + spread_hi


def _plane_centre_z(affine: np.ndarray, shape: tuple[int, ...], z_axis: int) -> np.ndarray:
    lo, hi = _plane_z_range(affine, shape, z_axis)
    return (lo + hi) / 2.0


# ---------------------------------------------------------------------------
# image helpers


def _label_per_slice(mask: np.ndarray, *, connectivity: int) -> np.ndarray:
    """2-D connected components of every slice of ``mask`` (slices first), unique labels.

    The slices are stacked into one 2-D image with an empty row between
    neighbours, so a single labelling call never joins two slices.
    """
    n, rows, cols = mask.shape
    stacked = np.zeros((n, rows + 1, cols), dtype=bool)
    stacked[:, :rows] = mask
    # scikit-image is imported where it is used, not at the top: starting a flow does not need it
    from skimage import measure

    labels = measure.label(stacked.reshape(n * (rows + 1), cols), connectivity=connectivity)
    return labels.reshape(n, rows + 1, cols)[:, :rows]


def _holes_per_slice(solid: np.ndarray) -> np.ndarray:
    """Voxels of each slice (slices first) enclosed by ``solid`` in that slice."""
    background = _label_per_slice(~solid, connectivity=1)
    border = np.zeros(solid.shape, dtype=bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    outside = np.unique(background[border])
    return (background > 0) & ~np.isin(background, outside)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from skimage import measure

    labels = measure.label(mask, connectivity=1)
    if labels.max() == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill(view: np.ndarray, inside: np.ndarray, value: float) -> int:
    """Set ``view[inside] = value``; returns how many of those voxels were non-zero before.

    Element by element over the box (``inside`` broadcasts to ``view``), without
    gathering the voxels inside into a copy: ``view`` is a strided box of planes.
    """
    nonzero = int(np.count_nonzero(np.logical_and(view != 0, inside)))
    np.copyto(view, np.array(value).astype(view.dtype), where=inside)
    return nonzero


def _check_3d(img: nib.Nifti1Image, what: str) -> None:
    if len(img.shape) != 3:
        raise ValueError(f"{_name(img)}: the {what} image must be 3-D, its shape is {img.shape}")


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asanyarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"the {what} mask has shape {mask.shape}, the CT grid is {tuple(shape)}")
    return mask.astype(bool, copy=False)


def _name(img: nib.Nifti1Image) -> str:
    return img.get_filename() or "in-memory image"
