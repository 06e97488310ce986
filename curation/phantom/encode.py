"""Re-encode a phantom study as scanners and archives export it: compressed or multi-frame.

:func:`recode_study` writes the CT and PET series of a :class:`StudyFiles` in
another transfer syntax (:data:`ENCODINGS`), :func:`legacy_enhanced_study`
writes each series as one Legacy Converted Enhanced CT/PET object.  Both keep
every UID of the study and series (a new SOPInstanceUID only where a new object
is made), so the result is the same study in another encoding.

Encoders, all from PyPI wheels:

* RLE Lossless, JPEG-LS (lossless and near-lossless) and JPEG 2000 (lossless
  and lossy): pydicom's ``Dataset.compress`` with the plugins the project
  depends on (pydicom's own RLE, pyjpegls, pylibjpeg-openjpeg);
* JPEG Lossless SV1 and HTJ2K: imagecodecs (``jpeg8_encode`` with
  ``lossless=True, predictor=1`` from libjpeg-turbo; ``htj2k_encode`` from
  OpenJPH); pydicom has no encoder for either;
* Deflated Explicit VR Little Endian: pydicom's writer;
* Legacy Converted Enhanced: highdicom (``highdicom.legacy``).

imagecodecs and highdicom are test dependencies (``pip install -e .[test]``),
imported only by the functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from curation.phantom.dicom import StudyFiles

#: Roles of :attr:`StudyFiles.files` that are re-encoded (the decoys stay as they are).
ROLES = ("ct", "pt")


def _stored(ds: Dataset) -> np.ndarray:
    """The stored values as unsigned integers of BitsStored bits (what a JPEG codestream holds)."""
    arr = ds.pixel_array
    return arr.view(np.uint16) if arr.dtype == np.int16 else arr


def _encapsulate(ds: Dataset, frame: bytes, syntax: str) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def _compress(syntax: str, **options: object) -> Callable[[Dataset], None]:
    def encode(ds: Dataset) -> None:
        ds.compress(syntax, **options)

    return encode


def _jpeg_lossless_sv1(ds: Dataset) -> None:
    import imagecodecs  # test dependency

    frame = imagecodecs.jpeg8_encode(_stored(ds), lossless=True, predictor=1, bitspersample=int(ds.BitsStored))
    _encapsulate(ds, frame, JPEGLosslessSV1)


def _htj2k_lossless(ds: Dataset) -> None:
    import imagecodecs  # test dependency

    frame = imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)
    _encapsulate(ds, frame, HTJ2KLossless)


def _deflated(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def _lossy(syntax: str, method: str, *, flag: bool, **options: object) -> Callable[[Dataset], None]:
    def encode(ds: Dataset) -> None:
        raw = len(ds.PixelData)
        ds.compress(syntax, **options)
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in ds:
                del ds[keyword]
        if flag:  # as an archive that follows PS3.3 C.7.6.1.1.5 records it
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = f"{raw / len(ds.PixelData):.4g}"
            ds.LossyImageCompressionMethod = method

    return encode


#: Transfer syntax name -> (UID, encoder).  Every lossless syntax of issue 10, and two lossy ones.
ENCODINGS: dict[str, tuple[str, Callable[[Dataset], None]]] = {
    "rle": (RLELossless, _compress(RLELossless)),
    "jpeg-ls": (JPEGLSLossless, _compress(JPEGLSLossless)),
    "jpeg-2000": (JPEG2000Lossless, _compress(JPEG2000Lossless)),
    "htj2k": (HTJ2KLossless, _htj2k_lossless),
    "jpeg-lossless-sv1": (JPEGLosslessSV1, _jpeg_lossless_sv1),
    "deflated": (DeflatedExplicitVRLittleEndian, _deflated),
    # lossy: JPEG 2000 irreversible at 10:1, the header saying so; JPEG-LS near-lossless with an
    # error bound of 3 and no LossyImageCompression (an exporter that does not record it)
    "jpeg-2000-lossy": (JPEG2000, _lossy(JPEG2000, "ISO_15444_1", flag=True, j2k_cr=[10])),
    "jpeg-ls-near-lossless": (JPEGLSNearLossless, _lossy(JPEGLSNearLossless, "ISO_14495_1", flag=False, jls_error=3)),
}
#: The lossless names of :data:`ENCODINGS`.
LOSSLESS = ("rle", "jpeg-ls", "jpeg-2000", "htj2k", "jpeg-lossless-sv1", "deflated")


def _target(study: StudyFiles, path: Path, out_dir: Path) -> Path:
    return out_dir / Path(path).relative_to(study.root)


def _read_series(study: StudyFiles, role: str, slab: slice | None) -> list[tuple[Path, Dataset]]:
    """The files of ``role`` (those of the slab of spatial indices), read; a PET slab's NumberOfSlices fixed."""
    paths = study.files[role] if slab is None else study.files[role][slab]  # files are in spatial order
    read = [(Path(p), pydicom.dcmread(p)) for p in paths]
    if slab is not None:
        for _, ds in read:
            if "NumberOfSlices" in ds:
                ds.NumberOfSlices = len(read)
    return read


def recode_study(
    study: StudyFiles, out_dir: Path, encoding: str, *, slabs: dict[str, slice] | None = None
) -> dict[str, tuple[Path, ...]]:
    """Write the CT and PET series of ``study`` again under ``out_dir``, in another transfer syntax.

    Parameters
    ----------
    study
        A study written by :func:`curation.phantom.write_study`.
    out_dir
        The new drop folder; each file keeps its path relative to ``study.root``.
    encoding
        A name of :data:`ENCODINGS`, or ``"explicit"`` for Explicit VR Little
        Endian as written (with ``slabs``: the uncompressed reference).
    slabs
        Role -> the spatial indices to keep (a contiguous range is still a
        regular stack; a PET slab's NumberOfSlices is set to its length), so
        tests stay small; None keeps every slice.

    Returns
    -------
    dict
        ``"ct"`` and ``"pt"`` -> the files written.

    Raises
    ------
    ValueError
        For an unknown encoding.
    """
    if encoding != "explicit" and encoding not in ENCODINGS:
        raise ValueError(f"recode_study: encoding {encoding!r} is not one of explicit, {', '.join(ENCODINGS)}")
    encode = ENCODINGS[encoding][1] if encoding in ENCODINGS else None
    written: dict[str, tuple[Path, ...]] = {}
    for role in ROLES:
        paths = []
        for path, ds in _read_series(study, role, (slabs or {}).get(role)):
            if encode is not None:
                encode(ds)
            target = _target(study, path, out_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            paths.append(target)
        written[role] = tuple(paths)
    return written


def _uid(*parts: object) -> str:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def legacy_enhanced_study(
    study: StudyFiles,
    out_dir: Path,
    *,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    slabs: dict[str, slice] | None = None,
) -> dict[str, Path]:
    """Write the CT and the PET series of ``study`` as one Legacy Converted Enhanced object each.

    Parameters
    ----------
    study
        A study written by :func:`curation.phantom.write_study`.
    out_dir
        The new drop folder (``<role>.dcm`` in the folder of the series' first file).
    transfer_syntax
        Explicit VR Little Endian, or a syntax ``Dataset.compress`` encodes
        frame by frame (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless);
        highdicom's own encoders refuse signed pixels, so pydicom's are used.
    slabs
        As for :func:`recode_study`.

    Returns
    -------
    dict
        ``"ct"`` and ``"pt"`` -> the file written.
    """
    from highdicom.legacy import (  # test dependency
        LegacyConvertedEnhancedCTImage,
        LegacyConvertedEnhancedPETImage,
    )

    classes = {"ct": LegacyConvertedEnhancedCTImage, "pt": LegacyConvertedEnhancedPETImage}
    written: dict[str, Path] = {}
    for role in ROLES:
        sources = [ds for _, ds in _read_series(study, role, (slabs or {}).get(role))]
        series_uid = str(sources[0].SeriesInstanceUID)
        image = classes[role](
            sources,
            series_instance_uid=series_uid,
            series_number=int(sources[0].SeriesNumber),
            sop_instance_uid=_uid(series_uid, "legacy converted enhanced", transfer_syntax),
            instance_number=1,
        )
        if transfer_syntax != image.file_meta.TransferSyntaxUID:
            image.compress(transfer_syntax)
        # highdicom stamps the wall clock: fixed, so the same study gives the same bytes
        image.InstanceCreationDate = sources[0].get("ContentDate", "20000101")
        image.InstanceCreationTime = "000000"
        # and describes its contribution in free text, which PS3.15 removes (X): a site's
        # de-identifier, run after the conversion, leaves it out
        for item in image.get("ContributingEquipmentSequence", []):
            if "ContributionDescription" in item:
                del item.ContributionDescription
        target = _target(study, study.files[role][0], out_dir).with_name(f"{role}.dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save_as(target, enforce_file_format=True)
        written[role] = target
    return written
