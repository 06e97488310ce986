"""Reading one file's header for the index (:mod:`curation.dicomindex`): the part that needs pydicom.

The file is read once, into memory: its bytes are hashed, its header is parsed
from the same buffer with ``stop_before_pixels`` and only the index's tags
(:data:`curation.dicomindex.INDEX_TAGS`), and a plain image's pixel data is
checked to be whole.  A file that is not usable DICOM gives the reason instead
of a header.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from curation.dicomfile import (
    MAX_FILE_BYTES,
    READ_ERRORS,
    DicomBoundError,
    check_image_bound,
    header_int,
    looks_like_dicom,
    read_dicom_bytes,
)
from curation.dicomindex import INDEX_TAGS, IndexHeader
from curation.frames import first_frame_attributes

logger = logging.getLogger(__name__)

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
#: :data:`INDEX_TAGS` as tags: pydicom looks a keyword up in its dictionary at every read (0.3 ms a file)
_INDEX_TAGS = [Tag(keyword) for keyword in INDEX_TAGS]


def _pixel_data_element(data: bytes, at: int) -> tuple[int, int] | None:
    """(start of the value, declared length) of a PixelData element header at ``at``, or None."""
    vr = data[at + 4 : at + 6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
        if len(data) < at + 12:
            return None
        return at + 12, struct.unpack("<I", data[at + 8 : at + 12])[0]
    if len(data) < at + 8:  # implicit VR little endian
        return None
    return at + 8, struct.unpack("<I", data[at + 4 : at + 8])[0]


def _fits(data: bytes, start: int, length: int) -> bool:
    """Whether a PixelData value declared at ``start`` with ``length`` is whole in ``data``."""
    if length == 0xFFFFFFFF:  # encapsulated: must end with the sequence delimiter
        return b"\xfe\xff\xdd\xe0" in data[-16:]
    return start + length <= len(data)


def _pixel_data_complete(data: bytes, ds: Dataset) -> str | None:
    """Why the pixel data of an in-memory file is incomplete, or None if it is whole.

    The PixelData tag's bytes can also occur inside pixel values (PET uint16
    0x7FE0 followed by 0x0010), so every occurrence is tried: the file is whole
    when one of them is an element whose value fits.  In a whole file the first
    occurrence, at the end of the header, is that element: the forward search
    stops there, without crossing the pixel bytes.  When none fits, the reason
    given is the last occurrence's.
    """
    if "Rows" not in ds or "Columns" not in ds:
        return None  # not an image (e.g. a structured report): nothing to check
    last = None
    at = data.find(_PIXEL_DATA_TAG)
    while at >= 0:
        element = _pixel_data_element(data, at)
        if element is not None and _fits(data, *element):
            return None
        last = at, element
        at = data.find(_PIXEL_DATA_TAG, at + 1)
    if last is None:
        return "has Rows/Columns but no PixelData element (truncated before the pixel data)"
    at, element = last
    if element is None:
        return "ends inside the PixelData element header (truncated)"
    start, length = element
    if length == 0xFFFFFFFF:
        return "encapsulated PixelData has no sequence delimiter (truncated)"
    return f"PixelData declares {length} bytes but only {len(data) - start} are present (truncated)"


def _multi(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")


def _series_number(ds: Dataset, path: Path) -> int | None:
    """SeriesNumber, or None (with a warning) when the file's value is not a whole number."""
    try:
        return header_int(ds, "SeriesNumber")
    except ValueError as exc:
        logger.warning("%s: %s; the series number is recorded as unknown", path, exc)
        return None


def _header_fields(ds: Dataset, path: Path) -> IndexHeader:
    """Every value the index needs, converted here (a malformed value raises here, for this file only)."""
    frame = first_frame_attributes(ds)  # an enhanced object's first frame, else ds itself
    return IndexHeader(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        series={
            "Modality": _text(ds, "Modality"),
            "SOPClassUID": _text(ds, "SOPClassUID"),
            "SeriesDescription": _text(ds, "SeriesDescription"),
            "SeriesNumber": _series_number(ds, path),
            "ImageType": _multi(frame.get("ImageType")),
            "FrameOfReferenceUID": _text(ds, "FrameOfReferenceUID"),
            "CorrectedImage": _multi(frame.get("CorrectedImage")),
            "Units": _text(frame, "Units"),
        },
    )


def read_index_header(path: Path) -> tuple[str, IndexHeader | None, str]:
    """Read one file: (sha256 hex, header or None, reason when None)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return "", None, f"{size} bytes, more than the {MAX_FILE_BYTES} bytes a file may have (not read)"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not looks_like_dicom(data[:132]):
        return digest, None, "not DICOM (no preamble/DICM marker and no dataset at the start)"
    try:
        ds, parsed = read_dicom_bytes(data, stop_before_pixels=True, specific_tags=_INDEX_TAGS)
    except DicomBoundError as exc:
        return digest, None, str(exc)
    except READ_ERRORS as exc:
        return digest, None, f"unreadable DICOM header: {type(exc).__name__}: {exc}"
    del data
    try:
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class == _MEDIA_STORAGE_DIRECTORY:
            return digest, None, "DICOMDIR (media storage directory), not an image"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(keyword, "")).strip():
                return digest, None, f"no {keyword}"
        check_image_bound(ds)
        problem = _pixel_data_complete(parsed, ds)
        if problem:
            return digest, None, problem
        return digest, _header_fields(ds, path), ""
    except DicomBoundError as exc:
        return digest, None, str(exc)
    except READ_ERRORS as exc:  # a value pydicom cannot convert, or a malformed size
        return digest, None, f"unreadable DICOM header value: {type(exc).__name__}: {exc}"
