"""Dates and ages in what is published (DESIGN.md section 5c), and the date forms the leak scan looks for.

The release publishes dates in one place only: the CT and PET spreadsheets.
The ``[release] dates`` policy decides how:

``shift`` (default)
    Every date of a patient's studies moves by the same whole number of days,
    :func:`patient_offset_days`: HMAC-SHA256 of the site id and PatientID under
    a secret made once in ``state_dir`` (:func:`load_or_create_secret`, never
    released, never logged).  The offset lies between :data:`SHIFT_MIN_DAYS`
    and :data:`SHIFT_MAX_DAYS` (100 to 110 years into the future).  Times of day
    are untouched and the shift is a whole number of days, so every interval
    (injection to acquisition, between the studies of a patient, across
    midnight, month and year ends, leap days) is exact.  The offset is that
    large on purpose: a shifted date can never be mistaken for a real one and
    never equals an original date of another patient, which the leak scan
    searches for (a small shift would make every shifted date of one patient
    another patient's original date: a false leak on every build).
``year``
    Date columns carry the year only (a whole number); date-time columns carry
    the time of day (their year is in the same row's date column).
``as-delivered``
    Dates as the sites sent them.

Ages at or above ``[release] age_cap`` are published as the cap.

Every DA value and the date part of every DT value in any header is recorded
at ingest, in each form it can take in a release (:func:`date_forms`), so the
leak scan can look for the original dates when the policy is ``shift`` or
``year``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from curation.config import DatePolicy
from curation.dicomtime import parse_date, parse_datetime, parse_time
from curation.uids import element_vr, elements_in_tag_order, read_character_set, seen_before

logger = logging.getLogger(__name__)

#: Value representations that hold dates or times.
TEMPORAL_VRS: frozenset[str] = frozenset({"DA", "DT", "TM"})
#: Smallest and largest date shift in days (100 and 110 Julian years); both ends included.
SHIFT_MIN_DAYS = 36525
SHIFT_MAX_DAYS = 40177
#: The secret's file in ``state_dir`` (64 hex digits, mode 0600).
SECRET_NAME = "date-shift.secret"
#: Columns that hold an age in whole years (capped at ``age_cap``).
AGE_COLUMNS: frozenset[str] = frozenset({"PatientAge"})
#: Day 0 of the spreadsheet date serial (Excel, openpyxl, LibreOffice for dates after 1900-02-28).
EXCEL_EPOCH = dt.date(1899, 12, 30)

_SECRET_BYTES = 32
_TEMPORAL_CHARACTERS = re.compile(r"[0-9.:+\- ]*")
_DA = re.compile(r"(\d{4})([.-]?)(\d{2})\2(\d{2})")  # YYYYMMDD; legacy YYYY.MM.DD; YYYY-MM-DD
_DT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")  # the date part of a DT with at least a day


# ---------------------------------------------------------------------------
# dates in headers


def is_temporal_text(text: str) -> bool:
    r"""True when a DA, DT or TM value holds only what a date or time is written with.

    Digits, ``.``, ``:``, ``+``, ``-``, spaces and ``\`` (between values).  A
    letter or any other character means the element carries text (a name, a
    comment), which a de-identifier may have put there and a gate must not
    let through as a "date".

    Parameters
    ----------
    text
        The element's value as text (multi-valued: joined by backslashes).

    Returns
    -------
    bool
        False when any character is not one of those.
    """
    return all(_TEMPORAL_CHARACTERS.fullmatch(part) for part in text.split("\\"))


def dates_in_value(vr: str, text: str) -> list[dt.date]:
    """The calendar dates in a DA value or in the date part of a DT value (multi-valued too).

    Values that are not valid dates (``00000000``, ``20211345``, a year
    without a day) give none.

    Parameters
    ----------
    vr
        ``"DA"`` or ``"DT"`` (any other VR gives no date).
    text
        The value as text; values of a multi-valued element are separated by backslashes.

    Returns
    -------
    list[datetime.date]
        The dates in value order.
    """
    found: list[dt.date] = []
    for part in text.split("\\"):
        part = part.strip(" \x00")
        if vr == "DA":
            match = _DA.fullmatch(part)
            numbers = (match.group(1), match.group(3), match.group(4)) if match else None
        elif vr == "DT":
            match = _DT_DATE.match(part)
            numbers = match.groups() if match else None
        else:
            numbers = None
        if numbers is None:
            continue
        try:
            found.append(dt.date(*(int(n) for n in numbers)))
        except ValueError:
            continue
    return found


def iter_dates(ds: Dataset, *, seen: set[Hashable] | None = None) -> Iterator[dt.date]:
    """Yield every date in ``ds`` and its sequences, at any depth, private elements included.

    Only DA, DT and SQ elements are looked at (read from their undecoded
    bytes), like :func:`curation.uids.iter_uids`.

    Parameters
    ----------
    ds
        A dataset (or sequence item); it is not modified.
    seen
        For the instances of one study, one set for all: a top-level element
        still undecoded whose bytes (:func:`curation.uids.seen_before`),
        in a dataset of the same character set, were looked at in an earlier
        instance is passed over (its dates were yielded then), and the keys
        of those looked at are added.  Most elements of a study, its
        sequences above all, are the same bytes in every instance.

    Yields
    ------
    datetime.date
        Each DA value and the date part of each DT value (:func:`dates_in_value`),
        possibly repeated.
    """
    charset = read_character_set(ds) if seen is not None else None
    for tag, raw in elements_in_tag_order(ds):
        if seen is not None and seen_before(raw, charset, seen):
            continue
        vr = element_vr(ds, tag, raw)
        if vr in ("DA", "DT"):
            value = raw.value
            if value is None:
                continue
            if isinstance(value, (bytes, bytearray)):
                text = bytes(value).decode("latin-1")
            elif isinstance(value, (list, tuple, MultiValue)):
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            yield from dates_in_value(vr, text)
        elif vr == "SQ":
            for item in ds[tag].value or ():
                yield from iter_dates(item)


def date_forms(day: dt.date) -> tuple[str, str, str]:
    """The forms a date takes in a release: ``YYYYMMDD``, ``YYYY-MM-DD`` and the spreadsheet serial.

    The serial is the number of days since 1899-12-30 as a decimal string: an
    ``.xlsx`` stores a date cell as that number (a date-time as that number and
    a fraction).

    Parameters
    ----------
    day
        A date after 1900-02-28 (the spreadsheet serial of earlier days differs).

    Returns
    -------
    tuple[str, str, str]
        ``("20210304", "2021-03-04", "44259")`` for 2021-03-04.
    """
    compact = f"{day.year:04d}{day.month:02d}{day.day:02d}"
    return compact, f"{day.year:04d}-{day.month:02d}-{day.day:02d}", str((day - EXCEL_EPOCH).days)


def date_strings(days: Iterable[dt.date]) -> list[str]:
    """Give every form (:func:`date_forms`) of every date, for a study's identifying-values record.

    Parameters
    ----------
    days
        Dates (repeats allowed).

    Returns
    -------
    list[str]
        The forms, sorted and without repeats.
    """
    return sorted({form for day in days for form in date_forms(day)})


# ---------------------------------------------------------------------------
# the secret and the offsets


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"{path}: not a date-shift secret (expected 64 lower-case hex digits)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s: readable or writable by others (mode %03o); it should be 0600", path, mode)
    return bytes.fromhex(text)


def _publish_secret(path: Path, secret: bytes) -> None:
    """Write ``secret`` to ``path`` atomically, mode 0600, never replacing an existing file.

    The secret goes to a temporary file (``mkstemp`` makes it 0600) that is
    hard-linked to its final name: a crash leaves no half-written secret, and
    of two processes making one at once the first one's stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile: that one stays
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_or_create_secret(state_dir: Path) -> bytes:
    """The date-shift secret of ``state_dir``, made on first use.

    Parameters
    ----------
    state_dir
        The configuration's ``state_dir`` (never released).

    Returns
    -------
    bytes
        32 random bytes (:func:`secrets.token_bytes`), the same on every later call.

    Raises
    ------
    ValueError
        The secret file exists but does not hold a secret (its content is not shown).
    """
    path = Path(state_dir) / SECRET_NAME
    if not path.exists():
        _publish_secret(path, secrets.token_bytes(_SECRET_BYTES))
        logger.info("%s: made the date-shift secret of this state folder", path)
    return _read_secret(path)


def install_secret(state_dir: Path, secret: bytes) -> None:
    """Put a given secret into ``state_dir`` (the phantom demo, whose release must not depend on chance).

    Parameters
    ----------
    state_dir
        The state folder.
    secret
        32 bytes.

    Raises
    ------
    ValueError
        ``secret`` is not 32 bytes, or ``state_dir`` holds another secret already.
    """
    if len(secret) != _SECRET_BYTES:
        raise ValueError(f"a date-shift secret is {_SECRET_BYTES} bytes, not {len(secret)}")
    path = Path(state_dir) / SECRET_NAME
    if not path.exists():
        _publish_secret(path, secret)
    if _read_secret(path) != secret:
        raise ValueError(f"{path}: holds another date-shift secret; it is never replaced")


def patient_offset_days(secret: bytes, site: str, patient_id: str, study_instance_uid: str = "") -> int:
    """The whole number of days every date of one patient moves by.

    Parameters
    ----------
    secret
        From :func:`load_or_create_secret`.
    site, patient_id
        The site id and the PatientID (the site's pseudonym): one patient of a site.
    study_instance_uid
        Used instead of the PatientID when that is empty, so studies without a
        PatientID do not share one offset (each counts as its own patient).

    Returns
    -------
    int
        From :data:`SHIFT_MIN_DAYS` to :data:`SHIFT_MAX_DAYS`.

    Raises
    ------
    ValueError
        Both ``patient_id`` and ``study_instance_uid`` are empty.
    """
    patient = patient_id.strip() or (f"study:{study_instance_uid.strip()}" if study_instance_uid.strip() else "")
    if not patient:
        raise ValueError(f"site {site}: a study without PatientID and StudyInstanceUID has no patient to shift")
    message = json.dumps([site, patient], ensure_ascii=False).encode("utf-8")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    span = SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1
    return SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % span


# ---------------------------------------------------------------------------
# published values


def published_kind(kind: str, policy: DatePolicy) -> str:
    """The spreadsheet column kind of a metadata field of ``kind`` under ``policy``.

    With ``year`` a date column holds an ``int`` (the year) and a date-time
    column a ``time`` (the time of day); otherwise kinds stay.

    Parameters
    ----------
    kind
        A metadata field's kind (``str``, ``int``, ``float``, ``date``, ``time``, ``datetime``).
    policy
        The ``[release] dates`` policy.

    Returns
    -------
    str
        The kind of the published column.
    """
    if policy is DatePolicy.YEAR:
        return {"date": "int", "datetime": "time"}.get(kind, kind)
    return kind


def published_columns(fields: Sequence[tuple[str, str]], policy: DatePolicy) -> tuple[tuple[str, str], ...]:
    """Give the spreadsheet columns of metadata fields under a date policy.

    Parameters
    ----------
    fields
        ``(name, kind)`` of the metadata fields, in column order.
    policy
        The ``[release] dates`` policy.

    Returns
    -------
    tuple[tuple[str, str], ...]
        The same names with :func:`published_kind` kinds.
    """
    return tuple((name, published_kind(kind, policy)) for name, kind in fields)


def publish_value(value: Any, kind: str, *, policy: DatePolicy, offset_days: int = 0) -> Any:
    """One metadata value as it is published: dates by ``policy``, times checked, the rest unchanged.

    Parameters
    ----------
    value
        A metadata value (ISO strings such as ``2024-03-01``, ``14:05:09``,
        ``2024-03-01T14:05:09``; DICOM forms are read too) or ``None``.
    kind
        The field's kind (``date``, ``time``, ``datetime``; others pass through).
    policy
        The ``[release] dates`` policy.
    offset_days
        The patient's offset (:func:`patient_offset_days`); used with ``shift`` only.

    Returns
    -------
    Any
        ``None`` for an empty value; a ``datetime.date``, ``datetime.time``,
        ``datetime.datetime`` or ``int`` (a year) for the temporal kinds.

    Raises
    ------
    ValueError
        A temporal value that is not a valid date, time or date-time.
    """
    if value is None or value == "":
        return None
    if kind == "time":
        return parse_time(value)
    if kind == "date":
        day = parse_date(value)
        if policy is DatePolicy.SHIFT:
            return day + dt.timedelta(days=offset_days)
        return day.year if policy is DatePolicy.YEAR else day
    if kind == "datetime":
        moment = parse_datetime(value)
        if policy is DatePolicy.SHIFT:
            return moment + dt.timedelta(days=offset_days)
        return moment.time() if policy is DatePolicy.YEAR else moment
    return value


def cap_age(age: Any, age_cap: int) -> Any:
    """An age in whole years as published: ``age_cap`` for every age at or above it.

    Parameters
    ----------
    age
        The age in whole years (``PatientAge`` as :mod:`curation.metadata` records it), or ``None``.
    age_cap
        The ``[release] age_cap``.

    Returns
    -------
    int or None
        ``min(age, age_cap)``; ``None`` for a missing age.

    Raises
    ------
    ValueError
        ``age`` is not a whole number (``None`` passes through).
    """
    if age is None or age == "":
        return None
    if isinstance(age, bool) or not float(age).is_integer():
        raise ValueError(f"{age!r} is not an age in whole years")
    return min(int(age), age_cap)


@dataclass(frozen=True)
class PublishedRow:
    """One spreadsheet row's metadata after the date policy and the age cap."""

    values: dict[str, Any]
    blanked: tuple[str, ...] = ()  # fields whose value could not be read (published empty)


def publish_metadata(
    metadata: Mapping[str, Any],
    fields: Sequence[tuple[str, str]],
    *,
    policy: DatePolicy,
    offset_days: int,
    age_cap: int,
) -> PublishedRow:
    """Apply the date policy and the age cap to one case's metadata.

    Parameters
    ----------
    metadata
        Field name -> value (as :mod:`curation.metadata` records it).
    fields
        The ``(name, kind)`` fields to publish, in column order.
    policy, offset_days
        See :func:`publish_value`.
    age_cap
        Ages at or above are published as this value (:data:`AGE_COLUMNS`).

    Returns
    -------
    PublishedRow
        A value for every field; a value that cannot be read as its kind
        (a header's ``20211345``) is published empty and named in ``blanked``,
        so no header value can stop the packaging.
    """
    values: dict[str, Any] = {}
    blanked: list[str] = []
    for name, kind in fields:
        try:
            if name in AGE_COLUMNS:
                values[name] = cap_age(metadata.get(name), age_cap)
            else:
                values[name] = publish_value(metadata.get(name), kind, policy=policy, offset_days=offset_days)
        except (TypeError, ValueError):
            values[name] = None
            blanked.append(name)
    return PublishedRow(values, tuple(blanked))
