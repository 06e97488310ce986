"""QC pictures of a prepared case: what the steward looks at before a case goes public.

:func:`render_case_qc` reads a case's converted and prepared volumes and writes,
for each picture, a full-size PNG and a thumbnail:

``pet-mip-coronal``
    Coronal maximum-intensity projection of the PET (inverted grey), with the
    outline of the CT body (CT > -500 HU, projected the same way) in blue: PET
    outside the outline, or a gap between them, is a misregistration.
``ct-labels-coronal``, ``ct-labels-sagittal``
    CT slices through the body centroid with the boundary of every label of
    every category drawn in its colour: the source table's
    ``recommendedDisplayRGBValue`` where it has one, a fixed palette otherwise
    (:attr:`CaseQC.colours <curation.model.CaseQC>` says which).
``fusion-coronal``
    The PET (hot colours) over the coronal CT slice, with that slice's body
    outline in green: a shifted or flipped PET shows as uptake off the body
    and organs off their outline.
``head-sagittal-after``, ``head-axial-after``
    Sagittal and axial views through the head of the CT as it will be released,
    with the defacing cylinder in yellow; for a defaced case also
    ``head-sagittal-before`` and ``head-axial-before`` from the converted CT's
    head cube that prepare keeps before defacing
    (:attr:`PreparedCase.head_before <curation.model.PreparedCase>`, the
    :func:`~anonymization.deface.review_box` the views show).
    A case that is not defaced gets the two "after" views centred on its brain
    label (so the steward sees the face that will be published), and none when
    its labels have no brain.

Every picture is in patient orientation whatever the NIfTI axis order: head up,
the patient's right on the viewer's left, anterior on the left of sagittal and
at the top of axial views.  Volumes are put in nibabel's closest canonical
(RAS+) orientation and sampled at the world position of each pixel centre, with
square pixels in millimetres, so a feet-first, flipped or permuted file gives
the same picture.  Grids that are oblique to the world axes (rejected upstream
as gantry tilt) would be shown along their closest axes.

Pictures are drawn with numpy and Pillow (no matplotlib: its figure machinery
and text rendering cost more than the whole picture here, and Pillow writes
PNGs without metadata, so the same volumes give the same bytes).  Volumes are
inflated with ISA-L (``isal``), 2.2x faster than zlib on a 512x512x320 CT,
straight into their arrays, which is most of the cost; a label map is inflated
block by block and only the planes drawn are kept.  Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from nibabel.spatialimages import HeaderDataError
from PIL import Image, ImageDraw

from anonymization.deface import BODY_HU, REVIEW_HALF_MM, review_half
from curation.atomic import atomic_write_bytes
from curation.errors import UnreadableError
from curation.labels import COLOUR_COLUMN, ReleaseLabels, SourceLabelTable, labels_json_bytes
from curation.model import (
    CATEGORIES,
    CaseQC,
    ConvertedCase,
    DefaceCylinder,
    ImageFile,
    Phase,
    PNGFile,
    PreparedCase,
    QCImage,
    to_jsonable,
)
from curation.stage import CaseStage, StudySubject
from curation.state import StatePaths

logger = logging.getLogger(__name__)

#: Part of every QC fingerprint: raise it when the pictures change.
QC_VERSION = 1
#: Every picture a case can have, in the order they are listed (a case has those that apply).
PICTURE_NAMES = (
    "pet-mip-coronal", "fusion-coronal", "ct-labels-coronal", "ct-labels-sagittal",
    "head-sagittal-before", "head-sagittal-after", "head-axial-before", "head-axial-after",
)
#: Longer side (px) of a full-size whole-body picture.
FULL_SIZE = 800
#: Side (px) of a full-size head picture.
HEAD_SIZE = 512
#: Longer side (px) of a thumbnail.
THUMB_SIZE = 192
#: Half the side (mm) of the square a head picture shows (at least; more for a wider cylinder:
#: :func:`~anonymization.deface.review_half`, the cube prepare keeps before defacing).
HEAD_HALF_MM = REVIEW_HALF_MM
#: Height (mm) above the lowest brain voxel of the axial head picture of a case without a
#: cylinder: about eye level, where the middle of a defacing cylinder usually is.
EYE_LEVEL_MM = 30.0
#: CT windows (HU): whole-body slices with labels, head views, fusion.
BODY_WINDOW = (-250.0, 450.0)
HEAD_WINDOW = (-400.0, 600.0)
FUSION_WINDOW = (-200.0, 300.0)
#: Subsampling (mm) of the body mask behind the outlines, the centroid and the PET-in-body number.
BODY_MASK_MM = 2.0
#: Sampling (mm) of the PET grid for the PET-in-body number.
PET_SAMPLE_MM = 6.0
#: PNG deflate level: on the bench case's pictures 3 writes 15 % more bytes than 9, 5x faster; 2 writes
#: 6 % more than 3 and encodes them 13 % faster (Pillow's choice of a filter per row is most of the rest).
PNG_LEVEL = 2
#: Width (px) of the label boundaries on full-size pictures (thumbnails keep them visible).
LABEL_LINE = 2
#: Colours of the drawn outlines.
BODY_OUTLINE_MIP = (0, 110, 255)
BODY_OUTLINE_FUSION = (0, 255, 0)
CYLINDER_COLOUR = (255, 255, 0)
#: Label colours when the source table has none (tab20, a fixed qualitative palette).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
    (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
    (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
    (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229),
)

_X, _Y, _Z = 0, 1, 2
#: Inflated bytes asked of ISA-L at a time.
_PIECE = 1 << 20
#: Inflated bytes of a label map handled at a time (whole planes; they stay in the CPU's cache).
_BLOCK = 1 << 20
#: Bytes of a NIfTI-1 header, before the extension flag.
_NIFTI1_HEADER = 348


# ---------------------------------------------------------------------------
# fingerprint


def qc_inputs(
    case: ConvertedCase,
    prepared: PreparedCase,
    *,
    source_table: SourceLabelTable,
    release_labels: ReleaseLabels,
) -> dict[str, Any]:
    """What the pictures are drawn from, as content keys (the parts of :func:`qc_fingerprint`).

    The prepared CT, PET and label maps (their recorded sha256); for a defaced
    case the converted CT's head cube (the "before" views) and the cylinder; the release
    label set (the names behind the label values) and the source table (the
    colours).  A case's pictures are reusable while these are unchanged and
    :data:`QC_VERSION` is the same.

    Parameters
    ----------
    case, prepared
        The converted case and its preparation.
    source_table, release_labels
        The label tables the pictures are coloured with.

    Returns
    -------
    dict[str, Any]
        JSON-serialisable content keys.
    """
    return {
        "ct": prepared.ct.sha256,
        "pt": prepared.pt.sha256,
        "labels": {category: image.sha256 for category, image in sorted(prepared.labels.items())},
        "before": prepared.head_before.sha256 if prepared.defaced and prepared.head_before else None,
        "cylinder": to_jsonable(prepared.cylinder) if prepared.defaced else None,
        "release_labels": hashlib.sha256(labels_json_bytes(release_labels)).hexdigest(),
        "source_table": source_table.digest,
    }


def qc_fingerprint(
    case: ConvertedCase,
    prepared: PreparedCase,
    *,
    source_table: SourceLabelTable,
    release_labels: ReleaseLabels,
) -> str:
    """The content key of a case's QC pictures (sha256 hex).

    The value :meth:`QCStage.fingerprint <curation.stage.CaseStage.fingerprint>`
    gives for ``(case, prepared)``: the stage's name and :data:`QC_VERSION` with
    :func:`qc_inputs`.

    Parameters
    ----------
    case, prepared
        The converted case and its preparation.
    source_table, release_labels
        The label tables the pictures are coloured with.

    Returns
    -------
    str
        64 hex digits.
    """
    doc = {"stage": QCStage.name, "version": QC_VERSION,
           **qc_inputs(case, prepared, source_table=source_table, release_labels=release_labels)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def qc_outputs(qc: CaseQC) -> dict[str, PNGFile]:
    """Every file a QC record vouches for, by file name (checked before the record is reused).

    Parameters
    ----------
    qc
        A QC record.

    Returns
    -------
    dict[str, PNGFile]
        ``<name>.png`` and ``<name>.thumb.png`` of every picture.
    """
    return {Path(f.path).name: f for image in qc.images for f in (image.full, image.thumbnail)}


# ---------------------------------------------------------------------------
# volumes


@dataclass(frozen=True)
class _Volume:
    """A volume in nibabel's closest canonical orientation: axes point to +x (R), +y (A), +z (S)."""

    data: np.ndarray  # a view of the file's array, reordered
    origin: np.ndarray  # world (RAS+ mm) of voxel (0, 0, 0)
    spacing: np.ndarray  # mm per voxel along each axis, > 0

    def index(self, axis: int, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest voxel index along ``axis`` of each world coordinate, and whether it is inside."""
        idx = np.rint((np.asarray(world, dtype=float) - self.origin[axis]) / self.spacing[axis]).astype(np.intp)
        inside = (idx >= 0) & (idx < self.data.shape[axis])
        return np.clip(idx, 0, self.data.shape[axis] - 1), inside

    def world(self, axis: int, index: np.ndarray) -> np.ndarray:
        """World coordinate along ``axis`` of voxel indices."""
        return self.origin[axis] + np.asarray(index, dtype=float) * self.spacing[axis]

    def bounds(self, axis: int) -> tuple[float, float]:
        """World extent along ``axis``, voxel edges included."""
        half = self.spacing[axis] / 2
        return float(self.origin[axis] - half), float(self.world(axis, self.data.shape[axis] - 1) + half)


def _checked_bytes(image: ImageFile, what: str) -> bytes | mmap.mmap:
    """The file's bytes (mapped, not copied), which must hash to the sha256 its record names."""
    try:
        with open(image.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw: bytes | mmap.mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise UnreadableError(f"{what} {image.path} cannot be read ({exc.strerror})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != image.sha256:
        raise UnreadableError(
            f"{what} {image.path} has sha256 {digest[:12]}..., its record says {image.sha256[:12]}...; "
            "run the build again"
        )
    return raw


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, int, int]
    dtype: np.dtype
    affine: np.ndarray
    vox_offset: int


def _header(first: bytes, what: str) -> _Header:
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(first))
    except (HeaderDataError, ValueError) as exc:
        raise UnreadableError(f"{what}: not a NIfTI-1 file ({exc})") from None
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) != 3:
        raise UnreadableError(f"{what}: shape {shape}; a 3-D volume is expected")
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):  # curation.nifti never scales
        raise UnreadableError(f"{what}: scaled data (slope {slope}, intercept {inter}) is not expected")
    return _Header(shape, header.get_data_dtype(), header.get_best_affine(), int(header["vox_offset"]))  # type: ignore[arg-type]


def _canonical_grid(affine: np.ndarray, shape: tuple[int, ...], ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS+ mm) of voxel (0, 0, 0) and mm per voxel of a grid put in the closest canonical orientation."""
    canonical = affine @ inv_ornt_aff(ornt, shape)
    return canonical[:3, 3].copy(), np.sqrt((canonical[:3, :3] ** 2).sum(axis=0))


def _canonical(array: np.ndarray, affine: np.ndarray, ornt: np.ndarray | None = None) -> _Volume:
    """``array`` (file axis order) as a :class:`_Volume` in the closest canonical orientation.

    ``ornt`` is ``io_orientation(affine)`` when the caller has it already.
    """
    ornt = io_orientation(affine) if ornt is None else ornt
    origin, spacing = _canonical_grid(affine, array.shape, ornt)
    return _Volume(data=apply_orientation(array, ornt), origin=origin, spacing=spacing)


def _file_plane(header: _Header, ornt: np.ndarray, axis: int, world: float) -> tuple[int, int] | None:
    """The file axis along canonical ``axis`` and its index nearest ``world``; None outside the grid.

    The plane :meth:`_Volume.index` finds in the canonical volume, named in file terms.
    """
    origin, spacing = _canonical_grid(header.affine, header.shape, ornt)
    file_axis = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    n = header.shape[file_axis]
    index = int(np.rint((world - origin[axis]) / spacing[axis]))
    if not 0 <= index < n:
        return None
    return file_axis, n - 1 - index if ornt[file_axis, 1] < 0 else index


class _AxisCounts:
    """How many voxels of a boolean volume lie in each plane across each of its file axes.

    Counted block by block of planes of the last file axis (in memory order,
    while a block is in the CPU's cache); :meth:`world` turns them into
    counts along the world axes.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.counts = [np.zeros(n, dtype=np.int64) for n in shape]

    def add(self, k0: int, hits: np.ndarray) -> None:
        """Count a block (boolean, file order) holding planes ``k0`` on of the last axis."""
        # the planes added up first (in memory order, as the narrowest integers that hold n), then each axis
        n = hits.shape[2]
        across = np.add.reduce(hits.view(np.uint8), axis=2, dtype=np.min_scalar_type(n))
        self.counts[0] += across.sum(axis=1, dtype=np.int64)
        self.counts[1] += across.sum(axis=0, dtype=np.int64)
        self.counts[2][k0 : k0 + n] += [np.count_nonzero(hits[:, :, k]) for k in range(n)]

    @property
    def total(self) -> int:
        return int(self.counts[0].sum())

    def world(self, affine: np.ndarray, ornt: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(coordinates, counts)`` along world x, y and z, in canonical index order (as :class:`_Volume`)."""
        origin, spacing = _canonical_grid(affine, self.shape, ornt)
        along: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * 3
        for file_axis, counts in enumerate(self.counts):
            axis = int(ornt[file_axis, 0])
            along[axis] = (origin[axis] + np.arange(len(counts)) * spacing[axis],
                           counts[::-1] if ornt[file_axis, 1] < 0 else counts)
        return along


class _Voxels:
    """A checked ``.nii.gz`` volume's header, and its voxels inflated on demand in file order.

    ISA-L inflates straight into the caller's memory (no pieces to copy),
    across every member of a multi-member gzip file.  Made by :func:`_open_voxels`.
    """

    def __init__(self, stream: Any, image: ImageFile, where: str) -> None:
        self.where = where
        self._stream = stream
        head = bytearray(_NIFTI1_HEADER)
        self._fill(memoryview(head), "header")
        self.header = _header(bytes(head), where)
        if self.header.shape != tuple(image.shape):
            raise UnreadableError(f"{where}: shape {self.header.shape}, its record says {tuple(image.shape)}")
        if self.header.vox_offset < _NIFTI1_HEADER:
            raise UnreadableError(f"{where}: vox_offset {self.header.vox_offset} lies inside the header")
        self._fill(memoryview(bytearray(self.header.vox_offset - _NIFTI1_HEADER)), "header")  # extensions

    def _fill(self, target: memoryview, what: str) -> None:
        """Inflate exactly ``len(target)`` bytes into ``target``."""
        filled = 0
        try:
            while filled < len(target):
                got = self._stream.readinto(target[filled : filled + _PIECE])
                if not got:
                    break
                filled += got
        except (OSError, EOFError, isal_zlib.error) as exc:
            raise UnreadableError(f"{self.where}: not a readable gzip stream ({exc})") from None
        if filled < len(target):
            raise UnreadableError(f"{self.where}: the file ends in its {what} (truncated file)")

    def read(self, each: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """The whole volume, file axis order (Fortran order, as NIfTI stores it).

        ``each``, when given, is called as :meth:`blocks` yields, with the
        blocks of the volume itself, right after each is inflated.
        """
        array = np.empty(self.header.shape, dtype=self.header.dtype, order="F")
        if each is None:
            self._fill(memoryview(array.T).cast("B"), "voxel data")  # the transpose of Fortran order is C-contiguous
            return array
        for k0, k1 in self._block_ranges():
            block = array[:, :, k0:k1]  # whole planes of a Fortran-order array: contiguous
            self._fill(memoryview(block.T).cast("B"), "voxel data")
            each(k0, block)
        return array

    def _block_ranges(self) -> Iterator[tuple[int, int]]:
        """Ranges of the last axis holding about :data:`_BLOCK` bytes (whole planes)."""
        nx, ny, nz = self.header.shape
        planes = max(1, _BLOCK // max(nx * ny * self.header.dtype.itemsize, 1))
        return ((k0, min(k0 + planes, nz)) for k0 in range(0, nz, planes))

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The volume in blocks of whole planes of its last file axis (about :data:`_BLOCK` bytes), as it is inflated.

        Yields ``(k0, block)``: the block's first plane and the block in
        file axis order.  The block's memory is reused for the next one (so
        it stays in the CPU's cache): a caller copies what it keeps.
        """
        nx, ny, _ = self.header.shape
        buffer: np.ndarray | None = None
        for k0, k1 in self._block_ranges():
            if buffer is None:
                buffer = np.empty((nx, ny, k1 - k0), dtype=self.header.dtype, order="F")
            block = buffer[:, :, : k1 - k0]
            self._fill(memoryview(block.T).cast("B"), "voxel data")
            yield k0, block


def _open_voxels(image: ImageFile, what: str) -> _Voxels:
    """The volume's :class:`_Voxels`, once its file matches its record.

    Raises
    ------
    UnreadableError
        When the file is missing, differs from its recorded sha256, or is not
        a gzipped 3-D NIfTI-1 volume of the recorded shape.
    """
    raw = _checked_bytes(image, what)
    return _Voxels(_gzip_reader(memoryview(raw)), image, f"{what} {image.path}")


def _gzip_reader(raw: memoryview) -> Any:
    """A reader whose ``readinto`` inflates every gzip member of ``raw`` in turn.

    igzip's own raw reader (what ``igzip.decompress`` uses, not a public name)
    inflates straight into the caller's memory; the public ``IGzipFile`` gives
    the same bytes, reading into a new object and copying it (about 5 ms more
    per label map), and is used if a later ``isal`` drops the raw reader.
    """
    reader = getattr(igzip, "_IGzipReader", None)
    if reader is not None:
        return reader(raw)
    return igzip.IGzipFile(fileobj=io.BytesIO(raw), mode="rb")


def _read_volume(image: ImageFile, what: str) -> tuple[_Volume, np.ndarray, np.ndarray]:
    """The whole volume: canonical, as stored (file axis order), and the file's affine.

    Raises
    ------
    UnreadableError
        As :func:`_open_voxels`.
    """
    voxels = _open_voxels(image, what)
    array = voxels.read()
    return _canonical(array, voxels.header.affine), array, voxels.header.affine


def _box_in(affine: np.ndarray, shape: tuple[int, ...], grid: np.ndarray, grid_shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Where a sub-volume (``affine``, ``shape``) lies on a grid (``grid``, ``grid_shape``), as index slices.

    Raises
    ------
    UnreadableError
        When the sub-volume is not a whole-voxel box of the grid in the same axis order.
    """
    relation = np.linalg.inv(grid) @ affine  # sub-volume index -> grid index
    start = np.rint(relation[:3, 3]).astype(int)
    if (not np.allclose(relation[:3, :3], np.eye(3), atol=1e-3) or not np.allclose(relation[:3, 3], start, atol=1e-3)
            or (start < 0).any() or (start + shape > np.asarray(grid_shape)).any()):
        raise UnreadableError("the CT head cube before defacing is not a box of the prepared CT's grid: "
                              "prepare the case again")
    return tuple(slice(int(a), int(a + n)) for a, n in zip(start, shape, strict=True))


# ---------------------------------------------------------------------------
# frames: which world point each pixel shows


@dataclass(frozen=True)
class _Frame:
    """A picture's pixel grid in world space.

    Columns run along world axis ``h``, rows along ``v``, both towards
    *decreasing* coordinates (patient right, anterior and superior come
    first), so every view is in patient orientation.  ``fixed`` is the world
    coordinate of the plane along the third axis (slices).
    """

    h: int
    v: int
    h_start: float  # world coordinate of the centre of column 0
    v_start: float
    mm: float
    width: int
    height: int
    fixed: float = 0.0

    @property
    def axis(self) -> int:
        return 3 - self.h - self.v

    @property
    def h_coords(self) -> np.ndarray:
        return self.h_start - np.arange(self.width) * self.mm

    @property
    def v_coords(self) -> np.ndarray:
        return self.v_start - np.arange(self.height) * self.mm

    def pixel(self, h_world: float, v_world: float) -> tuple[float, float]:
        """(column, row) of a world position, fractional."""
        return (self.h_start - h_world) / self.mm, (self.v_start - v_world) / self.mm

    def placement(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """``top_left``, ``right`` and ``down`` world vectors of :class:`~curation.model.QCImage`."""
        top_left, right, down = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        top_left[self.h], top_left[self.v], top_left[self.axis] = self.h_start, self.v_start, self.fixed
        right[self.h] = -self.mm
        down[self.v] = -self.mm
        return tuple(top_left), tuple(right), tuple(down)


def _frame(h: int, v: int, h_range: tuple[float, float], v_range: tuple[float, float], size: int,
           fixed: float = 0.0) -> _Frame:
    """A frame covering the world box ``h_range`` x ``v_range``, ``size`` px along its longer side."""
    h_len, v_len = h_range[1] - h_range[0], v_range[1] - v_range[0]
    mm = max(h_len, v_len) / size
    width, height = max(1, round(h_len / mm)), max(1, round(v_len / mm))
    return _Frame(h, v, h_range[1] - mm / 2, v_range[1] - mm / 2, mm, width, height, fixed)


def _inside_range(inside: np.ndarray) -> slice:
    """The run of True in a monotonic 'inside' vector as a slice (empty when none)."""
    hits = np.flatnonzero(inside)
    return slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0)


def _slice_into(volume: _Volume, frame: _Frame, out: np.ndarray) -> None:
    """Write the volume's plane at ``frame.fixed`` into the pixels of ``out`` it covers (nearest voxel).

    ``volume`` may be a block of a larger volume: pixels outside it are left
    as they are, so the blocks of a volume fill a picture one after the other.
    """
    (i0,), (plane_in,) = volume.index(frame.axis, np.array([frame.fixed]))
    if not plane_in:
        return
    ih, h_in = volume.index(frame.h, frame.h_coords)
    iv, v_in = volume.index(frame.v, frame.v_coords)
    cols, rows = _inside_range(h_in), _inside_range(v_in)
    if cols.start == cols.stop or rows.start == rows.stop:
        return
    plane: list[object] = [slice(None)] * 3
    plane[frame.axis] = i0
    rows_cols = volume.data[tuple(plane)]  # a view; its two axes in canonical order
    if frame.h < frame.v:
        rows_cols = rows_cols.T
    # one gather per axis, the one with the longer stride first: 2-5x faster than one gather per pixel
    if abs(rows_cols.strides[0]) >= abs(rows_cols.strides[1]):
        out[rows, cols] = rows_cols.take(iv[rows], axis=0).take(ih[cols], axis=1)
    else:
        out[rows, cols] = rows_cols.take(ih[cols], axis=1).take(iv[rows], axis=0)


def _slice(volume: _Volume, frame: _Frame, fill: float) -> np.ndarray:
    """The volume's plane at ``frame.fixed`` on the frame's pixels; ``fill`` outside the volume."""
    out = np.full((frame.height, frame.width), fill, dtype=volume.data.dtype)
    _slice_into(volume, frame, out)
    return out


def _projected(projection: np.ndarray, volume: _Volume, frame: _Frame, fill: float) -> np.ndarray:
    """A projection of ``volume`` along ``frame.axis`` (axes in canonical order) sampled on the frame."""
    ih, h_in = volume.index(frame.h, frame.h_coords)
    iv, v_in = volume.index(frame.v, frame.v_coords)
    # the projection keeps the other two axes in canonical order
    if frame.h < frame.v:
        out = projection[ih[None, :], iv[:, None]]
    else:
        out = projection[iv[:, None], ih[None, :]]
    out = np.array(out, copy=True)
    out[~(v_in[:, None] & h_in[None, :])] = fill
    return out


# ---------------------------------------------------------------------------
# drawing


def _grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    scaled = (values.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _edges(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner boundary of every non-zero label, ``width`` pixels thick.

    A pixel is on it when it holds a non-zero label and a pixel within
    ``width`` steps (4-neighbours) holds another value.
    """
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    same_v, same_h = ~vertical, ~horizontal
    for _ in range(width - 1):  # grow inwards, within the same label
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :] & same_v
        grown[:-1, :] |= edge[1:, :] & same_v
        grown[:, 1:] |= edge[:, :-1] & same_h
        grown[:, :-1] |= edge[:, 1:] & same_h
        edge = grown
    edge &= labels > 0
    return edge


def _hot(values: np.ndarray) -> np.ndarray:
    """The 'hot' colour map (black, red, yellow, white) of values in [0, 1], as RGB uint8."""
    t = np.clip(values, 0.0, 1.0)[..., None] * 3.0 - np.array([0.0, 1.0, 2.0], dtype=np.float32)
    return (np.clip(t, 0.0, 1.0) * 255).astype(np.uint8)


def label_colours(
    category: str, release_labels: ReleaseLabels, source_table: SourceLabelTable
) -> tuple[np.ndarray, int]:
    """Colour look-up table (256 x RGB) of a category's release values, and how many came from the table.

    A release value's colour is the source table's ``recommendedDisplayRGBValue``
    of the label of the same name (values are mapped by name); a label the
    table gives no colour gets ``PALETTE[value % 20]``.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    from_table = 0
    for value, name in release_labels.categories[category].items():
        colour = source_table.colour_of(category, name)
        if colour is not None:
            from_table += 1
        lut[value] = colour if colour is not None else PALETTE[value % len(PALETTE)]
    return lut, from_table


def _png(rgb: np.ndarray) -> tuple[Image.Image, bytes]:
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)  # Pillow writes no time or text chunk
    return image, buffer.getvalue()


def _write_picture(out_dir: Path, name: str, title: str, rgb: np.ndarray, frame: _Frame) -> QCImage:
    """Write ``<name>.png`` and ``<name>.thumb.png`` atomically; their record."""
    image, data = _png(rgb)
    scale = THUMB_SIZE / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    thumb, thumb_data = _png(np.asarray(image.resize(size, Image.Resampling.BOX)))
    full_path, thumb_path = out_dir / f"{name}.png", out_dir / f"{name}.thumb.png"
    atomic_write_bytes(full_path, data)
    atomic_write_bytes(thumb_path, thumb_data)
    top_left, right, down = frame.placement()
    return QCImage(
        name=name,
        title=title,
        full=PNGFile(str(full_path), hashlib.sha256(data).hexdigest(), image.width, image.height),
        thumbnail=PNGFile(str(thumb_path), hashlib.sha256(thumb_data).hexdigest(), thumb.width, thumb.height),
        top_left=top_left,  # type: ignore[arg-type]
        right=right,  # type: ignore[arg-type]
        down=down,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------
# the pictures


@dataclass(frozen=True)
class _Head:
    """Where the head pictures are centred (world mm) and the cylinder to outline, if any."""

    x: float
    y: float
    z: float
    half: float
    cylinder: DefaceCylinder | None
    source: str  # "cylinder" | "brain-label"


def _head_from_cylinder(cylinder: DefaceCylinder) -> _Head:
    return _Head(cylinder.axis_x, cylinder.axis_y, (cylinder.z_lo + cylinder.z_hi) / 2,
                 review_half(cylinder), cylinder, "cylinder")


class _BrainCentre:
    """The brain label's centroid and lowest voxel, counted block by block as the Organs map is read."""

    def __init__(self, value: int, header: _Header, ornt: np.ndarray) -> None:
        self.value = value
        self.header = header
        self.ornt = ornt
        self.counts = _AxisCounts(header.shape)

    def add(self, k0: int, block: np.ndarray) -> None:
        """Count the brain voxels of one block (file order, planes ``k0`` on of the last axis)."""
        brain = block == self.value
        if brain.any():  # most blocks hold no brain
            self.counts.add(k0, brain)

    def head(self) -> _Head | None:
        """Centred on the brain's centroid in x and y, :data:`EYE_LEVEL_MM` above its lowest voxel."""
        total = self.counts.total
        if total == 0:
            return None
        (x, nx), (y, ny), (z, nz) = self.counts.world(self.header.affine, self.ornt)
        z_lo = float(z[np.flatnonzero(nz)[0]])
        return _Head(float(x @ nx) / total, float(y @ ny) / total, z_lo + EYE_LEVEL_MM, HEAD_HALF_MM, None,
                     "brain-label")


def _label_slices(
    image: ImageFile, what: str, frames: dict[str, _Frame], *, brain: int | None = None
) -> tuple[dict[str, np.ndarray], _Head | None]:
    """A label map's values on each frame's pixels (0 outside the map), and its brain's head view.

    The map is inflated in blocks of :data:`_BLOCK` bytes; of each, only the
    voxels of the frames' planes are kept (a plane across the blocks is
    gathered strip by strip), and the brain label (value ``brain``, when
    given) is counted.  So a map costs its inflation, not its size in memory.

    Raises
    ------
    UnreadableError
        As :func:`_open_voxels`.
    """
    voxels = _open_voxels(image, what)
    header = voxels.header
    ornt = io_orientation(header.affine)
    planes: dict[str, tuple[int, int, np.ndarray]] = {}  # view: (file axis, index, plane)
    for view, frame in frames.items():
        where = _file_plane(header, ornt, frame.axis, frame.fixed)
        if where is not None:
            shape = tuple(n for a, n in enumerate(header.shape) if a != where[0])
            planes[view] = (*where, np.zeros(shape, dtype=header.dtype))
    centre = _BrainCentre(brain, header, ornt) if brain is not None else None
    for k0, block in voxels.blocks():
        k1 = k0 + block.shape[2]
        for file_axis, index, plane in planes.values():
            if file_axis == 2:
                if k0 <= index < k1:
                    plane[...] = block[:, :, index - k0]
            else:
                plane[:, k0:k1] = block[index, :, :] if file_axis == 0 else block[:, index, :]
        if centre is not None:
            centre.add(k0, block)
    slices = {}
    for view, frame in frames.items():
        slices[view] = np.zeros((frame.height, frame.width), dtype=np.uint8)
        if view in planes:
            file_axis, index, plane = planes[view]
            shift = np.eye(4)
            shift[file_axis, 3] = index
            _slice_into(_canonical(np.expand_dims(plane, file_axis), header.affine @ shift, ornt), frame,
                        slices[view])
    return slices, centre.head() if centre is not None else None


def _head_frames(head: _Head) -> tuple[_Frame, _Frame]:
    sagittal = _frame(_Y, _Z, (head.y - head.half, head.y + head.half), (head.z - head.half, head.z + head.half),
                      HEAD_SIZE, fixed=head.x)
    axial = _frame(_X, _Y, (head.x - head.half, head.x + head.half), (head.y - head.half, head.y + head.half),
                   HEAD_SIZE, fixed=head.z)
    return sagittal, axial


def _head_picture(ct_slice: np.ndarray, frame: _Frame, cylinder: DefaceCylinder | None) -> np.ndarray:
    """A head view (CT in :data:`HEAD_WINDOW`) with the cylinder's cut outlined."""
    rgb = _rgb(_grey(ct_slice, HEAD_WINDOW))
    if cylinder is None:
        return rgb
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    if frame.axis == _X:  # sagittal, through the axis: the cut is a rectangle
        left, top = frame.pixel(cylinder.axis_y + cylinder.radius, cylinder.z_hi)
        right, bottom = frame.pixel(cylinder.axis_y - cylinder.radius, cylinder.z_lo)
        draw.rectangle((left, top, right, bottom), outline=CYLINDER_COLOUR, width=2)
    elif cylinder.z_lo <= frame.fixed <= cylinder.z_hi:  # axial, inside the slab: a circle
        left, top = frame.pixel(cylinder.axis_x + cylinder.radius, cylinder.axis_y + cylinder.radius)
        right, bottom = frame.pixel(cylinder.axis_x - cylinder.radius, cylinder.axis_y - cylinder.radius)
        draw.ellipse((left, top, right, bottom), outline=CYLINDER_COLOUR, width=2)
    return np.asarray(image)


def _pet_window(mip: np.ndarray) -> float:
    """The top of the PET display window: the 99.5th percentile of the non-zero MIP values."""
    positive = mip[mip > 0]
    return float(np.percentile(positive, 99.5)) if positive.size else 1.0


def _projection(data: np.ndarray, axis: int, reduce: np.ufunc) -> np.ndarray:
    """``reduce`` along ``axis`` of a (canonical) array, in memory order whatever its flips.

    numpy reduces an array with negative strides (a flipped file axis) about
    seven times slower; the flips are undone before and redone after.
    """
    flipped = tuple(a for a in range(data.ndim) if data.strides[a] < 0)
    projected = reduce.reduce(np.flip(data, flipped), axis=axis)
    return np.flip(projected, tuple(a - (a > axis) for a in flipped if a != axis))


def _mip_picture(mip: np.ndarray, pt: _Volume, body: _Volume, frame: _Frame, pet_top: float) -> np.ndarray:
    """The PET MIP along the frame's depth axis (inverted grey), the CT body projected alike as an outline."""
    rgb = _rgb(255 - _grey(_projected(mip, pt, frame, 0.0), (0.0, pet_top)))
    silhouette = _projected(_projection(body.data, frame.axis, np.logical_or), body, frame, False)
    rgb[_edges(silhouette.astype(np.uint8))] = BODY_OUTLINE_MIP
    return rgb


def _fusion_picture(ct_slice: np.ndarray, pt: _Volume, frame: _Frame, pet_top: float) -> np.ndarray:
    """PET in hot colours over the CT slice, and the slice's body outline: misregistration shows."""
    pet = _slice(pt, frame, 0.0).astype(np.float32) / np.float32(pet_top)
    alpha = np.clip(pet * 1.5, 0.0, 0.85)
    rgb = _rgb(_grey(ct_slice, FUSION_WINDOW))
    shown = alpha > 0  # elsewhere the blend is the grey itself: only these pixels are mixed
    a = alpha[shown][:, None]
    rgb[shown] = ((1 - a) * rgb[shown] + a * _hot(pet[shown])).astype(np.uint8)
    rgb[_edges((ct_slice > BODY_HU).astype(np.uint8))] = BODY_OUTLINE_FUSION
    return rgb


@dataclass(frozen=True)
class _CT:
    """The prepared CT, and its body (CT > :data:`BODY_HU`) on its grid subsampled to about :data:`BODY_MASK_MM`."""

    volume: _Volume  # canonical
    stored: np.ndarray  # file axis order
    affine: np.ndarray
    body: _Volume  # canonical
    centroid: tuple[float, float, float]  # of the body (world mm)


def _read_ct(image: ImageFile, what: str) -> _CT:
    """The CT, and its body mask thresholded block by block as the CT is inflated (in the CPU's cache).

    Raises
    ------
    UnreadableError
        As :func:`_open_voxels`.
    """
    voxels = _open_voxels(image, what)
    header = voxels.header
    spacing = np.sqrt((header.affine[:3, :3] ** 2).sum(axis=0))
    steps = [max(1, int(BODY_MASK_MM // s)) for s in spacing]
    mask = np.empty([-(-n // step) for n, step in zip(header.shape, steps, strict=True)], dtype=bool, order="F")

    def threshold(k0: int, block: np.ndarray) -> None:
        first = -k0 % steps[2]  # the block's first plane on the mask's grid
        planes = block[:: steps[0], :: steps[1], first :: steps[2]]
        m0 = (k0 + first) // steps[2]
        np.greater(planes, BODY_HU, out=mask[:, :, m0 : m0 + planes.shape[2]])

    stored = voxels.read(each=threshold)
    counts = _AxisCounts(mask.shape)
    counts.add(0, mask)
    ornt = io_orientation(header.affine)
    mask_affine = header.affine @ np.diag([*steps, 1])
    body = _canonical(mask, mask_affine, ornt)
    if counts.total == 0:  # no body at all: the middle of the grid
        centroid = tuple(float(np.mean(body.bounds(axis))) for axis in range(3))
    else:
        centroid = tuple(float(world @ n / counts.total) for world, n in counts.world(mask_affine, ornt))
    return _CT(_canonical(stored, header.affine, ornt), stored, header.affine, body, centroid)  # type: ignore[arg-type]


def _pet_inside_body(pt: _Volume, body: _Volume) -> float:
    """Fraction of the PET activity whose voxel centre lies inside the CT body mask.

    Estimated on the PET grid subsampled to about :data:`PET_SAMPLE_MM` (some
    hundred thousand points for a whole-body PET instead of millions).
    """
    steps = [max(1, int(PET_SAMPLE_MM // s)) for s in pt.spacing]
    pet = pt.data[:: steps[0], :: steps[1], :: steps[2]]
    index, inside = [], []
    for axis in range(3):
        idx, ok = body.index(axis, pt.world(axis, np.arange(0, pt.data.shape[axis], steps[axis])))
        index.append(idx)
        inside.append(ok)
    # gathered with the mask's memory order outermost to innermost (its slowest axis first): a point
    # then follows the one before it in memory, not 64 KiB away (4x faster)
    order = np.argsort([-abs(stride) for stride in body.data.strides])
    mask = body.data.transpose(order)[np.ix_(*(index[a] for a in order))].transpose(np.argsort(order))
    mask &= inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    activity = np.clip(pet, 0, None)
    total = float(activity.sum(dtype=np.float64))
    if total <= 0:
        return 0.0
    return float(activity.sum(where=mask, dtype=np.float64)) / total


def render_case_qc(
    case: ConvertedCase,
    prepared: PreparedCase,
    out_dir: Path,
    *,
    source_table: SourceLabelTable,
    release_labels: ReleaseLabels,
) -> CaseQC:
    """Draw the QC pictures of one prepared case into ``out_dir``.

    Parameters
    ----------
    case
        The converted case (its CT is the "before" of the defacing views).
    prepared
        The same case prepared for release: the CT, PET and label maps drawn.
    out_dir
        Where ``<name>.png`` and ``<name>.thumb.png`` go (usually
        ``StatePaths.qc_dir(case.key)``, inside the report folder); other
        PNGs there, left from an earlier rendering, are removed.
    source_table
        Gives the label colours (``recommendedDisplayRGBValue``).
    release_labels
        The names of the release label values (colours are found by name).

    Returns
    -------
    CaseQC
        The pictures written (full size and thumbnail, with sha256 and their
        placement in world space) and the numbers shown beside them.  Not
        recorded here: :class:`QCStage` does, in ``state.qc_record(key)``.

    Raises
    ------
    ValueError
        When ``prepared`` is not the preparation of ``case``.
    UnreadableError
        When a volume is missing, differs from the sha256 of its record, or
        the converted and prepared CT of a defaced case differ in shape.
    """
    if prepared.StudyInstanceUID != case.StudyInstanceUID or prepared.site != case.site:
        raise ValueError(f"prepared case {prepared.key} is not the preparation of case {case.key}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = qc_fingerprint(case, prepared, source_table=source_table, release_labels=release_labels)

    ct_read = _read_ct(prepared.ct, "CT")
    ct, ct_stored, ct_affine, body, centre = (ct_read.volume, ct_read.stored, ct_read.affine, ct_read.body,
                                              ct_read.centroid)
    pt, _, _ = _read_volume(prepared.pt, "PET")
    coronal = _frame(_X, _Z, ct.bounds(_X), ct.bounds(_Z), FULL_SIZE, fixed=centre[_Y])
    sagittal = _frame(_Y, _Z, ct.bounds(_Y), ct.bounds(_Z), FULL_SIZE, fixed=centre[_X])
    pet_mip = _projection(pt.data, coronal.axis, np.maximum)
    pet_top = _pet_window(pet_mip)
    ct_coronal = _slice(ct, coronal, -1000.0)

    pictures = [
        _write_picture(out_dir, "pet-mip-coronal", "PET maximum-intensity projection (coronal), CT body "
                       "outline in blue", _mip_picture(pet_mip, pt, body, coronal, pet_top), coronal),
        _write_picture(out_dir, "fusion-coronal", "PET over CT (coronal slice through the body centroid), CT "
                       "body outline in green", _fusion_picture(ct_coronal, pt, coronal, pet_top), coronal),
    ]

    # every category's label boundaries on a coronal and a sagittal CT slice, one map at a time
    views = {
        "coronal": (coronal, _rgb(_grey(ct_coronal, BODY_WINDOW))),
        "sagittal": (sagittal, _rgb(_grey(_slice(ct, sagittal, -1000.0), BODY_WINDOW))),
    }
    brain = release_labels.values_by_name("Organs").get("brain") if not prepared.defaced else None
    brain_head = None
    from_table = 0
    for category in CATEGORIES:
        lut, coloured = label_colours(category, release_labels, source_table)
        from_table += coloured
        labels, head = _label_slices(prepared.labels[category], f"{category} label map",
                                     {view: frame for view, (frame, _) in views.items()},
                                     brain=brain if category == "Organs" else None)
        brain_head = head or brain_head
        for view, (_, rgb) in views.items():
            edge = _edges(labels[view], width=LABEL_LINE)
            rgb[edge] = lut[labels[view][edge]]
    pictures += [
        _write_picture(out_dir, f"ct-labels-{view}", f"CT ({view} slice through the body centroid) with the "
                       "label boundaries of every category", rgb, frame)
        for view, (frame, rgb) in views.items()
    ]

    # the head as released and, for a defaced case, before
    cylinder = prepared.cylinder if prepared.defaced else None
    head = _head_from_cylinder(cylinder) if cylinder is not None else brain_head
    face_blanked = 0
    if head is not None:
        frames = dict(zip(("sagittal", "axial"), _head_frames(head), strict=True))
        pictures += [
            _write_picture(out_dir, f"head-{view}-after", f"Head ({view}) as released, "
                           + ("defacing cylinder in yellow" if cylinder else "not defaced"),
                           _head_picture(_slice(ct, frame, -1000.0), frame, cylinder), frame)
            for view, frame in frames.items()
        ]
        if cylinder is not None:
            if prepared.head_before is None:
                raise UnreadableError(f"prepared case {prepared.key} has no head cube before defacing (prepared by "
                                      "an older version): prepare the case again")
            cube, cube_stored, cube_affine = _read_volume(prepared.head_before, "CT head before defacing")
            face_blanked = int(np.count_nonzero(cube_stored != ct_stored[_box_in(cube_affine, cube_stored.shape,
                                                                                  ct_affine, ct_stored.shape)]))
            before = {view: _slice(cube, frame, -1000.0) for view, frame in frames.items()}
            pictures += [
                _write_picture(out_dir, f"head-{view}-before", f"Head ({view}) before defacing, cylinder in "
                               "yellow", _head_picture(before[view], frame, cylinder), frame)
                for view, frame in frames.items()
            ]
    pictures.sort(key=lambda picture: PICTURE_NAMES.index(picture.name))
    _remove_stale(out_dir, pictures)

    total = sum(len(release_labels.categories[c]) for c in CATEGORIES)
    colours = "palette" if from_table == 0 else COLOUR_COLUMN if from_table == total else "mixed"
    pet_inside = _pet_inside_body(pt, body)
    logger.info("case %s: %d QC pictures; PET activity inside the CT body %.1f%%; label colours: %s",
                prepared.key, len(pictures), 100 * pet_inside, colours)
    return CaseQC(
        site=prepared.site,
        StudyInstanceUID=prepared.StudyInstanceUID,
        fingerprint=fingerprint,
        images=tuple(pictures),
        defaced=prepared.defaced,
        head_view=head.source if head is not None else "none",
        colours=colours,
        body_centroid=centre,
        pet_max=float(pet_mip.max()) if pet_mip.size else 0.0,
        pet_inside_body=round(pet_inside, 6),
        face_voxels_blanked=face_blanked,
    )


def _remove_stale(out_dir: Path, pictures: Iterable[QCImage]) -> None:
    keep = {Path(f.path).name for p in pictures for f in (p.full, p.thumbnail)}
    for path in out_dir.glob("*.png"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class QCStage(CaseStage[CaseQC]):
    """The QC pictures of one prepared case (upstream: ``(ConvertedCase, PreparedCase)``).

    Pictures go to ``state.qc_dir(key)`` (inside the report folder), the
    record to ``state.qc_record(key)``.  A case whose volumes cannot be read
    or differ from their records is held back (``unreadable``), as
    :class:`~curation.stage.CaseStage` does for any stage's data problem.

    Attributes
    ----------
    state
        The state folder.
    release_labels, source_table
        The release label set and the source label table (label colours).
    """

    name: ClassVar[str] = "qc"
    phase: ClassVar[Phase] = Phase.BUILD
    version: ClassVar[int] = QC_VERSION
    record_type: ClassVar[type] = CaseQC
    done: ClassVar[str] = "rendered"
    done_event: ClassVar[str] = "case-qc-rendered"
    input_name: ClassVar[str] = "prepared"

    state: StatePaths
    release_labels: ReleaseLabels
    source_table: SourceLabelTable

    def record_path(self, subject: StudySubject) -> Path:
        """``qc/<key>.json``."""
        return self.state.qc_record(subject.key)

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        """What the pictures are drawn from (:func:`qc_inputs`)."""
        case, prepared = upstream[:2]
        return qc_inputs(case, prepared, source_table=self.source_table, release_labels=self.release_labels)

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> CaseQC:
        """Draw the pictures (:func:`render_case_qc`)."""
        case, prepared = upstream[:2]
        qc = render_case_qc(case, prepared, self.state.qc_dir(case.key), source_table=self.source_table,
                            release_labels=self.release_labels)
        return dataclasses.replace(qc, fingerprint=fingerprint)

    def outputs(self, record: CaseQC) -> dict[str, PNGFile]:
        """Every picture, full size and thumbnail (:func:`qc_outputs`)."""
        return qc_outputs(record)

    def parameters(self, record: CaseQC) -> dict[str, Any]:
        """The numbers shown beside the pictures."""
        return {
            "pictures": [image.name for image in record.images],
            "head_view": record.head_view,
            "colours": record.colours,
            "pet_inside_body": record.pet_inside_body,
            "face_voxels_blanked": record.face_voxels_blanked,
        }
