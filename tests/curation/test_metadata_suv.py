"""SUV-ready PET metadata: series timing, injection start, decay correction, QIBA SUVbw factor.

Every expected value is computed by hand in the test, with F-18's half-life
6586.2 s::

    SUVbw = weight_g / (dose_Bq * exp(-ln2 * (scan_ref - injection) / half_life))
"""

from __future__ import annotations

import datetime as dt
import math

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from anonymization.dates import publish_metadata
from curation.config import DatePolicy
from curation.metadata import PT_FIELDS, pet_metadata
from curation.suv import SUV_FIELDS, suv_fields

HALF_LIFE = 6586.2


def _slice(*, series_date="20240301", series_time="101500", acq_date="20240301", acq_time="100000",
           units="BQML", decay="START", corrected=("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"),
           weight="75", dose="3.7e8", start_dt="20240301090000", start_time="090000",
           decay_factor="1.46", frame_ref="0") -> Dataset:
    ds = Dataset()
    ds.SeriesDate, ds.SeriesTime = series_date, series_time
    ds.AcquisitionDate, ds.AcquisitionTime = acq_date, acq_time
    ds.Units, ds.DecayCorrection, ds.CorrectedImage = units, decay, list(corrected)
    if weight is not None:
        ds.PatientWeight = weight
    ds.DecayFactor, ds.FrameReferenceTime = decay_factor, frame_ref
    drug = Dataset()
    drug.RadionuclideTotalDose = dose
    drug.RadionuclideHalfLife = str(HALF_LIFE)
    if start_dt is not None:
        drug.RadiopharmaceuticalStartDateTime = start_dt
    if start_time is not None:
        drug.RadiopharmaceuticalStartTime = start_time
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
    return ds


def _beds(**common) -> list[Dataset]:
    """Two beds of two slices: bed 1 acquired at 10:00:00, bed 2 at 10:03:00."""
    return [_slice(acq_time=t, decay_factor=f, frame_ref=r, **common)
            for t, f, r in (("100000", "1.460", "0"), ("100000", "1.460", "0"),
                            ("100300", "1.475", "180000"), ("100300", "1.475", "180000"))]


def test_fields_are_declared_in_the_pt_columns_once() -> None:
    names = [n for n, _ in PT_FIELDS]
    assert all(names.count(n) == 1 for n, _ in SUV_FIELDS)
    assert list(suv_fields(_beds())) == [n for n, _ in SUV_FIELDS]


def test_multi_bed_series_remade_later_uses_the_earliest_acquisition() -> None:
    # SeriesTime 10:15:00 is after the earliest acquisition (bed 1, 10:00:00): the series was
    # made again later, so QIBA takes the earliest acquisition over all beds, 10:00:00.
    # injection 09:00:00 -> 3600 s; 3600 / 6586.2 = 0.546597; 2**-0.546597 = 0.684633
    # decayed dose 3.7e8 * 0.684633 = 2.533142e8 Bq; SUVbw = 75 * 1000 / 2.533142e8 = 2.960750e-4
    f = suv_fields(_beds())
    assert f["SeriesDate"] == "2024-03-01" and f["SeriesTime"] == "10:15:00"
    assert f["SeriesStartDateTime"] == "2024-03-01T10:00:00"
    assert f["RadiopharmaceuticalStartDateTime"] == "2024-03-01T09:00:00"
    assert f["InjectionToSeriesStartSeconds"] == 3600.0
    assert f["DecayCorrection"] == "START"
    assert f["DecayCorrectionReferenceDateTime"] == "2024-03-01T10:00:00"
    assert f["SUVbwScaleFactor"] == pytest.approx(2.960750e-4, rel=1e-6)
    assert f["SUVbwScaleFactor"] == pytest.approx(75_000 / (3.7e8 * 2 ** (-3600 / HALF_LIFE)), rel=1e-12)
    assert f["SUVbwScaleFactorReason"] is None
    assert (f["DecayFactorMin"], f["DecayFactorMax"]) == (1.46, 1.475)
    assert (f["FrameReferenceTimeMin"], f["FrameReferenceTimeMax"]) == (0.0, 180000.0)


def test_multi_bed_series_time_before_the_beds_is_used_never_a_beds_time() -> None:
    # SeriesTime 09:58:00 is not after the earliest acquisition (10:00:00): QIBA uses it.
    # 09:00:00 -> 09:58:00 = 3480 s; 3480 / 6586.2 = 0.528378; 2**-0.528378 = 0.693334
    # decayed 3.7e8 * 0.693334 = 2.565336e8; SUVbw = 75000 / 2.565336e8 = 2.923594e-4
    f = suv_fields(_beds(series_time="095800"))
    assert f["DecayCorrectionReferenceDateTime"] == "2024-03-01T09:58:00"
    assert f["SUVbwScaleFactor"] == pytest.approx(2.923594e-4, rel=1e-6)
    assert f["SeriesStartDateTime"] == "2024-03-01T10:00:00"  # the series start is still the first bed
    assert f["InjectionToSeriesStartSeconds"] == 3600.0


def test_injection_before_midnight_scan_after_takes_the_day_before() -> None:
    # only RadiopharmaceuticalStartTime 23:30:00; the series starts 2024-03-02 00:10:00, so
    # 23:30 (after 00:10 as a time of day) was on 2024-03-01: 2400 s before the scan.
    # 2400 / 6586.2 = 0.364398; 2**-0.364398 = 0.776793; decayed 2.5e8 * 0.776793 = 1.941982e8
    # SUVbw = 60 * 1000 / 1.941982e8 = 3.089627e-4
    f = suv_fields([_slice(series_date="20240302", series_time="001000", acq_date="20240302",
                           acq_time="001000", weight="60", dose="2.5e8", start_dt=None, start_time="233000")])
    assert f["RadiopharmaceuticalStartDateTime"] == "2024-03-01T23:30:00"
    assert f["InjectionToSeriesStartSeconds"] == 2400.0
    assert f["SUVbwScaleFactor"] == pytest.approx(3.089627e-4, rel=1e-6)


def test_injection_time_only_on_the_same_day() -> None:
    f = suv_fields([_slice(start_dt=None, start_time="090000", series_time="100000")])
    assert f["RadiopharmaceuticalStartDateTime"] == "2024-03-01T09:00:00"
    assert f["InjectionToSeriesStartSeconds"] == 3600.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"start_dt": None, "start_time": None}, "no injection time"),
        ({"units": "CNTS"}, "Units CNTS"),
        ({"decay": "NONE"}, "DecayCorrection NONE"),
        ({"weight": None}, "no PatientWeight"),
        ({"weight": "0"}, "no PatientWeight"),
        ({"dose": "0"}, "no RadionuclideTotalDose"),
        ({"corrected": ("NORM", "DTIM", "DECY")}, "CorrectedImage without ATTN"),
        ({"start_dt": "20240301120000"}, "injection after the scan reference time"),
    ],
)
def test_a_factor_that_cannot_be_computed_is_empty_with_its_reason(change, reason) -> None:
    f = suv_fields(_beds(**change))
    assert f["SUVbwScaleFactor"] is None
    assert f["SUVbwScaleFactorReason"] == reason
    if reason == "no injection time":
        assert f["RadiopharmaceuticalStartDateTime"] is None and f["InjectionToSeriesStartSeconds"] is None


def test_admin_decay_correction_needs_no_decay_from_injection() -> None:
    # decay-corrected to the injection already: SUVbw = 75000 / 3.7e8 = 2.027027e-4,
    # and the reference time of the correction is the injection
    f = suv_fields(_beds(decay="ADMIN", start_dt=None, start_time=None))
    assert f["SUVbwScaleFactor"] == pytest.approx(2.027027e-4, rel=1e-6)
    assert f["DecayCorrectionReferenceDateTime"] is None  # no injection time: no reference to state
    f = suv_fields(_beds(decay="ADMIN"))
    assert f["DecayCorrectionReferenceDateTime"] == "2024-03-01T09:00:00"


def test_fractional_seconds_and_datetime_with_offset_are_exact() -> None:
    f = suv_fields([_slice(acq_time="100000.5", series_time="100000.5", start_dt="20240301090000.25+0100")])
    assert f["InjectionToSeriesStartSeconds"] == 3600.25
    assert f["SeriesStartDateTime"] == "2024-03-01T10:00:00.500000"


@pytest.mark.parametrize("policy", list(DatePolicy))
def test_date_policy_moves_dates_and_keeps_intervals_and_factor(policy) -> None:
    f = suv_fields(_beds())
    published = publish_metadata(f, SUV_FIELDS, policy=policy, offset_days=-40, age_cap=90).values
    assert published["SeriesTime"] == dt.time(10, 15)
    assert published["InjectionToSeriesStartSeconds"] == 3600.0
    assert published["SUVbwScaleFactor"] == f["SUVbwScaleFactor"]
    if policy is DatePolicy.SHIFT:
        assert published["SeriesDate"] == dt.date(2024, 1, 21)
        assert published["SeriesStartDateTime"] == dt.datetime(2024, 1, 21, 10, 0)
        assert published["RadiopharmaceuticalStartDateTime"] == dt.datetime(2024, 1, 21, 9, 0)
    elif policy is DatePolicy.YEAR:
        assert published["SeriesDate"] == 2024
        assert published["SeriesStartDateTime"] == dt.time(10, 0)
        assert published["DecayCorrectionReferenceDateTime"] == dt.time(10, 0)
    else:
        assert published["SeriesDate"] == dt.date(2024, 3, 1)
    # whatever the policy: injection to series start from the published columns is the exact interval
    if policy is not DatePolicy.YEAR:
        delta = published["SeriesStartDateTime"] - published["RadiopharmaceuticalStartDateTime"]
        assert delta.total_seconds() == published["InjectionToSeriesStartSeconds"]


@pytest.mark.parametrize("vendor", ["philips", "siemens", "ge"])
def test_phantom_vendor_styles(tmp_path, small_phantom, vendor) -> None:
    from curation.phantom import write_study

    study = write_study(small_phantom, tmp_path / "drop", vendor=vendor, seed=3, patient_id="P-1",
                        patient_name="Test^Patient", decoys=False)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files["pt"]]
    pm = pet_metadata(datasets)
    from curation.geometry import check_series_geometry
    from curation.metadata import ct_metadata

    assert pet_metadata(datasets, stack=check_series_geometry(datasets, series_label="PT")) == pm  # as ingest calls it
    cts = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files["ct"]]
    assert ct_metadata(cts, stack=check_series_geometry(cts, series_label="CT")) == ct_metadata(cts)
    first = datasets[0]
    injection = dt.datetime.strptime(
        first.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S")
    scan = dt.datetime.strptime(first.SeriesDate + first.SeriesTime, "%Y%m%d%H%M%S")
    seconds = (scan - injection).total_seconds()
    expected = study.patient.weight_kg * 1000 / (study.injected_activity_bq * math.exp(-math.log(2) * seconds / HALF_LIFE))
    assert pm["SUVbwScaleFactor"] == pytest.approx(expected, rel=1e-9)
    assert pm["InjectionToSeriesStartSeconds"] == seconds and pm["SUVbwScaleFactorReason"] is None
    if vendor == "philips":  # the vendor's own factor (7053,xx00), written by the phantom independently
        assert pm["PhilipsSUVScaleFactor"] is not None
        assert abs(pm["SUVbwScaleFactor"] / pm["PhilipsSUVScaleFactor"] - 1) < 0.01
    else:
        assert pm["PhilipsSUVScaleFactor"] is None


def test_ge_private_decay_fields_are_kept_beside_and_agree(tmp_path, small_phantom) -> None:
    # the phantom's GE style writes only (0009,xx01); a GE scanner also writes its decay fields
    # in GEMS_PETD_01 (pydicom's private dictionary): add them as a scanner would, from the
    # phantom's own values, and check they are read beside the QIBA factor and agree with it
    from curation.phantom import write_study

    study = write_study(small_phantom, tmp_path / "drop", vendor="ge", seed=4, patient_id="P-2",
                        patient_name="Test^Patient", decoys=False)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files["pt"]]
    first = datasets[0]
    admin = first.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    scan = first.SeriesDate + first.SeriesTime
    for ds in datasets:
        block = ds.private_block(0x0009, "GEMS_PETD_01")
        block.add_new(0x0D, "DT", scan)
        block.add_new(0x3B, "DT", admin)
        block.add_new(0x38, "FL", study.injected_activity_bq)
        block.add_new(0x39, "DT", admin)
        block.add_new(0x3F, "FL", HALF_LIFE)
    pm = pet_metadata(datasets)
    assert pm["GEScanDateTime"] == dt.datetime.strptime(scan, "%Y%m%d%H%M%S").isoformat()
    assert pm["GEAdminDateTime"] == pm["RadiopharmaceuticalStartDateTime"] == pm["GEMeasDateTime"]
    assert pm["GEPostInjActivity"] is None and pm["GEPostInjDateTime"] is None
    # GE's view: tracer activity measured at meas_datetime, decayed to scan_datetime (FL: float32)
    seconds = (dt.datetime.fromisoformat(pm["GEScanDateTime"])
               - dt.datetime.fromisoformat(pm["GEMeasDateTime"])).total_seconds()
    ge_factor = study.patient.weight_kg * 1000 / (pm["GETracerActivity"] * 2 ** (-seconds / pm["GEHalfLife"]))
    assert abs(pm["SUVbwScaleFactor"] / ge_factor - 1) < 0.01
    # as the phantom wrote it: no GE decay field, every GE column empty
    plain = pet_metadata([pydicom.dcmread(p, stop_before_pixels=True) for p in study.files["pt"]])
    assert [plain[name] for name, _ in PT_FIELDS if name.startswith("GE")] == [None] * 7


def test_enhanced_pet_frames_with_a_stated_decay_correction_time() -> None:
    # Enhanced PET frame views: no AcquisitionDate/Time and no DecayCorrection; FrameAcquisitionDateTime
    # per frame, DecayCorrected YES with DecayCorrectionDateTime 10:00:00 (what the frames are corrected to).
    # injection 09:00:00 -> 3600 s: SUVbw = 75000 / (3.7e8 * 2**-0.546597) = 2.960750e-4 (as above)
    frames = []
    for moment in ("20240301100300", "20240301100000"):
        ds = _slice()
        del ds.AcquisitionDate, ds.AcquisitionTime, ds.DecayCorrection
        ds.FrameAcquisitionDateTime = moment
        ds.DecayCorrected = "YES"
        ds.DecayCorrectionDateTime = "20240301100000"
        frames.append(ds)
    f = suv_fields(frames)
    assert f["SeriesStartDateTime"] == "2024-03-01T10:00:00"
    assert f["DecayCorrection"] is None
    assert f["DecayCorrectionReferenceDateTime"] == "2024-03-01T10:00:00"
    assert f["SUVbwScaleFactor"] == pytest.approx(2.960750e-4, rel=1e-6)
    for ds in frames:
        ds.DecayCorrected = "NO"
    f = suv_fields(frames)
    assert f["SUVbwScaleFactor"] is None and f["SUVbwScaleFactorReason"] == "no DecayCorrection"
