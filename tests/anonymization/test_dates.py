"""The date policy (shift / year / as-delivered), the age cap, the secret, and the date forms for the leak scan."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from pathlib import Path

import pytest

from anonymization.dates import (
    SECRET_NAME,
    SHIFT_MAX_DAYS,
    SHIFT_MIN_DAYS,
    cap_age,
    date_forms,
    date_strings,
    dates_in_value,
    install_secret,
    is_temporal_text,
    load_or_create_secret,
    patient_offset_days,
    publish_metadata,
    publish_value,
    published_columns,
)
from curation.config import DatePolicy

SECRET = bytes(range(32))


# ---------------------------------------------------------------------------
# offsets


def test_one_patient_has_one_offset_for_every_study() -> None:
    first = patient_offset_days(SECRET, "leipzig", "LEI-0001", "2.25.1")
    second = patient_offset_days(SECRET, "leipzig", "LEI-0001", "2.25.2")  # another study, same patient
    assert first == second
    assert SHIFT_MIN_DAYS <= first <= SHIFT_MAX_DAYS
    # the interval between the patient's studies is exact after the shift
    studies = [publish_value(day, "date", policy=DatePolicy.SHIFT, offset_days=first)
               for day in ("2019-03-01", "2020-02-29")]
    assert studies[1] - studies[0] == dt.date(2020, 2, 29) - dt.date(2019, 3, 1)


def test_offsets_of_different_patients_are_independent_and_bounded() -> None:
    offsets = [patient_offset_days(SECRET, "leipzig", f"LEI-{n:04d}") for n in range(3000)]
    assert min(offsets) >= SHIFT_MIN_DAYS and max(offsets) <= SHIFT_MAX_DAYS
    assert len(set(offsets)) > 1800  # 3653 possible offsets: spread out, not a handful
    span = SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1
    halves = sum(o < SHIFT_MIN_DAYS + span // 2 for o in offsets)
    assert 1300 < halves < 1700  # both halves of the range are used about equally
    # the same PatientID at another site, or under another secret, is another patient
    same_id_elsewhere = [patient_offset_days(SECRET, "vienna", f"LEI-{n:04d}") for n in range(3000)]
    assert sum(a == b for a, b in zip(offsets, same_id_elsewhere, strict=True)) < 20
    other_secret = [patient_offset_days(bytes(32), "leipzig", f"LEI-{n:04d}") for n in range(3000)]
    assert sum(a == b for a, b in zip(offsets, other_secret, strict=True)) < 20


def test_a_study_without_patient_id_is_its_own_patient() -> None:
    a = [patient_offset_days(SECRET, "boston", "", f"2.25.{n}") for n in range(200)]
    assert len(set(a)) > 150
    with pytest.raises(ValueError, match="no patient to shift"):
        patient_offset_days(SECRET, "boston", " ", "")


# ---------------------------------------------------------------------------
# shifted values: times and intervals exact


@pytest.mark.parametrize(
    ("injection", "acquisition", "minutes"),
    [
        ("2020-12-31T23:50:00", ("2021-01-01", "00:40:00"), 50),  # midnight, month and year end
        ("2021-01-31T23:30:15", ("2021-02-01", "00:20:15"), 50),  # month end
        ("2020-02-28T23:59:00", ("2020-02-29", "01:04:00"), 65),  # into a leap day
        ("2021-02-28T23:59:00", ("2021-03-01", "01:04:00"), 65),  # no leap day
        ("20210304101500", ("20210304", "111500.000000"), 60),  # DICOM forms
    ],
)
def test_shift_keeps_times_of_day_and_every_interval(injection: str, acquisition: tuple[str, str], minutes: int) -> None:
    offset = patient_offset_days(SECRET, "vienna", "VIE-0042")
    shifted_injection = publish_value(injection, "datetime", policy=DatePolicy.SHIFT, offset_days=offset)
    day = publish_value(acquisition[0], "date", policy=DatePolicy.SHIFT, offset_days=offset)
    clock = publish_value(acquisition[1], "time", policy=DatePolicy.SHIFT, offset_days=offset)
    original = publish_value(injection, "datetime", policy=DatePolicy.AS_DELIVERED)
    assert shifted_injection - original == dt.timedelta(days=offset)
    assert shifted_injection.time() == original.time()
    assert dt.datetime.combine(day, clock) - shifted_injection == dt.timedelta(minutes=minutes)
    assert day.year >= original.year + 100  # never a plausible real date


def test_year_policy_keeps_the_year_and_the_time_of_day() -> None:
    assert publish_value("2021-03-04", "date", policy=DatePolicy.YEAR) == 2021
    assert publish_value("2021-03-04T23:10:05", "datetime", policy=DatePolicy.YEAR) == dt.time(23, 10, 5)
    assert publish_value("10:15:00", "time", policy=DatePolicy.YEAR) == dt.time(10, 15)
    fields = (("AcquisitionDate", "date"), ("AcquisitionTime", "time"), ("Start", "datetime"), ("KVP", "float"))
    assert published_columns(fields, DatePolicy.YEAR) == (
        ("AcquisitionDate", "int"), ("AcquisitionTime", "time"), ("Start", "time"), ("KVP", "float"))
    assert published_columns(fields, DatePolicy.SHIFT) == fields


def test_as_delivered_leaves_dates_as_they_are() -> None:
    assert publish_value("2021-03-04", "date", policy=DatePolicy.AS_DELIVERED, offset_days=40000) == dt.date(2021, 3, 4)
    assert publish_value("Siemens", "str", policy=DatePolicy.SHIFT, offset_days=40000) == "Siemens"
    assert publish_value(None, "date", policy=DatePolicy.SHIFT, offset_days=40000) is None


@pytest.mark.parametrize(("age", "cap", "published"), [(65, 90, 65), (89, 90, 89), (90, 90, 90), (104, 90, 90),
                                                       (86, 85, 85), (None, 90, None), (0, 90, 0)])
def test_ages_at_or_above_the_cap_are_the_cap(age: int | None, cap: int, published: int | None) -> None:
    assert cap_age(age, cap) == published


def test_unreadable_header_values_are_published_empty_not_fatal() -> None:
    fields = (("AcquisitionDate", "date"), ("AcquisitionTime", "time"), ("Start", "datetime"),
              ("PatientAge", "int"), ("Manufacturer", "str"))
    row = publish_metadata(
        {"AcquisitionDate": "2021-13-45", "AcquisitionTime": "25:61:00", "Start": "garbage",
         "PatientAge": 97, "Manufacturer": "ACME"},
        fields, policy=DatePolicy.SHIFT, offset_days=36600, age_cap=90,
    )
    assert row.values == {"AcquisitionDate": None, "AcquisitionTime": None, "Start": None, "PatientAge": 90,
                          "Manufacturer": "ACME"}
    assert row.blanked == ("AcquisitionDate", "AcquisitionTime", "Start")


# ---------------------------------------------------------------------------
# the secret


def test_the_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_or_create_secret(state)
    path = state / SECRET_NAME
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    assert load_or_create_secret(state) == first
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)  # not rewritten
    assert [p.name for p in state.iterdir()] == [SECRET_NAME]  # no temporary left behind
    assert load_or_create_secret(tmp_path / "other") != first  # made with `secrets`, not derived


def test_concurrent_first_use_agrees_on_one_secret(tmp_path: Path) -> None:
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_secret(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (tmp_path / SECRET_NAME).read_text().strip() == results[0].hex()


def test_a_damaged_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    (tmp_path / SECRET_NAME).write_text("not-a-secret-but-maybe-sensitive\n")
    with pytest.raises(ValueError, match=r"not a date-shift secret") as info:
        load_or_create_secret(tmp_path)
    assert "maybe-sensitive" not in str(info.value)


def test_install_secret_never_replaces_another(tmp_path: Path) -> None:
    install_secret(tmp_path, SECRET)
    install_secret(tmp_path, SECRET)  # the same: nothing to do
    assert load_or_create_secret(tmp_path) == SECRET
    with pytest.raises(ValueError, match="holds another date-shift secret"):
        install_secret(tmp_path, bytes(32))
    assert os.stat(tmp_path / SECRET_NAME).st_mode & 0o077 == 0


# ---------------------------------------------------------------------------
# dates in headers and their forms


def test_dates_in_da_and_dt_values() -> None:
    assert dates_in_value("DA", "20210304") == [dt.date(2021, 3, 4)]
    assert dates_in_value("DA", "20210304\\19580312 ") == [dt.date(2021, 3, 4), dt.date(1958, 3, 12)]
    assert dates_in_value("DA", "2021.03.04") == [dt.date(2021, 3, 4)]
    assert dates_in_value("DT", "20210304101500.123+0100") == [dt.date(2021, 3, 4)]
    assert dates_in_value("DT", "2021") == []  # a year is not a date
    assert dates_in_value("DA", "00000000") == [] and dates_in_value("DA", "20211345") == []
    assert dates_in_value("TM", "101500") == []


def test_date_forms_are_those_a_release_can_hold() -> None:
    assert date_forms(dt.date(2021, 3, 4)) == ("20210304", "2021-03-04", "44259")
    assert date_forms(dt.date(1900, 3, 1)) == ("19000301", "1900-03-01", "61")  # Excel: 1900-03-01 is 61
    assert date_strings([dt.date(2021, 3, 4), dt.date(2021, 3, 4)]) == ["2021-03-04", "20210304", "44259"]


def test_the_serial_is_what_openpyxl_writes_for_the_date() -> None:
    from openpyxl.utils.datetime import to_excel

    for day in (dt.date(2021, 3, 4), dt.date(1958, 3, 12), dt.date(2120, 12, 31)):
        assert date_forms(day)[2] == str(int(to_excel(day)))


@pytest.mark.parametrize(("text", "ok"), [("20210304", True), ("101500.5", True), ("10:15:00", True),
                                          ("20210304101500+0100", True), ("20210304\\20210305", True),
                                          ("Dr. Mueller", False), ("MUELLER^HANS", False), ("2021O304", False)])
def test_temporal_text(text: str, ok: bool) -> None:
    assert is_temporal_text(text) is ok
