"""DICOM dates, times and date-times (DA, TM, DT) read into :mod:`datetime` values: the one parser.

Headers, metadata records, spreadsheets and the date policy all read the same
forms, so they read them here:

* a date: DICOM ``YYYYMMDD``, the legacy ACR-NEMA ``YYYY.MM.DD`` and ISO
  ``YYYY-MM-DD`` (a ``datetime.date``, or the day of a ``datetime.datetime``);
* a time of day: DICOM ``HH[MM[SS[.F{1,6}]]]`` and ISO ``HH:MM[:SS[.F]]``;
* a date-time: ISO 8601 (``2024-03-01T14:05:09``) or DICOM
  ``YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]``.  The UTC offset is dropped: every time
  of a study is read in the scanner's own clock, as the TM elements are.

The strict functions raise :class:`ValueError` naming the value; the
``*_or_none`` ones return ``None`` for a missing or invalid value (headers as
delivered, where an unreadable time is a missing one).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_DATE = re.compile(r"(\d{4})([.-]?)(\d{2})\2(\d{2})")
_TIME = re.compile(r"(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?")
_DICOM_DT = re.compile(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?")


def _micro(fraction: str | None) -> int:
    return int((fraction or "0").ljust(6, "0"))


def parse_date(value: Any) -> dt.date:
    """A date from a ``datetime.date``/``datetime.datetime`` or DICOM, legacy or ISO text.

    Parameters
    ----------
    value
        The value.

    Returns
    -------
    datetime.date
        The day.

    Raises
    ------
    ValueError
        When ``value`` is not a valid date.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    try:
        return dt.date(int(match.group(1)), int(match.group(3)), int(match.group(4)))
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date") from None


def parse_time(value: Any) -> dt.time:
    """A time of day from a ``datetime.time`` or DICOM TM / ISO text, fraction kept.

    Parameters
    ----------
    value
        The value.

    Returns
    -------
    datetime.time
        The time of day.

    Raises
    ------
    ValueError
        When ``value`` is not a valid time of day.
    """
    if isinstance(value, dt.time):
        return value
    text = str(value).strip()
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day (HHMMSS[.ffffff] or HH:MM:SS)")
    hh, mm, ss, frac = match.groups()
    try:
        return dt.time(int(hh), int(mm or 0), int(ss or 0), _micro(frac))
    except ValueError:
        raise ValueError(f"{text!r} is not a valid time of day") from None


def parse_datetime(value: Any, *, need_time: bool = False) -> dt.datetime:
    """A naive date-time from a ``datetime.datetime``, ISO 8601 text or DICOM DT text.

    Parameters
    ----------
    value
        The value.
    need_time
        Refuse a DICOM DT that holds a day only (by default it is midnight).

    Returns
    -------
    datetime.datetime
        The date-time, without its UTC offset.

    Raises
    ------
    ValueError
        When ``value`` is not a valid date-time (or has no time of day and
        ``need_time`` is set).
    """
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    text = str(value).strip()
    match = _DICOM_DT.fullmatch(text)
    if match is None:
        try:
            moment = dt.datetime.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            raise ValueError(f"{text!r} is not a date-time") from None
        if need_time and len(text) <= len("YYYY-MM-DD"):
            raise ValueError(f"{text!r} has no time of day")
        return moment
    hh, mm, ss, frac = match.group(2, 3, 4, 5)
    if hh is None and need_time:
        raise ValueError(f"{text!r} has no time of day")
    day = parse_date(match.group(1))
    try:
        return dt.datetime(day.year, day.month, day.day, int(hh or 0), int(mm or 0), int(ss or 0), _micro(frac))
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date-time") from None


def date_or_none(value: Any) -> dt.date | None:
    """:func:`parse_date`, or ``None`` when the value is missing or invalid."""
    try:
        return parse_date(value) if value not in (None, "") else None
    except ValueError:
        return None


def time_or_none(value: Any) -> dt.time | None:
    """:func:`parse_time`, or ``None`` when the value is missing or invalid."""
    try:
        return parse_time(value) if value not in (None, "") else None
    except ValueError:
        return None


def datetime_or_none(value: Any, *, need_time: bool = False) -> dt.datetime | None:
    """:func:`parse_datetime`, or ``None`` when the value is missing or invalid."""
    try:
        return parse_datetime(value, need_time=need_time) if value not in (None, "") else None
    except ValueError:
        return None
