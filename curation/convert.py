"""DICOM series -> NIfTI.  The only module that imports dicom2nifti.

What dicom2nifti does here, and what it does not:

* Its settings are process-global; :func:`configure_dicom2nifti` sets every one
  explicitly before each conversion: its own validations are off (our
  :mod:`curation.geometry` already ran them, with our reason codes), no
  resampling, no forced reads.  We never call its directory readers, so it
  never copies source files to a temporary folder.
* It computes the affine: :func:`dicom2nifti.common.create_affine` on the stack
  sorted along the slice normal (its own ``get_grouped_dicoms`` sorts by
  InstanceNumber, which scanners do not always write in spatial order).
* It does not decode the pixels either: pydicom does, through the pixel-data
  plugins the project declares (see the README's "Compressed and enhanced
  DICOM"), so every transfer syntax a site sends decodes on a fresh install.
* It does not assemble the voxels.  ``common.get_volume_pixeldata`` deep-copies
  every dataset and builds a float64 block whose dtype is promoted slice by
  slice; the result is right but costs a copy of the whole series and twice the
  memory.  We decode each slice once and apply *that slice's* RescaleSlope and
  RescaleIntercept straight into the final dtype (CT int16 HU after a range
  check, PET float32 Bq/mL), which is also the point where a per-slice PET
  scale could be lost: every slice's own pair is used, never the first one's.

The NIfTI header carries geometry only: descrip, aux_file, intent_name and
db_name are empty, there are no extensions, qform and sform are the scanner
affine.  :func:`encode_series` makes the file's deterministic gzip bytes in
memory (:func:`curation.nifti.compress_nifti`), :func:`convert_series` also
writes them, atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from curation.dicomfile import PixelDataLocation, pixel_data_problem, plain_pixel_format
from curation.errors import ConversionFailedError, CurationError, UnreadableError
from curation.frames import expand_frames
from curation.geometry import SliceStack, check_series_geometry
from curation.model import ImageFile, Modality
from curation.nifti import (
    CompressedNifti,
    compress_nifti,
    compress_slabs,
    member_planes,
    write_compressed,
)

logger = logging.getLogger(__name__)

_INT16 = np.iinfo(np.int16)
#: |RescaleSlope| and |RescaleIntercept| above this cannot be real (CT: ~1 and ~-1024; PET: Bq/mL per count)
_RESCALE_LIMIT = 1e12
#: The largest volume one series may become (a 1024 x 1024 CT of 2000 slices is 4 GiB as int16).
MAX_VOLUME_BYTES = 8 << 30


def configure_dicom2nifti() -> None:
    """Set every process-global dicom2nifti setting this module relies on.

    dicom2nifti (and the SciPy it imports: about 0.3 s) is imported here, when a
    series is converted, not when a flow starts.
    """
    import dicom2nifti.settings as d2n_settings

    d2n_settings.disable_validate_slice_increment()
    d2n_settings.disable_validate_orientation()
    d2n_settings.disable_validate_orthogonal()
    d2n_settings.disable_validate_slicecount()
    d2n_settings.disable_validate_instance_number()
    d2n_settings.disable_validate_multiframe_implicit()
    d2n_settings.disable_pydicom_read_force()
    d2n_settings.disable_resampling()


def series_label(datasets: Sequence[Dataset]) -> str:
    """How messages name the series of ``datasets``.

    Parameters
    ----------
    datasets
        Instances of one series (the first one is read; may be empty).

    Returns
    -------
    str
        ``"<Modality> series <SeriesInstanceUID> ('<SeriesDescription>')"``,
        ``?`` for what is missing.
    """
    first = datasets[0] if datasets else Dataset()
    return (
        f"{first.get('Modality', '?')} series {first.get('SeriesInstanceUID', '?')} "
        f"({str(first.get('SeriesDescription', '')) or 'no description'!r})"
    )


def _rescale(ds: Dataset, label: str, index: int) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError) as exc:
        raise ConversionFailedError(
            f"{label}: slice {index}: RescaleSlope {ds.get('RescaleSlope')!r} / RescaleIntercept "
            f"{ds.get('RescaleIntercept')!r} is not a number"
        ) from exc
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise ConversionFailedError(f"{label}: slice {index}: RescaleSlope {slope!r} is not usable")
    if abs(slope) > _RESCALE_LIMIT or abs(intercept) > _RESCALE_LIMIT:
        raise ConversionFailedError(
            f"{label}: slice {index}: RescaleSlope {slope!r} / RescaleIntercept {intercept!r} is beyond "
            f"{_RESCALE_LIMIT:g} in size: no stored value maps to a Hounsfield unit or an activity with it"
        )
    return slope, intercept


def native_pixels(ds: Dataset, shape: tuple[int, int]) -> np.ndarray | None:
    """The pixels of a plain 16-bit single-frame slice, read straight from PixelData; else None.

    What pydicom's ``pixel_array`` gives for such a slice (unused high bits
    masked off, or sign-extended when PixelRepresentation is 1) without its
    per-call decoder set-up, which costs more than the copy itself.  Anything
    else (compressed, other bit depths, colour, multi-frame, a length that does
    not match) returns None and goes through ``pixel_array``.

    Parameters
    ----------
    ds
        A slice read with its pixel data.
    shape
        (Rows, Columns) expected.

    Returns
    -------
    numpy.ndarray or None
        ``uint16`` or ``int16`` of ``shape``, a new array.
    """
    plain = plain_pixel_format(ds)
    data = ds.get("PixelData") if plain is not None else None
    count = shape[0] * shape[1]
    if plain is None or not isinstance(data, bytes) or len(data) not in (2 * count, 2 * count + 1):
        return None
    signed, stored = plain
    arr = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=count).reshape(shape).astype(
        np.int16 if signed else np.uint16
    )
    return _stored_bits(arr, signed, stored)


def _stored_bits(arr: np.ndarray, signed: bool, stored: int) -> np.ndarray:
    """Apply pydicom's handling of the bits above BitsStored to ``arr`` in place (and return it)."""
    if stored < 16:
        if signed:
            shift = np.int16(16 - stored)
            arr <<= shift
            arr >>= shift
        else:
            arr &= np.uint16((1 << stored) - 1)
    return arr


def _located_pixels(
    location: PixelDataLocation, into: np.ndarray, label: str, index: int, ds: Dataset
) -> np.ndarray:
    """Read a located slice's stored values into ``into`` (int16 memory of its shape); the values as ``native_pixels``.

    Returns ``into`` viewed as uint16 or int16 (PixelRepresentation), the
    bits above BitsStored handled.
    """
    raw = into.view(np.int16 if location.signed else np.uint16)
    try:
        location.read_into(memoryview(raw.reshape(-1)))  # type: ignore[arg-type]
    except OSError as exc:
        raise UnreadableError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}): pixel data cannot be read: {exc}"
        ) from exc
    return _stored_bits(raw, location.signed, location.bits_stored)


def _pixels(ds: Dataset, label: str, index: int, shape: tuple[int, int]) -> np.ndarray:
    # the header's sizes against the pixel data before anything is decoded or allocated
    problem = pixel_data_problem(ds)
    if problem is not None:
        raise ConversionFailedError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}): pixel data cannot be "
            f"decoded: {problem}"
        )
    fast = native_pixels(ds, shape)
    if fast is not None:
        return fast
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad pixel data
        raise ConversionFailedError(
            f"{label}: slice {index} (InstanceNumber {ds.get('InstanceNumber')}): pixel data cannot be "
            f"decoded: {type(exc).__name__}: {exc}"
        ) from exc
    if arr.shape != shape:
        raise ConversionFailedError(
            f"{label}: slice {index}: pixel array has shape {arr.shape}, expected {shape} (Rows, Columns)"
        )
    return arr


def _check_volume(stack: SliceStack, label: str, itemsize: int) -> None:
    """Refuse a series whose output volume would be larger than :data:`MAX_VOLUME_BYTES`."""
    size = len(stack.datasets) * stack.rows * stack.columns * itemsize
    if size > MAX_VOLUME_BYTES:
        raise ConversionFailedError(
            f"{label}: {len(stack.datasets)} slices of {stack.rows} x {stack.columns} make a volume of "
            f"{size / (1 << 30):.1f} GiB, more than the {MAX_VOLUME_BYTES >> 30} GiB a series may have"
        )


def _ct_slabs(stack: SliceStack, label: str, located: dict[int, PixelDataLocation], planes: int) -> Iterator[np.ndarray]:
    """The CT's HU volume, ``planes`` slices at a time: each (slice, row, column) slab C-ordered, made as it is asked for."""
    n, shape = len(stack.datasets), (stack.rows, stack.columns)
    _check_volume(stack, label, 2)
    work = np.empty(shape, dtype=np.float64)
    for first in range(0, n, planes):
        out = np.empty((min(planes, n - first), *shape), dtype=np.int16)
        for k in range(first, first + len(out)):
            _ct_slice(stack.datasets[k], label, k, located, out[k - first], work)
        yield out


def _ct_slice(ds: Dataset, label: str, k: int, located: dict[int, PixelDataLocation], out: np.ndarray,
              work: np.ndarray) -> None:
    """Slice ``k`` of the series in HU into ``out`` (int16 memory of its shape), its range checked."""
    shape = out.shape
    slope, intercept = _rescale(ds, label, k)
    location = located.get(id(ds))
    # a located slice is read straight into its place in the slab and rescaled there
    raw = _pixels(ds, label, k, shape) if location is None else _located_pixels(location, out, label, k, ds)
    whole = slope == 1.0 and intercept.is_integer()
    if whole:  # the usual CT slice: the range from the stored values, then one pass into the slab
        lo, hi = int(raw.min()) + int(intercept), int(raw.max()) + int(intercept)
    else:
        np.multiply(raw, slope, out=work)
        work += intercept
        np.rint(work, out=work)
        lo, hi = work.min(), work.max()
    if lo < _INT16.min or hi > _INT16.max:
        raise ConversionFailedError(
            f"{label}: slice {k}: HU range [{lo}, {hi}] does not fit int16 "
            f"(RescaleSlope {slope}, RescaleIntercept {intercept})"
        )
    if whole and location is not None:
        # in place, modulo 2**16: the sum is in int16's range, so its 16 bits are the HU value
        np.add(raw.view(np.uint16), np.uint16(int(intercept) % 65536), out=raw.view(np.uint16))
    elif whole:
        np.add(raw, int(intercept), out=out, dtype=np.int32, casting="unsafe")  # in range: exact
    else:
        out[...] = work


def _pet_block(stack: SliceStack, label: str, located: dict[int, PixelDataLocation]) -> np.ndarray:
    n, shape = len(stack.datasets), (stack.rows, stack.columns)
    _check_volume(stack, label, 4)
    out = np.empty((n, *shape), dtype=np.float32)
    work = np.empty(shape, dtype=np.float64)
    stored = np.empty(shape, dtype=np.int16)
    for k, ds in enumerate(stack.datasets):
        slope, intercept = _rescale(ds, label, k)  # this slice's own scale, never slice 0's
        location = located.get(id(ds))
        raw = _pixels(ds, label, k, shape) if location is None else _located_pixels(location, stored, label, k, ds)
        np.multiply(raw, slope, out=work)
        work += intercept
        out[k] = work
    return out


def encode_series(
    datasets: Sequence[Dataset],
    *,
    modality: Modality,
    pixel_data: Sequence[PixelDataLocation | None] | None = None,
) -> CompressedNifti:
    """Convert one series (datasets read with pixel data) to NIfTI bytes, in memory.

    Parameters
    ----------
    datasets
        Every slice of the series, in any order: single-frame instances,
        enhanced multi-frame objects (each frame is a slice, see
        :mod:`curation.frames`) or their frame views; pixel data in any
        transfer syntax pydicom's installed plugins decode.
    modality
        ``Modality.CT`` (int16 HU) or ``Modality.PT`` (float32 Bq/mL).
    pixel_data
        For each dataset, where its pixel data lies when it was read without
        it (:func:`curation.dicomfile.read_dicom_header`), else None; the
        located pixel data is read straight into the volume.  The voxels are
        the same as from the datasets read whole.

    Returns
    -------
    CompressedNifti
        The ``.nii.gz`` bytes, their sha256, shape, dtype and RAS+ affine
        (:func:`curation.nifti.write_compressed` writes them).

    Raises
    ------
    CurationError
        The geometry errors of :func:`curation.geometry.check_series_geometry`,
        or :class:`ConversionFailedError` naming the series for anything the
        conversion itself cannot do.
    """
    if not datasets:
        raise ConversionFailedError(f"{modality.value}: no datasets to convert")
    if pixel_data is not None and len(pixel_data) != len(datasets):
        raise ValueError(f"{len(pixel_data)} pixel data locations for {len(datasets)} datasets")
    # by identity: the stack holds the same dataset objects, sorted
    located = {id(ds): where for ds, where in zip(datasets, pixel_data or (), strict=False) if where is not None}
    label = series_label(datasets)
    stack = check_series_geometry(expand_frames(datasets, series_label=label), series_label=label)
    configure_dicom2nifti()
    import dicom2nifti.common as d2n_common
    from dicom2nifti.exceptions import ConversionError, ConversionValidationError

    try:
        affine, _ = d2n_common.create_affine(list(stack.datasets))
    except (ConversionError, ConversionValidationError) as exc:
        raise ConversionFailedError(f"{label}: dicom2nifti cannot build the affine: {exc}") from exc
    affine = np.asarray(affine, dtype=np.float64)
    try:
        if modality is Modality.CT:
            # made and compressed a member's planes at a time: the volume is never whole in memory
            shape = (stack.columns, stack.rows, len(stack.datasets))
            slabs = _ct_slabs(stack, label, located, member_planes(shape, 2))
            volume = compress_slabs(slabs, shape, affine, dtype=np.int16)
            logger.info("%s: %d slices -> %s", label, len(stack.datasets), volume.shape)
            return volume
        if modality is Modality.PT:
            block = _pet_block(stack, label, located)
        else:  # pragma: no cover - Modality has two members
            raise ValueError(f"unknown modality {modality!r}")
    except CurationError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ConversionFailedError(f"{label}: {type(exc).__name__}: {exc}") from exc

    # (slice, row, column) C-order -> (column, row, slice) view in Fortran order: NIfTI's
    # i runs along a row (DICOM column index), j down the columns, k along the normal.
    volume = compress_nifti(block.transpose(2, 1, 0), affine, dtype=block.dtype.type)
    logger.info("%s: %d slices -> %s", label, len(stack.datasets), volume.shape)
    return volume


def convert_series(datasets: Sequence[Dataset], out_path: Path, *, modality: Modality) -> ImageFile:
    """Convert one series (datasets read with pixel data) to a NIfTI file.

    Parameters
    ----------
    datasets
        Every slice of the series, in any order: single-frame instances,
        enhanced multi-frame objects (each frame is a slice, see
        :mod:`curation.frames`) or their frame views; pixel data in any
        transfer syntax pydicom's installed plugins decode.
    out_path
        Where to write the ``.nii.gz`` (atomically).
    modality
        ``Modality.CT`` (int16 HU) or ``Modality.PT`` (float32 Bq/mL).

    Returns
    -------
    ImageFile
        Path, sha256 of the written file, shape, dtype and RAS+ affine.

    Raises
    ------
    CurationError
        The geometry errors of :func:`curation.geometry.check_series_geometry`,
        or :class:`ConversionFailedError` naming the series for anything the
        conversion itself cannot do.
    """
    if not datasets:
        raise ConversionFailedError(f"{modality.value}: no datasets to convert to {out_path.name}")
    return write_compressed(encode_series(datasets, modality=modality), out_path)
