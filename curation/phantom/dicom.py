"""DICOM writers of the phantom: one PET/CT study as a site would deliver it.

:func:`write_study` writes the CT and PET series of a :class:`Phantom`
anonymised, with vendor-styled headers and opaque nested file names, and on
request decoy series and files, a defect that must get the study rejected
(:data:`DEFECTS`) or planted identifiers that must get it quarantined
(:data:`PLANTED_PHI`).  Everything is deterministic: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
)

from curation.phantom.anatomy import RESCALE_INTERCEPT, Phantom

logger = logging.getLogger(__name__)

__all__ = [
    "DEFECTS",
    "F18_HALF_LIFE_S",
    "PLANTED_PHI",
    "PatientInfo",
    "StudyFiles",
    "Vendor",
    "write_study",
]

#: Defects :func:`write_study` can plant (each must get the study rejected).
DEFECTS: tuple[str, ...] = (
    "missing-pet-slice",
    "frame-of-reference-mismatch",
    "nac-only",
    "gantry-tilt",
    "non-uniform-spacing",
)

#: The half-life of fluorine-18 in seconds (decay factors of the PET headers).
F18_HALF_LIFE_S = 6586.2


class Vendor(StrEnum):
    """Header and file-layout styles of three scanner makers."""

    SIEMENS = "siemens"
    PHILIPS = "philips"
    GE = "ge"


@dataclass(frozen=True)
class _Style:
    manufacturer: str
    ct_model: str
    pt_model: str
    software: str
    ct_kernel: str
    ct_filter: str
    ct_signed: bool
    ct_bits_stored: int
    instance_order: str  # "scan" | "reversed" | "shuffled"
    spacing_between_slices: bool
    focal_spots: str


_STYLES = {
    Vendor.SIEMENS: _Style("SIEMENS", "Biograph Vision 600", "Biograph Vision 600", "VG80B", "Br38f", "FLAT",
                           False, 12, "scan", False, "0.7"),
    Vendor.PHILIPS: _Style("Philips", "Vereos PET/CT", "Vereos PET/CT", "2.0.1", "B", "B", False, 12,
                           "reversed", True, "1.1"),
    Vendor.GE: _Style("GE MEDICAL SYSTEMS", "Discovery MI", "Discovery MI", "pet_coreload.46", "STANDARD",
                      "BODY FILTER", True, 16, "shuffled", True, "0.7\\1.2"),
}


@dataclass(frozen=True)
class PatientInfo:
    """Patient characteristics a PET/CT header keeps after de-identification.

    Attributes
    ----------
    sex
        DICOM PatientSex, ``"M"`` or ``"F"``.
    age_years
        PatientAge in years.
    weight_kg
        PatientWeight in kg.
    height_m
        PatientSize (height) in m.
    """

    sex: str  # "M" | "F"
    age_years: int
    weight_kg: float
    height_m: float


@dataclass(frozen=True)
class StudyFiles:
    """What :func:`write_study` wrote: the UIDs, and the files by role.

    Roles: ``ct``, ``pt`` (attenuation-corrected), ``pt_nac``, ``localizer``,
    ``secondary_capture``, ``text``, ``truncated``, ``dicomdir``.  The
    truncated file is a copy of a middle CT slice of the CT series (own
    SOPInstanceUID, same position) cut in the middle of its pixel data, as an
    interrupted transfer leaves it.

    Attributes
    ----------
    root
        The drop folder the study was written under.
    vendor
        The :class:`Vendor` value of the header style.
    StudyInstanceUID, PatientID, PatientName, StudyDate, FrameOfReferenceUID
        As written into every header (FrameOfReferenceUID: the CT's).
    ct_series_uid, pt_series_uid, pt_nac_series_uid
        SeriesInstanceUID of the CT, the attenuation-corrected PET (None for
        the ``"nac-only"`` defect) and the non-attenuation-corrected PET (None
        without decoys, unless ``"nac-only"``).
    pt_frame_of_reference_uid
        The PET series' FrameOfReferenceUID (differs from the CT's only for
        the ``"frame-of-reference-mismatch"`` defect).
    defect, plant_phi, feet_first
        How the study was written (see :func:`write_study`).
    files
        Role -> the files written in that role.
    patient
        The patient characteristics in the headers.
    injected_activity_bq
        RadionuclideTotalDose in Bq.
    planted_phi
        Keyword -> the identifying value planted into every CT and PET header.
    missing_pt_index
        The spatial index of the PET slice left out (``"missing-pet-slice"``).
    """

    root: Path
    vendor: str
    StudyInstanceUID: str
    PatientID: str
    PatientName: str
    StudyDate: str
    FrameOfReferenceUID: str
    ct_series_uid: str
    pt_series_uid: str | None  # None for "nac-only"
    pt_nac_series_uid: str | None
    pt_frame_of_reference_uid: str
    defect: str | None
    plant_phi: bool
    feet_first: bool
    files: dict[str, tuple[Path, ...]]
    patient: PatientInfo
    injected_activity_bq: float
    planted_phi: dict[str, str] = dataclasses.field(default_factory=dict)  # keyword -> planted value
    missing_pt_index: int | None = None  # spatial index of the PET slice left out

    @property
    def all_files(self) -> tuple[Path, ...]:
        """Every file written, all roles in sorted role order."""
        return tuple(p for role in sorted(self.files) for p in self.files[role])


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def _uid(*parts: object) -> str:
    """A deterministic UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(_digest("uid", *parts)[:16], "big"))


def _hexname(n: int, *parts: object) -> str:
    return _digest("name", *parts).hex()[:n]


def _ds_str(value: float) -> str:
    """A DS string (at most 16 characters) for ``value``."""
    for digits in range(10, 3, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {value!r} as a DICOM DS")


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class _SeriesEncoder:
    """Encode the slices of one series fast: constant elements once, per slice only the changing ones.

    Explicit VR little endian data elements are self-delimiting, so a dataset's
    encoding is the concatenation of its elements' encodings in tag order; the
    result is byte-identical to :func:`pydicom.filewriter.dcmwrite` (tested).
    Every element not named in ``varying`` must be set before construction and
    left alone afterwards.
    """

    def __init__(self, ds: Dataset, varying: Sequence[str]) -> None:
        self.ds = ds
        self.varying = sorted(int(tag_for_keyword(k)) for k in varying)  # type: ignore[arg-type]
        static = [e for e in ds if int(e.tag) not in self.varying]
        self.static_runs: list[bytes] = []  # run i holds the static elements before varying tag i
        for i in range(len(self.varying) + 1):
            lo = self.varying[i - 1] if i else -1
            hi = self.varying[i] if i < len(self.varying) else 1 << 33
            run = Dataset()
            for elem in static:
                if lo < int(elem.tag) < hi:
                    run.add(elem)
            self.static_runs.append(self._encode(run))

    @staticmethod
    def _encode(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_dataset(fp, ds)
        return fp.getvalue()

    def encode(self) -> bytes:
        """The complete file (preamble, file meta, dataset) for the current element values."""
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = False, True
        write_file_meta_info(meta, self.ds.file_meta, enforce_standard=True)
        parts = [b"\x00" * 128, b"DICM", meta.getvalue(), self.static_runs[0]]
        for tag, run in zip(self.varying, self.static_runs[1:], strict=True):
            if tag in self.ds:
                elem = self.ds[tag]
                if elem.VR == "OB or OW":  # native PixelData: dcmwrite resolves it from BitsAllocated
                    elem = DataElement(elem.tag, "OW" if self.ds.BitsAllocated > 8 else "OB", elem.value)
                single = Dataset()
                single.add(elem)
                parts.append(self._encode(single))
            parts.append(run)
        return b"".join(parts)


def _write_file(path: Path, data: bytes) -> None:
    """Write a drop file: temporary name in the same folder, then rename (no fsync: test data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _new_dataset(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


#: the elements that change from slice to slice of a CT or PET series
_SLICE_VARYING = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


@dataclass(frozen=True)
class _StudyContext:
    vendor: Vendor
    style: _Style
    seed: int
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    injection: datetime
    patient: PatientInfo
    dose_bq: float
    frame_of_reference: str
    feet_first: bool
    plant_phi: dict[str, str]


def _patient_study_module(ds: Dataset, ctx: _StudyContext) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ctx.patient.sex
    ds.PatientAge = f"{ctx.patient.age_years:03d}Y"
    ds.PatientWeight = _ds_str(ctx.patient.weight_kg)
    ds.PatientSize = _ds_str(ctx.patient.height_m)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 E basic; retain pat chars, device id; dates shifted"
    ds.DeidentificationMethodCodeSequence = DicomSequence([
        _code("113100", "DCM", "Basic Application Confidentiality Profile"),
        _code("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
        _code("113108", "DCM", "Retain Patient Characteristics Option"),
        _code("113109", "DCM", "Retain Device Identity Option"),
    ])
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = ctx.study_date
    ds.StudyTime = ctx.study_time
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET-CT whole body FDG"
    ds.Manufacturer = ctx.style.manufacturer
    ds.SoftwareVersions = ctx.style.software
    for keyword, value in ctx.plant_phi.items():
        setattr(ds, keyword, value)


def _series_module(ds: Dataset, ctx: _StudyContext, *, modality: str, series_uid: str, number: int,
                   description: str, when: datetime, model: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.SeriesTime = when.strftime("%H%M%S")
    ds.ManufacturerModelName = model
    ds.PatientPosition = "FFS" if ctx.feet_first else "HFS"
    ds.BodyPartExamined = "WHOLEBODY"


def _image_pixel_module(ds: Dataset, rows: int, columns: int, *, bits_stored: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def _instance_numbers(n: int, order: str, feet_first: bool, key: object) -> list[int]:
    """InstanceNumber of each spatial index: acquisition order, reversed, or shuffled (deterministic)."""
    # acquisition runs head to feet for HFS (down the z axis), feet to head for FFS;
    # spatial index 0 is the most inferior slice for HFS and the most superior for FFS
    scan = list(range(n, 0, -1)) if not feet_first else list(range(1, n + 1))
    if order == "reversed":
        return [n + 1 - v for v in scan]
    if order == "shuffled":
        perm = np.random.default_rng(list(_digest("order", key)[:8])).permutation(n)
        return [int(v) + 1 for v in perm]
    return scan


def _layout(ctx: _StudyContext, out_dir: Path, series_key: str, index: int) -> Path:
    """Opaque, vendor-typical nested file names (deterministic)."""
    study = _hexname(12, ctx.study_uid, ctx.seed)
    if ctx.vendor is Vendor.SIEMENS:
        return (out_dir / _hexname(8, ctx.patient_id, "pat") / study / _hexname(10, series_key)
                / _hexname(16, series_key, index))
    if ctx.vendor is Vendor.PHILIPS:
        return out_dir / study / "DICOM" / _hexname(8, series_key).upper() / _hexname(8, series_key, index).upper()
    return out_dir / study / f"{_hexname(20, series_key, index)}.dcm"


def _ct_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, series_uid: str, defect: str | None,
               when: datetime, truncated_copy: bool) -> tuple[list[Path], Path | None]:
    geo = phantom.ct_geometry
    style = ctx.style
    ds = _new_dataset(CTImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="CT", series_uid=series_uid, number=2, description=f"CT WB {geo.slice_spacing:g} {style.ct_kernel}",
                   when=when, model=style.ct_model)
    ds.FrameOfReferenceUID = ctx.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.KVP = "120"
    ds.ConvolutionKernel = style.ct_kernel
    ds.FilterType = style.ct_filter
    ds.FocalSpots = style.focal_spots.split("\\") if "\\" in style.focal_spots else style.focal_spots
    ds.SliceThickness = _ds_str(geo.slice_spacing)
    if style.spacing_between_slices:
        ds.SpacingBetweenSlices = _ds_str(geo.slice_spacing)
    ds.XRayTubeCurrent = 80 + ctx.seed % 40
    ds.Exposure = 40 + ctx.seed % 20
    ds.ExposureTime = 500
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ReconstructionDiameter = _ds_str(geo.columns * geo.pixel_spacing[1])
    ds.PixelSpacing = [_ds_str(geo.pixel_spacing[0]), _ds_str(geo.pixel_spacing[1])]
    orientation = [float(v) for v in geo.orientation]
    if defect == "gantry-tilt":
        # a tilted gantry: the image plane is rotated about x while the table moves straight along z
        tilt = np.deg2rad(7.0)
        col = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        orientation = [*orientation[:3], *(float(v) for v in col)]
        ds.GantryDetectorTilt = "7"
    ds.ImageOrientationPatient = [_ds_str(v) for v in orientation]
    _image_pixel_module(ds, geo.rows, geo.columns, bits_stored=style.ct_bits_stored, signed=style.ct_signed)
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    numbers = _instance_numbers(geo.slices, style.instance_order, ctx.feet_first, series_uid)
    dtype = np.int16 if style.ct_signed else np.uint16
    encoder = _SeriesEncoder(ds, _SLICE_VARYING)
    paths: list[Path] = []
    truncated: Path | None = None
    mid = geo.slices // 2
    for k in range(geo.slices):
        pos = np.asarray(geo.position(k))
        if defect == "non-uniform-spacing" and k > mid:
            pos = pos + (k - mid) * 0.35 * geo.slice_spacing * geo.normal
        sop = _uid(ctx.study_uid, series_uid, "ct", k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in pos]
        ds.SliceLocation = _ds_str(float(pos[2]))
        stored = phantom.ct_hu[:, :, k].astype(np.int32) - RESCALE_INTERCEPT
        ds.PixelData = np.ascontiguousarray(stored.T, dtype=dtype).tobytes()
        data = encoder.encode()
        path = _layout(ctx, out_dir, series_uid, k)
        _write_file(path, data)
        paths.append(path)
        if k == mid and truncated_copy:
            # the interrupted copy of this slice: another SOPInstanceUID, cut inside the pixel data
            cut_sop = _uid(ctx.study_uid, series_uid, "ct-truncated", k)
            ds.SOPInstanceUID = cut_sop
            ds.file_meta.MediaStorageSOPInstanceUID = cut_sop
            cut = encoder.encode()
            truncated_bytes = cut[: len(cut) - len(ds.PixelData) // 2]
            truncated = _layout(ctx, out_dir, series_uid, "truncated")
            _write_file(truncated, truncated_bytes)
    return paths, truncated


def _pt_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, series_uid: str, frame_of_reference: str,
               when: datetime, nac: bool, skip_index: int | None, number: int) -> list[Path]:
    geo = phantom.pt_geometry
    style = ctx.style
    ds = _new_dataset(PositronEmissionTomographyImageStorage)
    _patient_study_module(ds, ctx)
    description = "PET NAC" if nac else "PET WB AC"
    _series_module(ds, ctx, modality="PT", series_uid=series_uid, number=number, description=description,
                   when=when, model=style.pt_model)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CorrectedImage = ["NORM", "DTIM", "RAN", "DECY"] if nac else ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "NONE" if nac else "measured,AC_CT"
    ds.ScatterCorrectionMethod = "NONE" if nac else "Model-based"
    ds.ReconstructionMethod = "OSEM3D 4i5s"
    ds.NumberOfSlices = geo.slices
    ds.SliceThickness = _ds_str(geo.slice_spacing)
    if style.spacing_between_slices:
        ds.SpacingBetweenSlices = _ds_str(geo.slice_spacing)
    ds.PixelSpacing = [_ds_str(geo.pixel_spacing[0]), _ds_str(geo.pixel_spacing[1])]
    ds.ImageOrientationPatient = [_ds_str(float(v)) for v in geo.orientation]
    ds.ActualFrameDuration = 120000
    delay = (when - ctx.injection).total_seconds()
    ds.DecayFactor = _ds_str(float(2 ** (delay / F18_HALF_LIFE_S)))
    ds.FrameReferenceTime = "0"
    ds.DoseCalibrationFactor = "1"
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = ctx.injection.strftime("%H%M%S")
    radio.RadiopharmaceuticalStartDateTime = ctx.injection.strftime("%Y%m%d%H%M%S")
    radio.RadionuclideTotalDose = _ds_str(ctx.dose_bq)
    radio.RadionuclideHalfLife = "6586.2"
    radio.RadionuclidePositronFraction = "0.9673"
    radio.RadionuclideCodeSequence = DicomSequence([_code("C-111A1", "SRT", "^18^Fluorine")])
    radio.RadiopharmaceuticalCodeSequence = DicomSequence([_code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
    _image_pixel_module(ds, geo.rows, geo.columns, bits_stored=16, signed=False)
    ds.RescaleIntercept = "0"
    ds.RescaleType = "BQML"
    if ctx.vendor is Vendor.PHILIPS:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        suv_factor = ctx.patient.weight_kg * 1000.0 / (ctx.dose_bq / float(ds.DecayFactor))
        block.add_new(0x00, "DS", _ds_str(suv_factor))
        block.add_new(0x09, "DS", "1")
    elif ctx.vendor is Vendor.GE:
        block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
        block.add_new(0x01, "LO", "GE_PET_RECON")
    values = phantom.pt_bqml * (0.45 if nac else 1.0)
    numbers = _instance_numbers(geo.slices, style.instance_order, ctx.feet_first, series_uid)
    encoder = _SeriesEncoder(ds, (*_SLICE_VARYING, "ImageIndex", "RescaleSlope"))
    paths: list[Path] = []
    for k in range(geo.slices):
        if k == skip_index:
            continue
        sl = values[:, :, k]
        peak = float(sl.max())
        slope = float(_ds_str(peak / 65000.0)) if peak > 0 else 1.0
        stored = np.clip(np.rint(sl.astype(np.float64) / slope), 0, 65535).astype(np.uint16)
        pos = geo.position(k)
        sop = _uid(ctx.study_uid, series_uid, "pt", k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = numbers[k]
        ds.ImageIndex = numbers[k]
        ds.ImagePositionPatient = [_ds_str(float(v)) for v in pos]
        ds.SliceLocation = _ds_str(float(pos[2]))
        ds.RescaleSlope = _ds_str(slope)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
        path = _layout(ctx, out_dir, series_uid, k)
        _write_file(path, encoder.encode())
        paths.append(path)
    return paths


def _localizer_series(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, when: datetime) -> list[Path]:
    """An AP and a lateral topogram: projections of the CT, on the CT's frame of reference."""
    geo = phantom.ct_geometry
    series_uid = _uid(ctx.study_uid, "localizer")
    ds = _new_dataset(CTImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="CT", series_uid=series_uid, number=1, description="Topogram 0.6 T20f",
                   when=when - timedelta(minutes=3), model=ctx.style.ct_model)
    ds.FrameOfReferenceUID = ctx.frame_of_reference
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.KVP = "120"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    mu = np.clip(phantom.ct_hu.astype(np.float32) + 1000.0, 0, None)
    # z runs down the image: spatial slice order flipped so that the head is at the top
    top_first = slice(None, None, -1) if not ctx.feet_first else slice(None)
    views = [("AP", mu.sum(axis=1), geo.pixel_spacing[1]), ("LAT", mu.sum(axis=0), geo.pixel_spacing[0])]
    paths = []
    for n, (view, proj, spacing) in enumerate(views):
        image = proj[:, top_first].T  # rows = z from top, columns = x (AP) or y (LAT)
        image = np.rint(image / image.max() * 4000.0).astype(np.uint16)
        _image_pixel_module(ds, image.shape[0], image.shape[1], bits_stored=16, signed=False)
        top = geo.position(geo.slices - 1 if not ctx.feet_first else 0)
        if view == "AP":
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = [_ds_str(min(geo.origin[0], top[0])), "0", _ds_str(top[2])]
        else:
            ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = ["0", _ds_str(geo.origin[1]), _ds_str(top[2])]
        ds.PixelSpacing = [_ds_str(geo.slice_spacing), _ds_str(spacing)]
        sop = _uid(ctx.study_uid, series_uid, n)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = n + 1
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        path = _layout(ctx, out_dir, series_uid, n)
        _write_file(path, _dicom_bytes(ds))
        paths.append(path)
    return paths


def _secondary_capture(phantom: Phantom, ctx: _StudyContext, out_dir: Path, *, when: datetime) -> Path:
    """A screen capture of a PET MIP, as a reading workstation stores it."""
    series_uid = _uid(ctx.study_uid, "screen capture")
    ds = _new_dataset(SecondaryCaptureImageStorage)
    _patient_study_module(ds, ctx)
    _series_module(ds, ctx, modality="OT", series_uid=series_uid, number=900, description="Screen Capture MIP",
                   when=when + timedelta(minutes=30), model=ctx.style.pt_model)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    mip = phantom.pt_bqml.max(axis=1)
    mip = mip[:, ::-1] if not ctx.feet_first else mip
    image = np.rint(mip.T / max(float(mip.max()), 1.0) * 255.0).astype(np.uint8)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    sop = _uid(ctx.study_uid, series_uid, 0)
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.InstanceNumber = 1
    ds.PixelData = image.tobytes()
    path = _layout(ctx, out_dir, series_uid, 0)
    _write_file(path, _dicom_bytes(ds))
    return path


def _dicomdir(ctx: _StudyContext, out_dir: Path) -> Path:
    """A DICOMDIR-like media directory (parseable DICOM, but no image)."""
    ds = _new_dataset(MediaStorageDirectoryStorage)
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(ctx.study_uid, "dicomdir")
    ds.FileSetID = "PETCT"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    path = _layout(ctx, out_dir, "dicomdir", 0).parent / "DICOMDIR"
    _write_file(path, _dicom_bytes(ds))
    return path


#: identifying values ``plant_phi=True`` puts into every CT and PET header
PLANTED_PHI: dict[str, str] = {
    "PatientBirthDate": "19580312",
    "OtherPatientIDs": "MRN-4471920",
    "ReferringPhysicianName": "Hausmann^Karl^^Dr.",
    "InstitutionAddress": "Liebigstrasse 20, 04103 Leipzig",
    "AccessionNumber": "ACC88172635",
    "PatientAddress": "Karl-Heine-Strasse 7, Leipzig",
}


def _patient_for(seed: int, patient_id: str) -> PatientInfo:
    rng = np.random.default_rng(list(_digest("patient", seed, patient_id)[:8]))
    sex = "M" if rng.random() < 0.55 else "F"
    height = float(np.round(rng.normal(1.77 if sex == "M" else 1.65, 0.06), 2))
    weight = float(np.round(rng.normal(24.0, 3.0) * height**2, 1))
    return PatientInfo(sex=sex, age_years=int(rng.integers(35, 84)), weight_kg=weight, height_m=height)


def write_study(phantom: Phantom, out_dir: Path, *, vendor: str | Vendor, seed: int, patient_id: str,
                patient_name: str, study_uid: str | None = None, decoys: bool = True, defect: str | None = None,
                plant_phi: bool = False, study_date: date | None = None,
                patient: PatientInfo | None = None) -> StudyFiles:
    """Write one PET/CT study as a site delivers it.

    Parameters
    ----------
    phantom
        The phantom to write (its ``feet_first`` decides PatientPosition).
    out_dir
        The site's drop folder; the study goes into vendor-typical nested
        folders with opaque names below it.
    vendor
        ``"siemens"`` (InstanceNumber in acquisition order, unsigned 12-bit CT),
        ``"philips"`` (reversed InstanceNumber, PET private group 7053 with SUV
        and activity concentration scale factors, a DICOMDIR) or ``"ge"``
        (shuffled InstanceNumber, signed CT, ``.dcm`` files all in one folder,
        a GEMS_PETD_01 private block).
    seed
        Fixes every UID, date, time, file name and patient characteristic.
    patient_id, patient_name
        The site's pseudonym.
    study_uid
        StudyInstanceUID (default: derived from ``seed`` and ``patient_id``).
    decoys
        Add a CT localiser, a non-attenuation-corrected PET series, a screen
        capture, a text file and a truncated copy of a CT slice.
    defect
        One of :data:`DEFECTS`, or None.
    plant_phi
        Put the identifying values of :data:`PLANTED_PHI` into every CT and PET
        header (the de-identification gate must quarantine the study).
    study_date, patient
        Override the (shifted) study date and the patient characteristics.

    Returns
    -------
    StudyFiles
        The UIDs written and the files by role.

    Raises
    ------
    ValueError
        For an unknown vendor or defect.
    """
    try:
        vendor = Vendor(vendor)
    except ValueError:
        raise ValueError(f"write_study: vendor {vendor!r} is not one of {', '.join(v.value for v in Vendor)}") from None
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"write_study: defect {defect!r} is not one of {', '.join(DEFECTS)}")
    out_dir = Path(out_dir)
    study_uid = study_uid or _uid("study", seed, patient_id)
    patient = patient or _patient_for(seed, patient_id)
    rng = np.random.default_rng(list(_digest("study", seed, study_uid)[:8]))
    if study_date is None:
        study_date = date(2019, 1, 7) + timedelta(days=int(rng.integers(0, 1500)))
    injection = datetime(study_date.year, study_date.month, study_date.day, 8, 0, 0) + timedelta(
        minutes=int(rng.integers(0, 360)), seconds=int(rng.integers(0, 60)))
    ct_time = injection + timedelta(minutes=int(rng.integers(55, 70)))
    pt_time = ct_time + timedelta(minutes=2, seconds=int(rng.integers(0, 50)))
    dose = float(np.round(patient.weight_kg * rng.uniform(3.0, 4.0) * 1e6, -4))
    frame_uid = _uid(study_uid, "frame of reference")
    ctx = _StudyContext(
        vendor=vendor,
        style=_STYLES[vendor],
        seed=seed,
        study_uid=study_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_date=study_date.strftime("%Y%m%d"),
        study_time=ct_time.strftime("%H%M%S"),
        injection=injection,
        patient=patient,
        dose_bq=dose,
        frame_of_reference=frame_uid,
        feet_first=phantom.feet_first,
        plant_phi=dict(PLANTED_PHI) if plant_phi else {},
    )
    files: dict[str, tuple[Path, ...]] = {}
    ct_uid = _uid(study_uid, "ct")
    ct_paths, truncated = _ct_series(phantom, ctx, out_dir, series_uid=ct_uid, defect=defect, when=ct_time,
                                     truncated_copy=decoys)
    files["ct"] = tuple(ct_paths)
    if truncated is not None:
        files["truncated"] = (truncated,)
    pt_frame = _uid(study_uid, "other frame of reference") if defect == "frame-of-reference-mismatch" else frame_uid
    pt_uid: str | None = _uid(study_uid, "pt")
    missing = phantom.pt_geometry.slices // 2 if defect == "missing-pet-slice" else None
    if defect == "nac-only":
        pt_uid = None
    else:
        files["pt"] = tuple(_pt_series(phantom, ctx, out_dir, series_uid=pt_uid, frame_of_reference=pt_frame,
                                       when=pt_time, nac=False, skip_index=missing, number=4))
    nac_uid: str | None = None
    if decoys or defect == "nac-only":
        nac_uid = _uid(study_uid, "pt nac")
        files["pt_nac"] = tuple(_pt_series(phantom, ctx, out_dir, series_uid=nac_uid, frame_of_reference=pt_frame,
                                           when=pt_time, nac=True, skip_index=None, number=5))
    if decoys:
        files["localizer"] = tuple(_localizer_series(phantom, ctx, out_dir, when=ct_time))
        files["secondary_capture"] = (_secondary_capture(phantom, ctx, out_dir, when=pt_time),)
        text = _layout(ctx, out_dir, "notes", 0).parent / "export_notes.txt"
        _write_file(text, b"Exported by the site PACS gateway. Series: CT, PET AC, PET NAC, topogram.\n")
        files["text"] = (text,)
        if vendor is Vendor.PHILIPS:
            files["dicomdir"] = (_dicomdir(ctx, out_dir),)
    logger.debug("wrote study %s (%s, %d files) under %s", study_uid, vendor.value,
                 sum(len(v) for v in files.values()), out_dir)
    return StudyFiles(
        root=out_dir,
        vendor=vendor.value,
        StudyInstanceUID=study_uid,
        PatientID=patient_id,
        PatientName=patient_name,
        StudyDate=ctx.study_date,
        FrameOfReferenceUID=frame_uid,
        ct_series_uid=ct_uid,
        pt_series_uid=pt_uid,
        pt_nac_series_uid=nac_uid,
        pt_frame_of_reference_uid=pt_frame,
        defect=defect,
        plant_phi=plant_phi,
        feet_first=phantom.feet_first,
        files=files,
        patient=patient,
        injected_activity_bq=dose,
        planted_phi=dict(ctx.plant_phi),
        missing_pt_index=missing,
    )
