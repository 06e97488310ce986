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

Ingest reads a selected file with :func:`read_dicom_header`: the first
:data:`HEADER_READ_BYTES` are parsed, and when the file is a plain single-frame
16-bit image whose PixelData is its last element (the usual CT and PET slice),
the pixel data is not read but located (:class:`PixelDataLocation`), to be read
by the conversion straight into its volume; every element of the header is in
the dataset, as with a whole read.  Any other file is read whole.

A file that breaks a bound raises :class:`DicomBoundError` (a ``ValueError``)
whose message names the bound; the index skips the file, ingest rejects the
study naming it.  This module owns pydicom's reading quirks for the index and
ingest; the gate and the conversion take the datasets it returns.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
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

from curation.dicomlimits import MAX_FILE_BYTES, MAX_HEADER_BYTES, MAX_IMAGE_BYTES

#: A Deflated dataset is inflated this far first, to read the image size its header declares.
HEADER_PEEK_BYTES = 1 << 20

#: Transfer syntaxes whose PixelData is the plain pixel bytes (length checkable from the header).
NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: How much of a file :func:`read_dicom_header` reads first (a single-frame header is a few KB).
HEADER_READ_BYTES = 64 << 10
#: (7FE0,0010) PixelData's tag as a little-endian file writes it.
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
#: The syntaxes whose PixelData :func:`read_dicom_header` locates, and their (implicit VR, little endian).
_LOCATED_SYNTAXES = {ExplicitVRLittleEndian: (False, True), ImplicitVRLittleEndian: (True, True)}
_MULTI_FRAME_TAGS = (0x52009229, 0x52009230)  # Shared / PerFrameFunctionalGroupsSequence
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


def pixel_data_problem(ds: Dataset, *, length: int | None = None) -> str | None:
    """Why the pixel data of ``ds`` (read with pixels) does not fit its header, or None.

    For the native syntaxes, PixelData must hold exactly
    :func:`declared_image_bytes` (plus one padding byte when that is odd);
    every syntax must declare at most :data:`MAX_IMAGE_BYTES`.  ``length`` is
    PixelData's length when ``ds`` was read without it (its value located in
    the file); by default the length of ``ds.PixelData``.
    """
    try:
        check_image_bound(ds)
        expected = declared_image_bytes(ds)
    except ValueError as exc:
        return str(exc)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if expected is None or (syntax is not None and syntax not in NATIVE_SYNTAXES):
        return None
    if length is None:
        if "PixelData" not in ds:
            return None
        length = len(ds.PixelData or b"")
    if length not in (expected, expected + (expected % 2)):
        return (
            f"PixelData holds {length} bytes; Rows x Columns x NumberOfFrames x BitsAllocated/8 x "
            f"SamplesPerPixel needs {expected}"
        )
    return None


def plain_pixel_format(ds: Dataset) -> tuple[bool, int] | None:
    """Whether ``ds`` is a plain 16-bit single-frame slice, and then (signed, BitsStored).

    Plain: an uncompressed little-endian transfer syntax (Implicit or Explicit
    VR), BitsAllocated 16, one sample per pixel, one frame, PixelRepresentation
    0 or 1 and BitsStored 1-16: PixelData is then the pixel array's bytes, the
    bits above BitsStored masked off (unsigned) or sign-extended (signed), as
    pydicom's ``pixel_array`` gives them.

    Parameters
    ----------
    ds
        A header (with or without pixel data).

    Returns
    -------
    tuple[bool, int] or None
        ``(PixelRepresentation == 1, BitsStored)``; None for anything else.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    try:
        plain = (
            syntax in _LOCATED_SYNTAXES
            and ds.get("BitsAllocated") == 16
            and ds.get("SamplesPerPixel", 1) == 1
            and int(ds.get("NumberOfFrames") or 1) == 1
            and ds.get("PixelRepresentation") in (0, 1)
        )
        stored = int(ds.get("BitsStored") or 16)
    except (TypeError, ValueError):
        return None
    if not plain or not 1 <= stored <= 16:
        return None
    return ds.PixelRepresentation == 1, stored


def _file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class PixelDataLocation:
    """Where the pixel data of a plain single-frame slice lies in its file (:func:`read_dicom_header`).

    Attributes
    ----------
    path
        The file.
    offset
        Where PixelData's value starts.
    length
        Its length in bytes: Rows x Columns x 2, up to the end of the file.
    signed, bits_stored
        What :func:`plain_pixel_format` says of the header.
    identity
        The file's device, inode, size and mtime (ns) when its header was
        read: the pixel data is read only from that same file.
    """

    path: Path
    offset: int
    length: int
    signed: bool
    bits_stored: int
    identity: tuple[int, int, int, int]

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` (exactly :attr:`length` bytes) with the pixel data, as stored.

        Raises
        ------
        OSError
            The file cannot be read, or it changed since its header was read
            (named in the message).
        ValueError
            ``buffer`` does not hold :attr:`length` bytes.
        """
        view = memoryview(buffer).cast("B")
        if view.nbytes != self.length:
            raise ValueError(f"{self.path}: a buffer of {view.nbytes} bytes for {self.length} bytes of pixel data")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _file_identity(os.fstat(fd)) != self.identity:
                raise OSError(f"{self.path}: the file changed after its header was read")
            done = 0
            while done < self.length:  # a regular file gives it all at once, unless interrupted
                n = os.preadv(fd, [view[done:]], self.offset + done)
                if n <= 0:
                    raise OSError(f"{self.path}: the file ends inside its pixel data")
                done += n
        finally:
            os.close(fd)


def _locate_pixel_data(head: bytes, path: Path, st: os.stat_result) -> tuple[Dataset, PixelDataLocation] | None:
    """The header parsed from ``head`` and where its pixel data lies, for a plain slice; None otherwise.

    Only when PixelData is the file's last element (nothing after it that the
    header would miss), of a defined length that is exactly the declared image
    of a :func:`plain_pixel_format` slice.
    """
    if _DEFLATED_UID_BYTES in head or not looks_like_dicom(head[:132]):
        return None
    fp = io.BytesIO(head)
    try:
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    except READ_ERRORS:
        return None  # the whole read says what is wrong
    start = fp.tell()  # pydicom stops in front of the pixel data element
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    encoding = _LOCATED_SYNTAXES.get(syntax) if isinstance(syntax, str) else None
    if encoding is None or ds.original_encoding != encoding or head[start : start + 4] != _PIXEL_DATA_TAG_LE:
        return None
    implicit = encoding[0]
    header_end = start + (8 if implicit else 12)  # tag, length / tag, VR, 2 reserved bytes, length
    if header_end > len(head) or not (implicit or head[start + 4 : start + 8] in (b"OW\0\0", b"OB\0\0")):
        return None
    (length,) = struct.unpack("<L", head[header_end - 4 : header_end])
    if header_end + length != st.st_size or any(tag in ds for tag in _MULTI_FRAME_TAGS):
        return None
    plain = plain_pixel_format(ds)
    try:
        expected = declared_image_bytes(ds)
    except ValueError:
        return None
    if plain is None or expected is None or length != expected or pixel_data_problem(ds, length=length) is not None:
        return None
    return ds, PixelDataLocation(
        path=path, offset=header_end, length=length, signed=plain[0], bits_stored=plain[1],
        identity=_file_identity(st),
    )


def read_dicom_header(path: str | Path) -> tuple[Dataset, PixelDataLocation | None]:
    """Read one file within the bounds of this module, locating a plain slice's pixel data instead of reading it.

    The first :data:`HEADER_READ_BYTES` are parsed; when they hold the whole
    header of a plain single-frame 16-bit slice whose PixelData is the file's
    last element, the dataset is that header and the pixel data's place is
    returned.  Otherwise the whole file is read, as :func:`read_dicom_file`
    with pixels does.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    tuple
        The dataset (without PixelData when located) and the
        :class:`PixelDataLocation`, or None when the dataset holds its pixel data.

    Raises
    ------
    DicomBoundError
        As :func:`read_dicom_file`.
    Exception
        One of :data:`READ_ERRORS` for anything pydicom cannot read.
    """
    path = Path(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size > MAX_FILE_BYTES:
            raise DicomBoundError(
                f"the file has {_mib(st.st_size)}, more than the {_mib(MAX_FILE_BYTES)} a file may have"
            )
        data = f.read(HEADER_READ_BYTES)
        if len(data) < st.st_size:
            located = _locate_pixel_data(data, path, st)
            if located is not None:
                return located
            data += f.read()
    ds, _ = read_dicom_bytes(data, stop_before_pixels=False)
    return ds, None
