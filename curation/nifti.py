"""Writing and reading NIfTI volumes the one way every stage does.

Writing: the header carries geometry only (descrip, aux_file, intent_name and
db_name are empty, no extensions, no scaling, qform and sform are the scanner
affine).  Files are written atomically and hashed while they are written, so the
same volume always gives the same bytes and the file is never read back;
:func:`compress_nifti` makes the bytes in memory, so a stage can compress a volume
before it knows whether it will write it (:func:`write_compressed`).

Compression is ISA-L's (the ``isal`` package), the same gzip format as zlib's
at 3-4 times the speed, and it releases the GIL.  The uncompressed NIfTI stream
(header, then the voxels) is compressed in independent blocks of
:data:`GZIP_BLOCK` bytes at fixed offsets of that stream, each with the 32 KiB
before it as its dictionary (``isal.igzip_threaded``, like pigz), so the blocks
are compressed on :data:`GZIP_THREADS` threads and the bytes do not depend on
the number of threads.  The gzip header has no file name and mtime 0.

Deterministic bytes across machines: the compressed bytes depend on the volume,
:data:`GZIP_LEVEL`, :data:`GZIP_BLOCK` and the ISA-L release, which the pinned
``isal`` wheel fixes (``isal==1.9.1`` bundles ISA-L 2.32.1).  At levels 1 and 2
ISA-L's match finder has one algorithm in its SSE4.2, AVX and AVX2 kernels (a
CRC32C hash); the AVX-512 code it adds is the Huffman encoder of the same
symbols with the same tables.  So every x86-64 CPU with SSE4.2 (x86-64-v2:
every server since 2009) writes the same bytes.  Level 3 is not used: it picks
another match finder on AVX2 CPUs.  A CPU without SSE4.2 falls back to C code
with another hash, and aarch64 has kernels of its own; a release built there
would be valid but not byte-identical (``tests/curation/test_nifti.py`` pins the
bytes of a known volume, so such a machine fails the test suite loudly).

Reading: :func:`load_nifti` reads a file once (hashing its bytes) and inflates it
with ISA-L straight into the volume's own buffer, so a volume costs its own size.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded, isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import ArrayLike

from curation.atomic import atomic_write_bytes
from curation.model import ImageFile

#: ISA-L compression level of every written .nii.gz.  Measured on the bench phantom's CT
#: (512x512x320 int16): 62.8 MB at level 2 against 61.5 MB for zlib at level 1, in a
#: quarter of zlib's CPU time; level 1 is as fast and 1 % larger; level 3 is CPU-dependent.
GZIP_LEVEL = 2
#: Uncompressed bytes per independently compressed block (0.6 % larger than one stream).
GZIP_BLOCK = 1 << 20
#: Threads compressing the blocks of one file (the bytes do not depend on it).
GZIP_THREADS = 2

#: NIfTI header fields that could carry text from a source; always written empty.
HEADER_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

#: What nibabel raises for a file that is not a readable NIfTI (a bad gzip stream included).
NIFTI_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, isal_zlib.error)


def clean_header(array: np.ndarray, affine: ArrayLike, dtype: type) -> nib.Nifti1Header:
    """The header :func:`write_nifti` writes for ``array`` (geometry only, no scaling, no text).

    Parameters
    ----------
    array
        The volume (its shape is recorded).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    dtype
        The stored voxel type.

    Returns
    -------
    nibabel.Nifti1Header
        A single-file header whose data start at byte 352.
    """
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    for field in HEADER_TEXT_FIELDS:
        hdr[field] = b""
    hdr.extensions.clear()
    img.set_sform(img.affine, code="scanner")
    img.set_qform(img.affine, code="scanner")
    img.update_header()
    hdr = img.header
    hdr.set_data_offset(352)
    return hdr


def _payload_pieces(header: bytes, array: np.ndarray, size: int) -> Iterator[bytes | memoryview]:
    """The NIfTI stream (``header`` then the voxels in Fortran order) in pieces of exactly ``size`` bytes.

    Fixed offsets make the compressed blocks independent of how the stream was
    produced; a Fortran-ordered volume is not copied.
    """
    voxels = np.asfortranarray(array)
    data = memoryview(voxels.T).cast("B") if voxels.size else memoryview(b"")  # .T of F-order is C-contiguous
    first = size - len(header)
    yield header + bytes(data[:first])
    for start in range(first, len(data), size):
        yield data[start : start + size]


@dataclass(frozen=True)
class CompressedNifti:
    """A volume's ``.nii.gz`` bytes made in memory by :func:`compress_nifti`, not yet written.

    Attributes
    ----------
    data
        The file's bytes.
    sha256
        Their sha256.
    shape, dtype, affine
        As :class:`~curation.model.ImageFile` records them.
    """

    data: bytes
    sha256: str
    shape: tuple[int, ...]
    dtype: str
    affine: tuple[tuple[float, ...], ...]


def compress_nifti(data: ArrayLike, affine: ArrayLike, *, dtype: type) -> CompressedNifti:
    """The ``.nii.gz`` bytes of ``data`` with ``affine`` and a clean header (in memory).

    Parameters
    ----------
    data
        The volume, already of type ``dtype`` (no conversion happens here).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    dtype
        ``np.int16``, ``np.float32`` or ``np.uint8``.

    Returns
    -------
    CompressedNifti
        The bytes and what a record says of them.

    Raises
    ------
    ValueError
        When ``data`` is not of type ``dtype``.
    """
    array = np.asanyarray(data)
    if array.dtype != np.dtype(dtype):
        raise ValueError(f"the volume is {array.dtype}, expected {np.dtype(dtype)}")
    hdr = clean_header(array, affine, dtype)
    stream = io.BytesIO()
    hdr.write_to(stream)  # 348 bytes and the 4-byte "no extensions" flag
    header = stream.getvalue()
    sink = io.BytesIO()
    with igzip_threaded.open(
        sink, "wb", compresslevel=GZIP_LEVEL, threads=GZIP_THREADS, block_size=GZIP_BLOCK
    ) as gz:
        for piece in _payload_pieces(header, array, GZIP_BLOCK):
            gz.write(piece)
    compressed = sink.getvalue()
    return CompressedNifti(
        data=compressed,
        sha256=hashlib.sha256(compressed).hexdigest(),
        shape=tuple(int(n) for n in array.shape),
        dtype=str(np.dtype(dtype)),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64)),
    )


def write_compressed(volume: CompressedNifti, path: str | Path) -> ImageFile:
    """Write a :func:`compress_nifti` result to ``path`` atomically.

    Parameters
    ----------
    volume
        The bytes and their record.
    path
        The ``.nii.gz`` to write.

    Returns
    -------
    ImageFile
        Path, sha256 of the written bytes, shape, dtype and affine.
    """
    atomic_write_bytes(path, volume.data)
    return ImageFile(path=str(path), sha256=volume.sha256, shape=volume.shape, dtype=volume.dtype,
                     affine=volume.affine)


def write_nifti(data: ArrayLike, affine: ArrayLike, path: str | Path, *, dtype: type) -> ImageFile:
    """Write ``data`` with ``affine`` to ``path`` (``.nii.gz``) atomically, with a clean header.

    Parameters
    ----------
    data
        The volume, already of type ``dtype`` (no conversion happens here).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    path
        The ``.nii.gz`` to write.
    dtype
        ``np.int16``, ``np.float32`` or ``np.uint8``.

    Returns
    -------
    ImageFile
        Path, sha256 of the written bytes, shape, dtype and affine.

    Raises
    ------
    ValueError
        When ``data`` is not of type ``dtype``.
    """
    try:
        volume = compress_nifti(data, affine, dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return write_compressed(volume, path)


@dataclass(frozen=True)
class LoadedNifti:
    """A NIfTI file read by :func:`load_nifti`.

    Attributes
    ----------
    image
        The image.  Read with its voxels, its ``dataobj`` is the unscaled voxel
        array (writable, Fortran order, in memory); read without, nibabel's lazy
        proxy over the compressed bytes (shape, affine and header are there).
    sha256
        The sha256 of the file's bytes (what a stage records for it).
    """

    image: nib.Nifti1Image | nib.Nifti2Image
    sha256: str

    @property
    def array(self) -> np.ndarray:
        """The stored voxel values, unscaled (``scl_slope`` / ``scl_inter`` not applied)."""
        return np.asanyarray(self.image.dataobj)

    def scaled(self) -> np.ndarray:
        """The voxel values with the header's ``scl_slope`` / ``scl_inter`` applied (if any)."""
        slope, inter = self.image.header.get_slope_inter()
        if (slope, inter) in ((None, None), (1.0, 0.0)):
            return self.array
        return self.array * (1.0 if slope is None else slope) + (0.0 if inter is None else inter)


def _image_class(first: bytes) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    """NIfTI-1 or NIfTI-2 from the header's ``sizeof_hdr`` (either byte order)."""
    for byteorder in ("little", "big"):
        size = int.from_bytes(first[:4], byteorder)
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    raise ImageFileError(f"not a NIfTI-1 or NIfTI-2 header (sizeof_hdr bytes {first[:4].hex()})")


def _read_exact(stream: BinaryIO, size: int, path: str | Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"{path}: the file ends after {len(data)} of {size} header bytes")
    return data


def load_nifti(
    path: str | Path, *, voxels: bool = True, check: Callable[[tuple[int, ...], np.dtype], None] | None = None
) -> LoadedNifti:
    """Read a ``.nii.gz`` (or ``.nii``) file: its bytes once, hashed, inflated by ISA-L.

    The voxels are inflated straight into the array's own buffer, 1 MiB at a
    time on a second thread, so a volume costs its own size in memory (plus the
    compressed file while it is read).

    Parameters
    ----------
    path
        The file (gzip-compressed or not, NIfTI-1 or NIfTI-2, one file).
    voxels
        False to leave the voxels compressed (only the header and the hash
        are wanted): the image is then nibabel's lazy one.
    check
        Called with the header's data shape and voxel type before any voxel
        is inflated or any memory for them is taken (a header may claim any
        size); it raises to refuse the file.

    Returns
    -------
    LoadedNifti
        The image and the sha256 of the file.

    Raises
    ------
    OSError
        When the file cannot be read.
    nibabel.filebasedimages.ImageFileError, EOFError, ValueError, isal.isal_zlib.error
        When it is not a readable NIfTI file (damaged gzip stream, short data,
        bad header); see :data:`NIFTI_READ_ERRORS`.
    """
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    compressed = raw[:2] == b"\x1f\x8b"
    if not voxels:
        source: BinaryIO = igzip.IGzipFile(fileobj=io.BytesIO(raw), mode="rb") if compressed else io.BytesIO(raw)
        klass = _image_class(source.read(4))
        source.seek(0)
        lazy = klass.from_stream(source)
        lazy.set_filename(str(path))
        return LoadedNifti(lazy, digest)
    stream: BinaryIO = igzip_threaded.open(io.BytesIO(raw), "rb", threads=1) if compressed else io.BytesIO(raw)
    with stream:
        first = _read_exact(stream, 4, path)
        klass = _image_class(first)
        sizeof = klass.header_class.template_dtype.itemsize
        head = first + _read_exact(stream, sizeof - 4, path)
        offset = int(klass.header_class(head, check=False).get_data_offset())
        head += _read_exact(stream, max(offset - sizeof, 0), path)
        header = klass.header_class.from_fileobj(io.BytesIO(head))  # the header and its extensions, checked
        if check is not None:
            check(tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype())
        array = np.empty(header.get_data_shape(), dtype=header.get_data_dtype(), order="F")
        if array.size:
            target = memoryview(array.T).cast("B")  # the transpose of Fortran order is C-contiguous
            got = stream.readinto(target)
            if got != array.nbytes:
                raise EOFError(f"{path}: {got} bytes of voxel data, the header says {array.nbytes}")
    del raw
    slope, inter = header.get_slope_inter()
    image = klass(array, header.get_best_affine(), header)
    # the in-memory image keeps the file's scaling (nibabel's constructor would drop it)
    if (slope, inter) not in ((None, None), (1.0, 0.0)):
        image.header.set_slope_inter(slope, inter)
    image.set_filename(str(path))
    return LoadedNifti(image, digest)
