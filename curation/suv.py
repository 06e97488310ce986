"""SUV-ready timing of a PET series and its SUVbw scale factor (QIBA vendor-neutral method).

:func:`suv_fields` reads, from every slice of the selected PET series, the
series date and time, the series start (the earliest AcquisitionDate and
AcquisitionTime over all slices, so over all beds), the injection start, the
decay correction and its reference time, the range of DecayFactor and
FrameReferenceTime, and computes the body-weight SUV scale factor by the QIBA
FDG-PET/CT SUV pseudo-code (vendor-neutral part):

* Units ``BQML``, CorrectedImage with ``ATTN`` and ``DECY``, DecayCorrection
  ``START``: the scan reference time is SeriesDate + SeriesTime, unless it is
  after the earliest acquisition of the series (a series made again later)
  or missing, then that earliest AcquisitionDate + AcquisitionTime over all slices; never
  one bed's acquisition time otherwise.  Then::

      SUVbwScaleFactor = weight_g / (dose_Bq * exp(-ln2 * (scan_ref - injection) / half_life))

* DecayCorrection ``ADMIN``: the image is decay-corrected to the injection
  already, so ``SUVbwScaleFactor = weight_g / dose_Bq``.

* Enhanced PET has no DecayCorrection: with DecayCorrected ``YES`` its
  DecayCorrectionDateTime is the time the frames are decay-corrected to, and
  takes the place of the scan reference time in the formula above.  Its
  frames' FrameAcquisitionDateTime stand for AcquisitionDate + AcquisitionTime.

Where the factor cannot be computed it is ``None`` and
``SUVbwScaleFactorReason`` says why (``no PatientWeight``, ``Units CNTS``,
``DecayCorrection NONE``, ``no injection time``, ...); it is never guessed.

Times of day and intervals are exact: the interval and the factor are
computed here from the headers as delivered, before any date policy, which
moves dates only (:mod:`anonymization.dates`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from curation.dicomtime import date_or_none, datetime_or_none, time_or_none

#: ``(name, kind)`` of the fields :func:`suv_fields` returns, in column order.
SUV_FIELDS: tuple[tuple[str, str], ...] = (
    ("SeriesDate", "date"),
    ("SeriesTime", "time"),
    ("SeriesStartDateTime", "datetime"),
    ("RadiopharmaceuticalStartDateTime", "datetime"),
    ("InjectionToSeriesStartSeconds", "float"),
    ("DecayCorrection", "str"),
    ("DecayCorrectionReferenceDateTime", "datetime"),
    ("DecayFactorMin", "float"),
    ("DecayFactorMax", "float"),
    ("FrameReferenceTimeMin", "float"),
    ("FrameReferenceTimeMax", "float"),
    ("SUVbwScaleFactor", "float"),
    ("SUVbwScaleFactorReason", "str"),
)

def _combine(date_value: object, time_value: object) -> dt.datetime | None:
    day, clock = date_or_none(date_value), time_or_none(time_value)
    return dt.datetime.combine(day, clock) if day and clock else None


def _iso(moment: dt.datetime | dt.date | dt.time | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _floats(datasets: Sequence[Dataset], keyword: str) -> list[float]:
    values = []
    for ds in datasets:
        try:
            value = ds.get(keyword)
            if value is not None and value != "":
                values.append(float(value))
        except (TypeError, ValueError):
            continue
    return values


def _positive(ds: Dataset, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _acquired(ds: Dataset) -> dt.datetime | None:
    """When a slice was acquired: AcquisitionDate + AcquisitionTime, else an Enhanced PET frame's date-times."""
    moment = _combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
    if moment is None:  # Enhanced PET: the frame's FrameAcquisitionDateTime, else the object's
        moment = (datetime_or_none(ds.get("FrameAcquisitionDateTime"), need_time=True)
                  or datetime_or_none(ds.get("AcquisitionDateTime"), need_time=True))
    return moment


def series_start(datasets: Sequence[Dataset]) -> dt.datetime | None:
    """The earliest acquisition over every slice (every bed) of a series.

    A slice's acquisition is AcquisitionDate + AcquisitionTime; an Enhanced PET
    frame, which has neither, gives its FrameAcquisitionDateTime (else the
    object's AcquisitionDateTime).

    Parameters
    ----------
    datasets
        Every slice of the series.

    Returns
    -------
    datetime.datetime or None
        The earliest acquisition; ``None`` when no slice says when it was acquired.
    """
    moments = [m for ds in datasets if (m := _acquired(ds))]
    return min(moments) if moments else None


def injection_start(drug: Dataset, scan: dt.datetime | None) -> dt.datetime | None:
    """When the radiopharmaceutical was injected.

    RadiopharmaceuticalStartDateTime when present; else RadiopharmaceuticalStartTime
    on the day of ``scan``, or on the day before when that time of day is after
    the scan's (an injection before midnight, a scan after it).

    Parameters
    ----------
    drug
        The first item of RadiopharmaceuticalInformationSequence.
    scan
        The series start (or the series date and time).

    Returns
    -------
    datetime.datetime or None
        The injection start; ``None`` when neither element can be read (or
        only the time is given and ``scan`` is unknown).
    """
    moment = datetime_or_none(drug.get("RadiopharmaceuticalStartDateTime"), need_time=True)
    if moment is not None:
        return moment
    clock = time_or_none(drug.get("RadiopharmaceuticalStartTime"))
    if clock is None or scan is None:
        return None
    moment = dt.datetime.combine(scan.date(), clock)
    return moment - dt.timedelta(days=1) if moment > scan else moment


def suv_fields(datasets: Sequence[Dataset]) -> dict[str, Any]:
    """SUV-ready timing and the QIBA SUVbw scale factor of a PET series (keys of :data:`SUV_FIELDS`).

    Parameters
    ----------
    datasets
        Every slice of the selected PET series (every bed of a multi-bed series).

    Returns
    -------
    dict
        JSON values: dates and times as ISO strings (``2024-03-01``,
        ``14:05:09``, ``2024-03-01T14:05:09``), seconds and factors as floats,
        ``None`` where the headers do not say.  ``SeriesStartDateTime`` is the
        earliest acquisition over all slices; ``InjectionToSeriesStartSeconds``
        is from the injection to it; ``DecayCorrectionReferenceDateTime`` is
        the scan reference time of the QIBA method for ``START``, the
        injection for ``ADMIN``, and an Enhanced PET's DecayCorrectionDateTime; ``DecayFactor*`` and ``FrameReferenceTime*``
        (ms) are the minimum and maximum over the slices;
        ``SUVbwScaleFactor`` is in g/mL per Bq/mL, or ``None`` with
        ``SUVbwScaleFactorReason`` saying why.
    """
    first = datasets[0]
    info = first.get("RadiopharmaceuticalInformationSequence")
    drug = info[0] if info else Dataset()
    series_day, series_clock = date_or_none(first.get("SeriesDate")), time_or_none(first.get("SeriesTime"))
    series = dt.datetime.combine(series_day, series_clock) if series_day and series_clock else None
    start = series_start(datasets)
    injection = injection_start(drug, start or series)
    decay = str(first.get("DecayCorrection") or "").strip().upper() or None
    # QIBA: the series time, unless the series was made again after the acquisition (or has none)
    scan_ref = series if series is not None and (start is None or series <= start) else start
    reference = {"START": scan_ref, "ADMIN": injection}.get(decay or "")
    if decay is None:  # Enhanced PET states the time its frames are decay-corrected to
        stated = datetime_or_none(first.get("DecayCorrectionDateTime"), need_time=True)
        if stated is not None and str(first.get("DecayCorrected") or "").strip().upper() == "YES":
            reference = scan_ref = stated
    factor, reason = _suvbw(first, drug, decay or ("STATED" if reference else None), scan_ref, injection)
    decay_factors = _floats(datasets, "DecayFactor")
    frame_refs = _floats(datasets, "FrameReferenceTime")
    return {
        "SeriesDate": _iso(series_day),
        "SeriesTime": _iso(series_clock),
        "SeriesStartDateTime": _iso(start),
        "RadiopharmaceuticalStartDateTime": _iso(injection),
        "InjectionToSeriesStartSeconds": (start - injection).total_seconds() if start and injection else None,
        "DecayCorrection": decay,
        "DecayCorrectionReferenceDateTime": _iso(reference),
        "DecayFactorMin": min(decay_factors) if decay_factors else None,
        "DecayFactorMax": max(decay_factors) if decay_factors else None,
        "FrameReferenceTimeMin": min(frame_refs) if frame_refs else None,
        "FrameReferenceTimeMax": max(frame_refs) if frame_refs else None,
        "SUVbwScaleFactor": factor,
        "SUVbwScaleFactorReason": reason,
    }


def _suvbw(
    first: Dataset, drug: Dataset, decay: str | None, scan_ref: dt.datetime | None, injection: dt.datetime | None
) -> tuple[float | None, str | None]:
    """The QIBA SUVbw scale factor, or ``None`` and why not."""
    units = str(first.get("Units") or "").strip().upper()
    if units != "BQML":
        return None, f"Units {units}" if units else "no Units"
    value = first.get("CorrectedImage") or []
    corrected = {str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)}
    missing = [c for c in ("ATTN", "DECY") if c not in corrected]
    if missing:
        return None, f"CorrectedImage without {' and '.join(missing)}"
    if decay not in ("START", "ADMIN", "STATED"):
        return None, f"DecayCorrection {decay}" if decay else "no DecayCorrection"
    weight = _positive(first, "PatientWeight")
    if weight is None:
        return None, "no PatientWeight"
    dose = _positive(drug, "RadionuclideTotalDose")
    if dose is None:
        return None, "no RadionuclideTotalDose"
    if decay == "ADMIN":
        return weight * 1000.0 / dose, None
    half_life = _positive(drug, "RadionuclideHalfLife")
    if half_life is None:
        return None, "no RadionuclideHalfLife"
    if injection is None:
        return None, "no injection time"
    if scan_ref is None:
        return None, "no series or acquisition time"
    seconds = (scan_ref - injection).total_seconds()
    if seconds < 0:
        return None, "injection after the scan reference time"
    return weight * 1000.0 / (dose * math.exp(-math.log(2) * seconds / half_life)), None
