"""The one DICOM date/time parser: every form the pipeline reads, and what it refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from curation.dicomtime import (
    date_or_none,
    datetime_or_none,
    parse_date,
    parse_datetime,
    parse_time,
    time_or_none,
)


@pytest.mark.parametrize("value", ["20240301", "2024.03.01", "2024-03-01", " 20240301 ",
                                   dt.date(2024, 3, 1), dt.datetime(2024, 3, 1, 23, 59)])
def test_dates(value: object) -> None:
    assert parse_date(value) == dt.date(2024, 3, 1) == date_or_none(value)


@pytest.mark.parametrize("value", ["2024-0301", "20241301", "20240230", "2024031", "1 March 2024", "20240301x"])
def test_bad_dates(value: str) -> None:
    with pytest.raises(ValueError, match="date"):
        parse_date(value)
    assert date_or_none(value) is None


@pytest.mark.parametrize(("value", "want"), [
    ("14", dt.time(14)), ("1405", dt.time(14, 5)), ("140509", dt.time(14, 5, 9)),
    ("140509.5", dt.time(14, 5, 9, 500000)), ("140509.123456", dt.time(14, 5, 9, 123456)),
    ("14:05", dt.time(14, 5)), ("14:05:09.25", dt.time(14, 5, 9, 250000)), (dt.time(1, 2), dt.time(1, 2)),
])
def test_times(value: object, want: dt.time) -> None:
    assert parse_time(value) == want == time_or_none(value)


@pytest.mark.parametrize("value", ["2460", "1405091", "140509.1234567", "noon"])
def test_bad_times(value: str) -> None:
    with pytest.raises(ValueError, match="time of day"):
        parse_time(value)
    assert time_or_none(value) is None


@pytest.mark.parametrize(("value", "want"), [
    ("20240301140509.5+0100", dt.datetime(2024, 3, 1, 14, 5, 9, 500000)),  # the offset is dropped
    ("202403011405", dt.datetime(2024, 3, 1, 14, 5)),
    ("2024-03-01T14:05:09", dt.datetime(2024, 3, 1, 14, 5, 9)),
    ("2024-03-01T14:05:09+02:00", dt.datetime(2024, 3, 1, 14, 5, 9)),
    (dt.datetime(2024, 3, 1, 14, 5, tzinfo=dt.UTC), dt.datetime(2024, 3, 1, 14, 5)),
])
def test_datetimes(value: object, want: dt.datetime) -> None:
    assert parse_datetime(value) == want == parse_datetime(value, need_time=True) == datetime_or_none(value)


def test_a_day_alone_is_midnight_unless_a_time_is_needed() -> None:
    for text in ("20240301", "2024-03-01"):
        assert parse_datetime(text) == dt.datetime(2024, 3, 1)
        with pytest.raises(ValueError, match="no time of day"):
            parse_datetime(text, need_time=True)
        assert datetime_or_none(text, need_time=True) is None


@pytest.mark.parametrize("value", ["20241301120000", "2024030125", "yesterday", "2024-03-01T25:00"])
def test_bad_datetimes(value: str) -> None:
    with pytest.raises(ValueError, match="date"):
        parse_datetime(value)
    assert datetime_or_none(value) is None


def test_missing_values() -> None:
    for lenient in (date_or_none, time_or_none, datetime_or_none):
        assert lenient(None) is None and lenient("") is None
