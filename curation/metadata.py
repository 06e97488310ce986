"""Per-case acquisition metadata for the CT and PET spreadsheets, read from the chosen series.

:data:`CT_FIELDS` and :data:`PT_FIELDS` list every field, in column order, with
its kind (``str``, ``float``, ``int``, ``date``, ``time``, ``datetime``).  The
dicts :func:`ct_metadata` and :func:`pet_metadata` return have exactly these
keys; a value missing from the headers is ``None``.  Values are JSON types;
dates are ISO strings (``2024-03-01``, ``14:05:09``, ``2024-03-01T14:05:09``).

No UID, name, ID, address, institution, operator, accession number or free
text from the source is ever read here: only acquisition physics and the
patient descriptors the release publishes (sex, age, weight, height).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from curation.compression import LOSSY_FIELDS, lossy_compression
from curation.dicomtime import date_or_none, datetime_or_none, time_or_none
from curation.geometry import SliceStack, check_series_geometry
from curation.suv import SUV_FIELDS, suv_fields

logger = logging.getLogger(__name__)

#: Private creator of the Philips PET group holding the SUV and activity scale factors.
PHILIPS_PET_CREATOR = "Philips PET Private Group"
PHILIPS_PET_GROUP = 0x7053
PHILIPS_SUV_SCALE_ELEMENT = 0x00  # (7053,xx00) SUV scale factor
PHILIPS_ACTIVITY_SCALE_ELEMENT = 0x09  # (7053,xx09) activity concentration scale factor

#: GE's PET private group (names as in pydicom's private dictionary of GEMS_PETD_01).
GE_PETD_CREATOR = "GEMS_PETD_01"
GE_PETD_GROUP = 0x0009
#: ``(column, element offset, kind)`` of the GE decay fields kept beside the QIBA factor.
GE_PETD_ELEMENTS: tuple[tuple[str, int, str], ...] = (
    ("GEScanDateTime", 0x0D, "datetime"),  # (0009,xx0D) PET scan_datetime
    ("GEAdminDateTime", 0x3B, "datetime"),  # (0009,xx3B) PET admin_datetime
    ("GETracerActivity", 0x38, "float"),  # (0009,xx38) PET tracer_activity
    ("GEMeasDateTime", 0x39, "datetime"),  # (0009,xx39) PET meas_datetime (of tracer_activity)
    ("GEPostInjActivity", 0x3C, "float"),  # (0009,xx3C) PET post_inj_activity (residual)
    ("GEPostInjDateTime", 0x3D, "datetime"),  # (0009,xx3D) PET post_inj_datetime
    ("GEHalfLife", 0x3F, "float"),  # (0009,xx3F) PET half_life
)

CT_FIELDS: tuple[tuple[str, str], ...] = (
    ("Manufacturer", "str"),
    ("ManufacturerModelName", "str"),
    ("KVP", "float"),
    ("FilterType", "str"),
    ("ConvolutionKernel", "str"),
    ("PixelSpacingRow", "float"),
    ("PixelSpacingColumn", "float"),
    ("SliceThickness", "float"),
    ("SpacingBetweenSlices", "float"),
    ("NumberOfSlices", "int"),
    ("Rows", "int"),
    ("Columns", "int"),
    ("FocalSpots", "str"),
    ("XRayTubeCurrent", "float"),
    ("Exposure", "float"),
    ("AcquisitionDate", "date"),
    ("AcquisitionTime", "time"),
    *LOSSY_FIELDS,
)

PT_FIELDS: tuple[tuple[str, str], ...] = (
    ("Manufacturer", "str"),
    ("ManufacturerModelName", "str"),
    ("PatientSex", "str"),
    ("PatientAge", "int"),
    ("PatientWeight", "float"),
    ("PatientSize", "float"),
    ("Radiopharmaceutical", "str"),
    ("RadionuclideTotalDose", "float"),
    ("RadionuclideHalfLife", "float"),
    ("Units", "str"),
    ("CorrectedImage", "str"),
    ("RescaleSlopeMin", "float"),
    ("RescaleSlopeMax", "float"),
    ("RescaleIntercept", "float"),
    *SUV_FIELDS,
    ("PhilipsSUVScaleFactor", "float"),
    ("PhilipsActivityConcentrationScaleFactor", "float"),
    *((name, kind) for name, _, kind in GE_PETD_ELEMENTS),
    ("PixelSpacingRow", "float"),
    ("PixelSpacingColumn", "float"),
    ("SliceThickness", "float"),
    ("SpacingBetweenSlices", "float"),
    ("NumberOfSlices", "int"),
    ("Rows", "int"),
    ("Columns", "int"),
    ("AcquisitionDate", "date"),
    ("AcquisitionTime", "time"),
    *LOSSY_FIELDS,
)

_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip() or None
    try:
        return "\\".join(str(v) for v in value).strip() or None  # multi-valued
    except TypeError:
        return str(value).strip() or None


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        logger.warning("%s %r is not a number; recorded as missing", keyword, value)
        return None


def _date(value: object) -> str | None:
    day = date_or_none(value)
    return day.isoformat() if day is not None else None


def _time(value: object) -> str | None:
    clock = time_or_none(value)
    return f"{clock:%H:%M:%S}" if clock is not None else None


def _age_years(value: object) -> int | None:
    match = _AGE.match(str(value or "").strip())
    if not match:
        return None
    return int(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)])


def _private_element(ds: Dataset, group: int, creator: str, element: int) -> Any:
    """A private element's value found through its private creator, never a fixed tag."""
    try:
        return ds.private_block(group, creator)[element].value
    except KeyError:
        return None


def _private_float(ds: Dataset, element: int, *, group: int = PHILIPS_PET_GROUP,
                   creator: str = PHILIPS_PET_CREATOR) -> float | None:
    """A private number (DS, FL or FD; as UN bytes too), by default in the Philips PET group."""
    value = _private_element(ds, group, creator, element)
    if value is None:
        return None
    if isinstance(value, bytes):  # implicit VR / UN: DS text or a binary float or double
        text = value.rstrip(b"\x00 ").decode("ascii", "replace").strip()
        try:
            return float(text.split("\\")[0])
        except ValueError:
            if len(value) in (4, 8):
                return float(struct.unpack("<f" if len(value) == 4 else "<d", value)[0])
            return None
    try:
        return float(value[0] if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _private_datetime(ds: Dataset, element: int, *, group: int, creator: str) -> str | None:
    """A private DT value (as UN bytes too) as an ISO date-time string."""
    value = _private_element(ds, group, creator, element)
    if isinstance(value, bytes):
        value = value.rstrip(b"\x00 ").decode("ascii", "replace")
    moment = datetime_or_none(value, need_time=True)
    return moment.isoformat() if moment else None


def _ge_decay(first: Dataset) -> dict[str, Any]:
    """GE's private decay fields (GEMS_PETD_01, group 0009) as the scanner wrote them."""
    values: dict[str, Any] = {}
    for name, element, kind in GE_PETD_ELEMENTS:
        if kind == "datetime":
            values[name] = _private_datetime(first, element, group=GE_PETD_GROUP, creator=GE_PETD_CREATOR)
        else:
            values[name] = _private_float(first, element, group=GE_PETD_GROUP, creator=GE_PETD_CREATOR)
    return values


def _geometry(datasets: Sequence[Dataset], label: str, stack: SliceStack | None) -> dict[str, Any]:
    if stack is None:
        stack = check_series_geometry(datasets, series_label=label)
    return {
        "PixelSpacingRow": stack.pixel_spacing[0],
        "PixelSpacingColumn": stack.pixel_spacing[1],
        "SpacingBetweenSlices": round(stack.spacing, 6),
        "NumberOfSlices": len(stack.datasets),
        "Rows": stack.rows,
        "Columns": stack.columns,
    }


def _mean(datasets: Sequence[Dataset], keyword: str, fallback: str = "") -> float | None:
    """Mean of ``keyword`` over the slices; ``fallback`` is read where a slice lacks it."""
    values = []
    for ds in datasets:
        value = _float(ds, keyword)
        if value is None and fallback:
            value = _float(ds, fallback)
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


def _ordered(fields: tuple[tuple[str, str], ...], values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - {name for name, _ in fields}
    if unknown:  # a programming error: every field must be declared for the spreadsheets
        raise KeyError(f"metadata fields not declared: {sorted(unknown)}")
    return {name: values.get(name) for name, _ in fields}


def ct_metadata(datasets: Sequence[Dataset], *, stack: SliceStack | None = None) -> dict[str, Any]:
    """Acquisition metadata of a CT series (keys and order of :data:`CT_FIELDS`).

    Parameters
    ----------
    datasets
        Every slice of the selected CT series.
    stack
        Their :func:`curation.geometry.check_series_geometry`, when the caller
        has it already (otherwise it is made here).

    Returns
    -------
    dict
        JSON-serialisable values; tube current and exposure are means over the
        slices (they vary with tube current modulation); the lossy compression
        columns are :func:`curation.compression.lossy_compression`'s.
    """
    first = datasets[0]
    values: dict[str, Any] = {
        "Manufacturer": _str(first, "Manufacturer"),
        "ManufacturerModelName": _str(first, "ManufacturerModelName"),
        "KVP": _float(first, "KVP"),
        "FilterType": _str(first, "FilterType"),
        "ConvolutionKernel": _str(first, "ConvolutionKernel"),
        "SliceThickness": _float(first, "SliceThickness"),
        "FocalSpots": _str(first, "FocalSpots"),
        # Enhanced CT states them per frame as XRayTubeCurrentInmA and ExposureInmAs
        "XRayTubeCurrent": _mean(datasets, "XRayTubeCurrent", "XRayTubeCurrentInmA"),
        "Exposure": _mean(datasets, "Exposure", "ExposureInmAs"),
        "AcquisitionDate": _date(first.get("AcquisitionDate") or first.get("SeriesDate")),
        "AcquisitionTime": _time(first.get("AcquisitionTime") or first.get("SeriesTime")),
        **_geometry(datasets, "CT series", stack),
        **lossy_compression(datasets).fields(),
    }
    return _ordered(CT_FIELDS, values)


def pet_metadata(datasets: Sequence[Dataset], *, stack: SliceStack | None = None) -> dict[str, Any]:
    """Acquisition metadata of a PET series (keys and order of :data:`PT_FIELDS`).

    Parameters
    ----------
    datasets
        Every slice of the selected AC PET series.
    stack
        Their :func:`curation.geometry.check_series_geometry`, when the caller
        has it already (otherwise it is made here).

    Returns
    -------
    dict
        JSON-serialisable values.  The series timing, the injection start,
        the decay correction and the QIBA SUVbw scale factor are
        :func:`curation.suv.suv_fields`'s; the rescale slope range is over
        every slice; the Philips SUV and activity scale factors (7053,xx00)
        and (7053,xx09) are kept as the scanner wrote them.
    """
    first = datasets[0]
    info = first.get("RadiopharmaceuticalInformationSequence")
    drug = info[0] if info else Dataset()
    slopes = [float(ds.get("RescaleSlope", 1.0)) for ds in datasets]
    intercepts = {float(ds.get("RescaleIntercept", 0.0)) for ds in datasets}
    values: dict[str, Any] = {
        "Manufacturer": _str(first, "Manufacturer"),
        "ManufacturerModelName": _str(first, "ManufacturerModelName"),
        "PatientSex": _str(first, "PatientSex"),
        "PatientAge": _age_years(first.get("PatientAge")),
        "PatientWeight": _float(first, "PatientWeight"),
        "PatientSize": _float(first, "PatientSize"),
        "Radiopharmaceutical": _str(drug, "Radiopharmaceutical"),
        "RadionuclideTotalDose": _float(drug, "RadionuclideTotalDose"),
        "RadionuclideHalfLife": _float(drug, "RadionuclideHalfLife"),
        "Units": _str(first, "Units"),
        "CorrectedImage": _str(first, "CorrectedImage"),
        "RescaleSlopeMin": min(slopes),
        "RescaleSlopeMax": max(slopes),
        "RescaleIntercept": intercepts.pop() if len(intercepts) == 1 else None,
        "PhilipsSUVScaleFactor": _private_float(first, PHILIPS_SUV_SCALE_ELEMENT),
        "PhilipsActivityConcentrationScaleFactor": _private_float(first, PHILIPS_ACTIVITY_SCALE_ELEMENT),
        "SliceThickness": _float(first, "SliceThickness"),
        "AcquisitionDate": _date(first.get("AcquisitionDate") or first.get("SeriesDate")),
        "AcquisitionTime": _time(first.get("AcquisitionTime") or first.get("SeriesTime")),
        **_geometry(datasets, "PET series", stack),
        **suv_fields(datasets),
        **_ge_decay(first),
        **lossy_compression(datasets).fields(),
    }
    return _ordered(PT_FIELDS, values)
