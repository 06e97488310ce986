"""Reading one DICOM file within bounds: what a hostile file cannot make us do.

Sites' files are data, and a few bytes can claim a lot: a 400 KB Deflated
file can inflate to gigabytes, a header can claim a 65535 x 65535 image.  Every
file the index and ingest read goes through :func:`read_dicom_bytes` /
:func:`read_dicom_file`, which check sizes from the headers *before* anything
is allocated, inflated or decoded:

* Rows x Columns x NumberOfFrames x BitsAllocated/8 x SamplesPerPixel
  (:func:`declared_image_bytes`) must stay under :data:`MAX_IMAGE_BYTES` (an
  enhanced multi-frame CT of 2000 slices of 1024 x 1024 at 16 bits), and for
  the native (uncompressed) syntaxes it must be the length of PixelData
  (:func:`pixel_data_problem`), checked before the pixels are decoded;
* a file larger than :data:`MAX_FILE_BYTES` (that image and
  :data:`MAX_HEADER_BYTES` of header) is not read;
* a Deflated dataset (DeflatedExplicitVRLittleEndian, PS3.5 A.5) is inflated
  by us, with ``zlib.decompressobj(...).decompress(data, max_length)``:
  first :data:`HEADER_PEEK_BYTES`, from which the image size its header
  declares is read, then at most that size plus :data:`MAX_HEADER_BYTES`
  (pydicom would inflate it whole).  The inflated dataset is parsed as
  Explicit VR Little Endian and the file meta keeps the Deflated transfer
  syntax, so a valid Deflated CT converts.

A file that breaks a bound raises :class:`DicomBoundError` (a ``ValueError``)
whose message names the bound; the index skips the file, ingest rejects the
study naming it.  This module owns pydicom's reading quirks for the index and
ingest; the gate and the conversion take the datasets it returns.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

#: Rows x Columns x NumberOfFrames x BitsAllocated/8 x SamplesPerPixel of one file, at most
#: (an enhanced CT of 2000 slices of 1024 x 1024 at 16 bits; a single CT slice is 0.5-2 MiB).
MAX_IMAGE_BYTES = 4 << 30
#: What a dataset may hold besides its pixel data (an enhanced object's per-frame functional
#: groups are a few MB; a single-frame header a few KB).
MAX_HEADER_BYTES = 16 << 20
#: A file larger than this is not read.
MAX_FILE_BYTES = MAX_IMAGE_BYTES + MAX_HEADER_BYTES
#: A Deflated dataset is inflated this far first, to read the image size its header declares.
HEADER_PEEK_BYTES = 1 << 20

#: Transfer syntaxes whose PixelData is the plain pixel bytes (length checkable from the header).
NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: What a Deflated file's TransferSyntaxUID value holds (not found: the file is not Deflated).
_DEFLATED_UID_BYTES = DeflatedExplicitVRLittleEndian.encode("ascii")

#: What pydicom (and struct/zlib under it) raise for files that are not readable DICOM.
READ_ERRORS: tuple[type[BaseException], ...] = (
    pydicom.errors.InvalidDicomError,
    pydicom.errors.BytesLengthException,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    zlib.error,
)


#: What pydicom raises, and only pydicom, when it decodes a malformed element on first use
#: (an unknown VR, a value whose length does not fit its VR, a sequence item without a tag).
LAZY_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    NotImplementedError,
    pydicom.errors.BytesLengthException,
    struct.error,
    EOFError,
    UnicodeDecodeError,
    OSError,
    OverflowError,
)


class DicomBoundError(ValueError):
    """A file breaks one of this module's size bounds (the message names it)."""


def _mib(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


#: groups a dataset without preamble may start with: file meta, or the usual first groups
_BARE_START_GROUPS = (0x0002, 0x0008)


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file's first 132 bytes start DICOM: the preamble and ``DICM``, or a group 0002/0008 element."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and struct.unpack("<H", head[:2])[0] in _BARE_START_GROUPS


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _not_file_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def _file_meta(data: bytes) -> tuple[FileMetaDataset, bytes | None, int]:
    """The file meta group, the preamble (or None) and where the dataset starts."""
    fp = io.BytesIO(data)
    preamble = None
    if len(data) >= 132 and data[128:132] == b"DICM":
        preamble = data[:128]
        fp.seek(132)
    meta = FileMetaDataset(read_dataset(fp, False, True, stop_when=_not_file_meta))
    return meta, preamble, fp.tell()


def _before_pixel_module_end(tag: int, vr: str | None, length: int) -> bool:
    return tag > 0x0028FFFF  # Rows, Columns, NumberOfFrames, BitsAllocated... are in group 0028


def _declared_in(head: bytes) -> int | None:
    """The image size the start of an inflated (Explicit VR Little Endian) dataset declares, if it can tell."""
    try:
        ds = read_dataset(io.BytesIO(head), False, True, stop_when=_before_pixel_module_end)
        return declared_image_bytes(ds)
    except (*READ_ERRORS, UnicodeError, LookupError):
        return None


def _inflate(deflated: bytes) -> bytes:
    """Inflate a raw deflate stream no further than the image its header declares and a header allows.

    Raises
    ------
    DicomBoundError
        The stream inflates beyond :data:`MAX_HEADER_BYTES` plus the declared
        image size (itself at most :data:`MAX_IMAGE_BYTES`).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = [inflater.decompress(deflated, HEADER_PEEK_BYTES)]
    declared = _declared_in(out[0])
    limit = MAX_HEADER_BYTES + min(declared or 0, MAX_IMAGE_BYTES)
    size = len(out[0])
    while size <= limit and inflater.unconsumed_tail:
        chunk = inflater.decompress(inflater.unconsumed_tail, min(limit + 1 - size, 64 << 20))
        if not chunk:
            break
        out.append(chunk)
        size += len(chunk)
    if size > limit:
        what = f"the {_mib(declared)} image its header declares" if declared else "no image size in its header"
        raise DicomBoundError(
            f"the Deflated dataset inflates to more than {_mib(limit)} (from {_mib(len(deflated))}, with "
            f"{what}): more than the header allowance of {_mib(MAX_HEADER_BYTES)} and the image; "
            "not inflated further"
        )
    out.append(inflater.flush())
    return b"".join(out)


def read_dicom_bytes(
    data: bytes, *, stop_before_pixels: bool, specific_tags: list[str] | None = None
) -> tuple[Dataset, bytes]:
    """Parse a DICOM file held in memory, inflating a Deflated dataset within bounds.

    Parameters
    ----------
    data
        The whole file.
    stop_before_pixels, specific_tags
        As for :func:`pydicom.dcmread`.

    Returns
    -------
    tuple
        The dataset (its file meta as in the file) and the bytes it was parsed
        from: ``data`` itself, or for a Deflated file the preamble, file meta
        and inflated dataset (in which PixelData can be looked for).

    Raises
    ------
    pydicom.errors.InvalidDicomError
        The bytes do not start like DICOM (see :func:`looks_like_dicom`).
    DicomBoundError
        The Deflated dataset inflates beyond its declared image and
        :data:`MAX_HEADER_BYTES` (see :func:`_inflate`).
    Exception
        One of :data:`READ_ERRORS` for anything pydicom cannot read.
    """
    if not looks_like_dicom(data[:132]):
        raise pydicom.errors.InvalidDicomError(
            "not DICOM (no preamble/DICM marker and no dataset at the start)"
        )
    transfer_syntax = None
    # pydicom inflates when the file meta's TransferSyntaxUID is Deflated, and that value is
    # bytes of the file: without them anywhere, the file meta need not be parsed here first
    if _DEFLATED_UID_BYTES in data and (data[128:132] == b"DICM" or data[:2] == b"\x02\x00"):
        try:
            meta, preamble, start = _file_meta(data)
            transfer_syntax = meta.get("TransferSyntaxUID")
        except READ_ERRORS:
            transfer_syntax = None  # pydicom's own reading below decides (it retries odd file metas)
    if transfer_syntax != DeflatedExplicitVRLittleEndian:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
        )
        return ds, data
    inflated = _inflate(data[start:])
    # the same file with its dataset inflated, read as Explicit VR Little Endian (what the
    # inflated bytes are), then labelled with the file's own transfer syntax again
    plain_meta = FileMetaDataset(meta)
    plain_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write((preamble or b"\x00" * 128) + b"DICM")
    write_file_meta_info(buf, plain_meta, enforce_standard=False)
    plain = buf.getvalue() + inflated
    ds = pydicom.dcmread(
        io.BytesIO(plain), force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
    )
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds, plain


def read_dicom_file(path: str | Path, *, stop_before_pixels: bool) -> Dataset:
    """Read one file within the bounds of this module.

    Parameters
    ----------
    path
        The file.
    stop_before_pixels
        Leave out the pixel data.

    Returns
    -------
    pydicom.dataset.Dataset

    Raises
    ------
    DicomBoundError
        The file is larger than :data:`MAX_FILE_BYTES`, or its Deflated
        dataset inflates beyond its declared image and :data:`MAX_HEADER_BYTES`.
    Exception
        One of :data:`READ_ERRORS` for anything pydicom cannot read.
    """
    size = Path(path).stat().st_size
    if size > MAX_FILE_BYTES:
        raise DicomBoundError(f"the file has {_mib(size)}, more than the {_mib(MAX_FILE_BYTES)} a file may have")
    ds, _ = read_dicom_bytes(Path(path).read_bytes(), stop_before_pixels=stop_before_pixels)
    return ds


def header_int(ds: Dataset, keyword: str, *, default: int | None = None) -> int | None:
    """An integer attribute (US, IS, ...) of ``ds``; ``default`` when absent or empty.

    Raises
    ------
    ValueError
        The value is not a whole number (names the attribute and value).
    """
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)  # IS may be "512.0"; US is an int already
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:35] + "...'"
        raise ValueError(f"{keyword} {shown} is not a whole number") from None


def declared_image_bytes(ds: Dataset) -> int | None:
    """Rows x Columns x NumberOfFrames x BitsAllocated/8 x SamplesPerPixel, or None without Rows/Columns.

    Raises
    ------
    ValueError
        One of these attributes is not a whole number, or is negative.
    """
    rows, columns = header_int(ds, "Rows"), header_int(ds, "Columns")
    if rows is None or columns is None:
        return None
    frames = header_int(ds, "NumberOfFrames", default=1)
    bits = header_int(ds, "BitsAllocated", default=16)
    samples = header_int(ds, "SamplesPerPixel", default=1)
    for keyword, value in (("Rows", rows), ("Columns", columns), ("NumberOfFrames", frames),
                           ("BitsAllocated", bits), ("SamplesPerPixel", samples)):
        if value < 0:  # type: ignore[operator]
            raise ValueError(f"{keyword} {value} is negative")
    pixels = rows * columns * frames * samples  # type: ignore[operator]
    if bits == 1:
        return (pixels + 7) // 8
    return pixels * ((bits + 7) // 8)  # type: ignore[operator]


def check_image_bound(ds: Dataset) -> None:
    """Refuse a header whose declared image is larger than :data:`MAX_IMAGE_BYTES`.

    Raises
    ------
    DicomBoundError
        Naming the declared dimensions and the bound.
    ValueError
        A dimension is not a whole number.
    """
    size = declared_image_bytes(ds)
    if size is not None and size > MAX_IMAGE_BYTES:
        raise DicomBoundError(
            f"Rows {ds.get('Rows')} x Columns {ds.get('Columns')} x NumberOfFrames "
            f"{ds.get('NumberOfFrames', 1)} x BitsAllocated {ds.get('BitsAllocated')}/8 x SamplesPerPixel "
            f"{ds.get('SamplesPerPixel', 1)} declare an image of {_mib(size)}, more than the "
            f"{_mib(MAX_IMAGE_BYTES)} one file may hold"
        )


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` (read with pixels) does not fit its header, or None.

    For the native syntaxes, PixelData must hold exactly
    :func:`declared_image_bytes` (plus one padding byte when that is odd);
    every syntax must declare at most :data:`MAX_IMAGE_BYTES`.
    """
    try:
        check_image_bound(ds)
        expected = declared_image_bytes(ds)
    except ValueError as exc:
        return str(exc)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if expected is None or "PixelData" not in ds or (syntax is not None and syntax not in NATIVE_SYNTAXES):
        return None
    length = len(ds.PixelData or b"")
    if length not in (expected, expected + (expected % 2)):
        return (
            f"PixelData holds {length} bytes; Rows x Columns x NumberOfFrames x BitsAllocated/8 x "
            f"SamplesPerPixel needs {expected}"
        )
    return None
