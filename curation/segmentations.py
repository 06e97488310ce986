"""Reading a site's segmentations and lesion masks onto the converted CT's grid.

A site delivers ``<segmentations_dir>/<StudyInstanceUID>/<name>.nii.gz`` with
one multi-class label map per release category.  ``<name>`` is the release
category (``Organs``) or its MOOSE model name (``clin_ct_organs``).

**What the values mean** follows from the site's source label table
(``[[site]] label_table``), never from the file name, which only picks the
category: every map's values are mapped to release values *by label name*
through that table.  Labels the release does not carry (MOOSE Organs 19
``trachea``) are set to 0 and counted; a value the table does not define is an
error (``segmentation-invalid``).  ``builtin:release`` is the table of a site
whose maps hold release values already.

**The grid**: a map must lie on the CT's voxel grid, i.e. have the same voxel
centres in world space within :data:`GRID_TOLERANCE_MM`.  A map stored in
another axis order (flipped or permuted axes) is the same grid: it is
reoriented losslessly to the CT's axis order.  Anything else (other spacing,
shift, rotation or extent) is rejected; nothing is ever resampled.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from curation.errors import (
    SegmentationGridMismatchError,
    SegmentationInvalidError,
    SegmentationMissingError,
)
from curation.labels import ReleaseLabels, SourceLabelTable
from curation.model import CATEGORIES, CATEGORY_ALIASES
from curation.nifti import NIFTI_READ_ERRORS, LoadedNifti, load_nifti
from curation.uids import OutsideFolderError, path_under, require_inside

logger = logging.getLogger(__name__)

#: Voxel centres of a label map and of the CT must agree to this (mm).
GRID_TOLERANCE_MM = 1e-3

_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class CategoryMap:
    """One category's label map on the CT grid, in release values.

    Attributes
    ----------
    array
        uint8, the CT's shape and axis order.
    dropped
        Names of source labels present in the file that the release does not
        carry (their voxels were set to 0).
    dropped_voxels
        How many voxels were set to 0 for them.
    """

    array: np.ndarray
    dropped: tuple[str, ...]
    dropped_voxels: int


# ---------------------------------------------------------------------------
# finding the files


def _inside(path: Path, root: Path, what: str) -> Path:
    try:
        return require_inside(path, root)
    except OutsideFolderError as exc:
        raise SegmentationInvalidError(f"{exc} ({what})") from None


def study_folder(segmentations_dir: Path, study_uid: str) -> Path:
    """``<segmentations_dir>/<StudyInstanceUID>``, checked (see :func:`curation.uids.path_under`).

    Raises
    ------
    InvalidUIDError
        ``study_uid`` is not a conforming UID, so it never names a folder.
    SegmentationInvalidError
        The folder is a symbolic link leading outside ``segmentations_dir``.
    """
    try:
        return path_under(segmentations_dir, study_uid)
    except OutsideFolderError as exc:
        raise SegmentationInvalidError(f"{exc} (segmentations_dir)") from None


def lesion_file(lesions_dir: Path | None, study_uid: str) -> Path | None:
    """``<lesions_dir>/<StudyInstanceUID>.nii.gz`` when the site has a ``lesions_dir``, checked.

    Returns
    -------
    Path or None
        The path (it need not exist: a missing file means no lesions), or
        None without a ``lesions_dir``.

    Raises
    ------
    InvalidUIDError
        ``study_uid`` is not a conforming UID.
    SegmentationInvalidError
        The file is a symbolic link leading outside ``lesions_dir``.
    """
    if lesions_dir is None:
        return None
    try:
        return path_under(lesions_dir, study_uid, suffix=_SUFFIX)
    except OutsideFolderError as exc:
        raise SegmentationInvalidError(f"{exc} (lesions_dir)") from None


def category_files_in(segmentations_dir: Path, study_uid: str) -> list[Path]:
    """Every ``.nii.gz`` file of a study's segmentation folder (for fingerprints), each checked to stay inside.

    Raises
    ------
    InvalidUIDError, SegmentationInvalidError
        As :func:`study_folder`, and for a file leading outside ``segmentations_dir``.
    """
    folder = study_folder(segmentations_dir, study_uid)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob(f"*{_SUFFIX}") if p.is_file())
    return [_inside(p, segmentations_dir, "segmentations_dir") for p in files]


def category_of_stem(stem: str) -> str | None:
    """The release category a file stem names (category or MOOSE alias), else None.

    Parameters
    ----------
    stem
        A file name without ``.nii.gz`` (``Organs`` or ``clin_ct_organs``).

    Returns
    -------
    str or None
        One of :data:`curation.model.CATEGORIES`, or None for another name.
    """
    if stem in CATEGORIES:
        return stem
    return CATEGORY_ALIASES.get(stem)


def find_category_files(segmentations_dir: Path, study_uid: str) -> dict[str, Path]:
    """Find the seven category files of one study.

    Parameters
    ----------
    segmentations_dir
        The site's ``segmentations_dir``.
    study_uid
        The StudyInstanceUID (the name of the study's folder).

    Returns
    -------
    dict
        Release category -> file, in release order.

    Raises
    ------
    SegmentationMissingError
        When the study's folder is missing or lacks a category.
    SegmentationInvalidError
        When a category is delivered twice (under its release and MOOSE name).
    """
    folder = study_folder(segmentations_dir, study_uid)
    if not folder.is_dir():
        raise SegmentationMissingError(
            f"study {study_uid}: no segmentation folder {folder}; expected one "
            f"{_SUFFIX} file per category ({', '.join(CATEGORIES)})"
        )
    found: dict[str, Path] = {}
    others: list[str] = []
    for path in sorted(folder.iterdir()):
        category = category_of_stem(path.name.removesuffix(_SUFFIX)) if path.name.endswith(_SUFFIX) else None
        if category is None or not path.is_file():
            others.append(path.name)
            continue
        _inside(path, segmentations_dir, "segmentations_dir")
        if category in found:
            raise SegmentationInvalidError(
                f"study {study_uid}: category {category} is delivered twice, as {found[category].name} "
                f"and {path.name} in {folder}; keep one"
            )
        found[category] = path
    missing = [c for c in CATEGORIES if c not in found]
    if missing:
        note = f"; other files there: {', '.join(others)}" if others else ""
        raise SegmentationMissingError(
            f"study {study_uid}: missing segmentation categories {', '.join(missing)} in {folder} "
            f"(file names: the category or its MOOSE model name, {_SUFFIX}){note}"
        )
    return {c: found[c] for c in CATEGORIES}


# ---------------------------------------------------------------------------
# reading onto the CT grid


def _header_check(path: Path, ct: nib.Nifti1Image) -> Callable[[tuple[int, ...], np.dtype], None]:
    """The check of a map's header, made before any voxel is inflated (:func:`curation.nifti.load_nifti`).

    A header may claim any size (2048^3 float64 is 64 GiB in a file of a few
    KB): the map must be 3-D (trailing axes of length 1 allowed), have the
    CT's shape in some axis order and a voxel type of at most 8 bytes; only
    then are the voxels decompressed.
    """
    ct_shape = tuple(int(n) for n in ct.shape[:3])

    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            raise SegmentationInvalidError(f"{path}: expected a 3-D label map, the header says shape {shape}")
        if sorted(shape[:3]) != sorted(ct_shape):
            raise SegmentationGridMismatchError(
                f"{path}: shape {shape[:3]} (from the header) is not the CT's {ct_shape} in any axis order; "
                "the map must be on the CT grid (it is never resampled; its voxels were not read)"
            )
        if dtype.kind not in "iubf" or dtype.itemsize > 8:
            raise SegmentationInvalidError(f"{path}: voxel type {dtype} (from the header) is not a label type")

    return check


def _load(path: Path, ct: nib.Nifti1Image) -> LoadedNifti:
    """Read a label map or lesion mask whole (one read, inflated by ISA-L), its header checked first."""
    try:
        return load_nifti(path, check=_header_check(path, ct))
    except (*NIFTI_READ_ERRORS, struct.error) as exc:
        raise SegmentationInvalidError(f"{path}: not a readable NIfTI file ({exc})") from None


def _integer_data(loaded: LoadedNifti, path: Path) -> np.ndarray:
    """The voxel values as an integer array, refusing non-integer values or scaling."""
    data = loaded.scaled()
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise SegmentationInvalidError(f"{path}: expected a 3-D label map, got shape {data.shape}")
    if data.dtype.kind in "iub":
        return data
    if data.dtype.kind != "f":
        raise SegmentationInvalidError(f"{path}: voxel type {data.dtype} is not a label type")
    rounded = np.rint(data)
    bad = ~np.isfinite(data) | (rounded != data)
    if bad.any():
        example = float(data[bad].flat[0])
        raise SegmentationInvalidError(
            f"{path}: {int(np.count_nonzero(bad))} voxels are not whole numbers (e.g. {example!r}); "
            "a label map holds integer labels"
        )
    if rounded.size and (rounded.min() < np.iinfo(np.int32).min or rounded.max() > np.iinfo(np.int32).max):
        raise SegmentationInvalidError(f"{path}: label values outside the 32-bit integer range")
    return rounded.astype(np.int32)


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """Homogeneous voxel coordinates of the 8 corner voxel centres, shape (4, 8)."""
    idx = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    return np.vstack([idx, np.ones((1, idx.shape[1]))])


def to_ct_grid(data: np.ndarray, affine: np.ndarray, ct: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Reorient ``data`` (with ``affine``) to the CT's axis order, checking it is the CT's grid.

    Parameters
    ----------
    data, affine
        A 3-D volume and its voxel-to-world (RAS+ mm) affine.
    ct
        The converted CT whose grid the volume must lie on.
    path
        The volume's file, named in errors.

    Returns
    -------
    numpy.ndarray
        ``data`` with axes permuted/flipped to the CT's order (a view where possible).

    Raises
    ------
    SegmentationGridMismatchError
        When, after the lossless reorientation, the shape differs or any
        corner voxel centre is more than :data:`GRID_TOLERANCE_MM` from the CT's.
    """
    ct_affine = np.asarray(ct.affine, dtype=float)
    ct_shape = tuple(int(n) for n in ct.shape[:3])
    transform = ornt_transform(io_orientation(affine), io_orientation(ct_affine))
    moved = apply_orientation(data, transform)
    moved_affine = affine @ inv_ornt_aff(transform, data.shape)
    if moved.shape != ct_shape:
        raise SegmentationGridMismatchError(
            f"{path}: shape {data.shape} (as {moved.shape} in the CT's axis order) is not the CT's "
            f"{ct_shape}; the map must be on the CT grid (it is never resampled)"
        )
    corners = _corners(ct_shape)
    distance = np.linalg.norm((moved_affine @ corners - ct_affine @ corners)[:3], axis=0)
    worst = float(distance.max())
    if not worst <= GRID_TOLERANCE_MM:
        ct_zooms = np.sqrt((ct_affine[:3, :3] ** 2).sum(axis=0))
        zooms = np.sqrt((moved_affine[:3, :3] ** 2).sum(axis=0))
        raise SegmentationGridMismatchError(
            f"{path}: not on the CT grid: voxel centres differ by up to {worst:.4g} mm at the corners "
            f"(tolerance {GRID_TOLERANCE_MM} mm); spacing {np.round(zooms, 4).tolist()} vs the CT's "
            f"{np.round(ct_zooms, 4).tolist()} mm; the map is never resampled"
        )
    return moved


def _lookup(category: str, *, source: SourceLabelTable, release: ReleaseLabels):
    """Build the value lookup of one category.

    Returns ``(lut, known, dropped_names)``: ``lut[v]`` is the release value of
    source value ``v`` (0 for dropped labels), ``known[v]`` says whether ``v``
    is a defined source value, ``dropped_names[v]`` the name of a dropped one.
    """
    lut = np.zeros(256, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    known[0] = True
    dropped: dict[int, str] = {}
    wanted = release.values_by_name(category)
    for value, name in source.names(category).items():
        known[value] = True
        if name in wanted:
            lut[value] = wanted[name]
        else:
            dropped[value] = name
    return lut, known, dropped


def load_category(
    path: Path,
    ct: nib.Nifti1Image,
    category: str,
    *,
    source: SourceLabelTable,
    release: ReleaseLabels,
) -> CategoryMap:
    """Read one category's label map onto the CT grid, in release values.

    Parameters
    ----------
    path
        The category file.
    ct
        The converted CT (its grid and axis order are the target).
    category
        The release category the file holds.
    source, release
        The site's source label table and the release label set.  Every map
        is read through ``source``, whatever its file name (the name only
        picks the category): values are mapped to release values by name,
        labels the release does not carry are dropped and counted.

    Returns
    -------
    CategoryMap

    Raises
    ------
    SegmentationInvalidError
        Unreadable file, non-integer data, or a value the applicable table
        does not define (the message names the file and the values).
    SegmentationGridMismatchError
        When the map is not on the CT grid (see :func:`to_ct_grid`).
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    loaded = _load(path, ct)
    img, data = loaded.image, _integer_data(loaded, path)
    lut, known, dropped_names = _lookup(category, source=source, release=release)
    table = f"source label table ({source.source})"
    if data.dtype != np.uint8:
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo < 0 or hi > 255:
            outside = np.unique(data[(data < 0) | (data > 255)])
            raise SegmentationInvalidError(
                f"{path}: values {_show(outside)} are not defined for {category} in the {table}"
            )
        data = data.astype(np.uint8)
    top = int(data.max()) if data.size else 0
    # one cheap max() proves most maps clean (source tables are mostly 1..N);
    # only otherwise is every voxel looked up
    if not known[: top + 1].all():
        unknown = ~known[data]
        if unknown.any():
            raise SegmentationInvalidError(
                f"{path}: values {_show(np.unique(data[unknown]))} are not defined for {category} in the {table}"
            )
        del unknown
    data = to_ct_grid(data, np.asarray(img.affine, dtype=float), ct, path)
    # only the few dropped values are counted, one comparison each
    counts = {v: int(np.count_nonzero(data == v)) for v in sorted(dropped_names) if v <= top}
    dropped = tuple(dropped_names[v] for v, n in counts.items() if n)
    dropped_voxels = sum(counts.values())
    if dropped:
        logger.info("%s: dropped labels the release does not carry: %s (%d voxels)", path, dropped, dropped_voxels)
    return CategoryMap(array=_remap(data, lut, top), dropped=dropped, dropped_voxels=dropped_voxels)


def _remap(data: np.ndarray, lut: np.ndarray, top: int) -> np.ndarray:
    """``lut[data]``, in Fortran order, doing only the work the table needs.

    Release-valued maps (the table is the identity) are returned as they are; a
    map where one or two values change (MOOSE Organs: the dropped trachea) is
    changed in place, one comparison per value; otherwise every voxel is looked
    up (which keeps the file's memory order: NIfTI is Fortran order).
    """
    changed = np.flatnonzero(lut[: top + 1] != np.arange(top + 1))
    if changed.size == 0:
        return data
    if changed.size <= 2 and data.flags.writeable and not np.isin(lut[changed], changed).any():
        for value in changed.tolist():  # no target is changed again: the order does not matter
            data[data == value] = lut[value]
        return data
    return lut[data]


def load_lesion_mask(path: Path | None, ct: nib.Nifti1Image) -> np.ndarray | None:
    """Read a study's binary lesion mask onto the CT grid.

    Parameters
    ----------
    path
        ``<lesions_dir>/<StudyInstanceUID>.nii.gz``, or None when the site has
        no ``lesions_dir``.  A missing file means the study has no lesions.
    ct
        The converted CT.

    Returns
    -------
    numpy.ndarray or None
        A boolean mask in the CT's shape and axis order, or None when there is
        no mask.

    Raises
    ------
    SegmentationInvalidError
        Unreadable file or a value other than 0 and 1.
    SegmentationGridMismatchError
        When the mask is not on the CT grid.
    """
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    loaded = _load(path, ct)
    img, data = loaded.image, _integer_data(loaded, path)
    if data.size and (int(data.min()) < 0 or int(data.max()) > 1):  # two cheap passes prove most masks clean
        bad = (data != 0) & (data != 1)
        raise SegmentationInvalidError(
            f"{path}: a lesion mask holds only 0 and 1; found values {_show(np.unique(data[bad]))}"
        )
    mask = data.view(bool) if data.dtype.itemsize == 1 else data.astype(bool)  # 0 and 1 only: a byte is a bool
    return to_ct_grid(mask, np.asarray(img.affine, dtype=float), ct, path)


def _show(values: np.ndarray, limit: int = 10) -> str:
    shown = [int(v) for v in values[:limit]]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{shown}{more}"
