"""The release spreadsheets and the clinical sheet: the only module that imports openpyxl.

openpyxl stamps the save time into ``docProps/core.xml`` and the current
local time into every zip member of the ``.xlsx``; :func:`write_details_xlsx`
fixes both, so identical rows give identical bytes (and so an identical
release zip).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import openpyxl
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from anonymization.gate import GateAction, iter_rules
from curation.atomic import atomic_write_bytes
from curation.config import ConfigError

logger = logging.getLogger(__name__)

#: Column kinds a details spreadsheet understands (the kinds of curation.metadata fields).
KINDS: tuple[str, ...] = ("str", "int", "float", "date", "time", "datetime")

#: The fixed time written as the workbook's creation/modification time and zip member time.
FIXED_TIME = dt.datetime(2000, 1, 1, 0, 0, 0)

#: Column names that identify a patient or a study: never a spreadsheet column.
#: (Any name ending in "UID" is refused as well.)
IDENTIFYING_COLUMNS: frozenset[str] = frozenset(
    {
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "MedicalRecordLocator",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        "StationName",
        "DeviceSerialNumber",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "fingerprint",
    }
)

_NUMBER_FORMATS = {"date": "yyyy-mm-dd", "time": "hh:mm:ss", "datetime": "yyyy-mm-dd hh:mm:ss"}
_CORE_XML = "docProps/core.xml"
_MODIFIED_RE = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")
_CREATED_RE = re.compile(rb"(<dcterms:created[^>]*>)[^<]*(</dcterms:created>)")


class ClinicalSheetError(ConfigError):
    """The clinical sheet cannot be read; the message names file, row and problem.

    A configuration error (the sheet is named in ``release.toml``): exit code 2.
    """


@functools.cache
def identifying_keywords() -> frozenset[str]:
    """:data:`IDENTIFYING_COLUMNS` and every attribute the gate's rule table treats as identifying."""
    flagged = (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM, GateAction.UID, GateAction.REVIEW)
    return IDENTIFYING_COLUMNS | {rule.keyword for rule in iter_rules() if rule.action in flagged}


def check_column_names(names: Sequence[str]) -> None:
    """Refuse any column that would carry an identifier.

    Raises
    ------
    ValueError
        When a name is one of :func:`identifying_keywords` or ends in ``UID``.
    """
    identifying = identifying_keywords()
    for name in names:
        if name in identifying or name.upper().endswith("UID"):
            raise ValueError(
                f"column {name!r} would put an identifying attribute into a released spreadsheet"
            )


# ---------------------------------------------------------------------------
# cell values


def _parse_date(text: str) -> dt.date:
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not a date (YYYYMMDD or YYYY-MM-DD)")


def _parse_time(text: str) -> dt.time:
    clean = text.strip()
    if ":" in clean:
        return dt.time.fromisoformat(clean)
    # DICOM TM: HH[MM[SS[.F{1,6}]]]
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", clean)
    if not match:
        raise ValueError(f"{text!r} is not a time (HHMMSS[.ffffff] or HH:MM:SS)")
    hh, mm, ss, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return dt.time(int(hh), int(mm or 0), int(ss or 0), micro)


def _parse_datetime(text: str) -> dt.datetime:
    clean = text.strip()
    if "T" in clean or "-" in clean[:10]:
        value = dt.datetime.fromisoformat(clean)
        return value.replace(tzinfo=None)
    # DICOM DT: YYYYMMDDHHMMSS[.F] (offset dropped: the spreadsheet keeps local scanner time)
    clean = re.split(r"[+-]", clean, maxsplit=1)[0]
    if len(clean) < 8:
        raise ValueError(f"{text!r} is not a date-time")
    day = _parse_date(clean[:8])
    time = _parse_time(clean[8:]) if len(clean) > 8 else dt.time()
    return dt.datetime.combine(day, time)


def cell_value(value: Any, kind: str) -> Any:
    """Turn a metadata value (JSON or already typed) into the cell value of ``kind``.

    ``None`` and ``""`` give an empty cell.  Lists (for example PixelSpacing)
    of a numeric kind are written as text ``"0.98\\0.98"``, as DICOM shows them.

    Raises
    ------
    ValueError
        When the value cannot be read as ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"column kind {kind!r} is not one of {', '.join(KINDS)}")
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    if kind == "str":
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a whole number")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        return value if isinstance(value, dt.date) else _parse_date(str(value))
    if kind == "time":
        return value if isinstance(value, dt.time) else _parse_time(str(value))
    if isinstance(value, dt.datetime):
        return value
    return _parse_datetime(str(value))


def _display_width(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        return 19
    if isinstance(value, dt.date):
        return 10
    if isinstance(value, dt.time):
        return 8
    if isinstance(value, float):
        return len(f"{value:.6g}")
    return len(str(value))


# ---------------------------------------------------------------------------
# the details spreadsheets


def details_xlsx_bytes(
    columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], *, title: str = "details"
) -> bytes:
    """The bytes of a details spreadsheet (see :func:`write_details_xlsx`)."""
    names = [name for name, _ in columns]
    check_column_names(names)
    if len(set(names)) != len(names):
        raise ValueError(f"column names repeat: {names}")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    bold = Font(bold=True)
    widths = [len(name) for name in names]
    ws.append(names)
    for cell in ws[1]:
        cell.font = bold
    for r, row in enumerate(rows, start=2):
        values = []
        for c, (name, kind) in enumerate(columns):
            try:
                value = cell_value(row.get(name), kind)
            except ValueError as exc:
                raise ValueError(f"row {r}, column {name!r}: {exc}") from None
            values.append(value)
            widths[c] = max(widths[c], _display_width(value))
        ws.append(values)
        for c, (_, kind) in enumerate(columns, start=1):
            if kind in _NUMBER_FORMATS:
                ws.cell(row=r, column=c).number_format = _NUMBER_FORMATS[kind]
    for c, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(c)].width = min(width + 2, 80)
    ws.freeze_panes = "A2"
    wb.properties.creator = "petct-release"
    wb.properties.created = FIXED_TIME
    wb.properties.modified = FIXED_TIME
    buffer = io.BytesIO()
    wb.save(buffer)
    return _repack(buffer.getvalue())


def _repack(xlsx: bytes) -> bytes:
    """Rewrite an openpyxl ``.xlsx`` with fixed member times and a fixed core.xml time."""
    stamp = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == _CORE_XML:
                # openpyxl's save_workbook sets "modified" to the wall clock
                data, n_mod = _MODIFIED_RE.subn(rb"\g<1>" + stamp + rb"\g<2>", data)
                data, n_cre = _CREATED_RE.subn(rb"\g<1>" + stamp + rb"\g<2>", data)
                if (n_mod, n_cre) != (1, 1):
                    raise RuntimeError(f"{_CORE_XML} written by openpyxl has no single created/modified time")
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            fixed.create_system = 3
            dst.writestr(fixed, data, compresslevel=6)
    return out.getvalue()


def write_details_xlsx(
    path: Path, columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Write a details spreadsheet: bold frozen header, typed cells, fitting widths.

    Parameters
    ----------
    path
        The ``.xlsx`` to write (atomically).
    columns
        ``(name, kind)`` pairs in column order; ``kind`` is one of :data:`KINDS`.
    rows
        One mapping per row, column name -> value (missing names give empty cells).

    Raises
    ------
    ValueError
        When a column name is identifying, names repeat, or a value does not
        fit its column's kind (the message names the row and column).
    """
    atomic_write_bytes(path, details_xlsx_bytes(columns, rows, title=Path(path).stem[:31]))


def read_details_xlsx(source: Path | IO[bytes]) -> tuple[list[str], list[list[Any]]]:
    """Read a details spreadsheet back: the header and the value rows of its first sheet."""
    wb = openpyxl.load_workbook(source, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        rows = [list(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()
    if not rows:
        return [], []
    header = [str(v) if v is not None else "" for v in rows[0]]
    body = [r for r in rows[1:] if any(v is not None for v in r)]
    return header, body


# ---------------------------------------------------------------------------
# the clinical sheet


_SHEET_COLUMNS = ("StudyInstanceUID", "indication")


def read_clinical_sheet(path: Path) -> dict[str, str]:
    """Read a site's clinical sheet: StudyInstanceUID -> clinical indication.

    The sheet is a ``.csv`` (UTF-8, comma separated) or the first worksheet of
    an ``.xlsx``, with a header row holding the columns ``StudyInstanceUID``
    and ``indication`` (other columns are ignored).  Blank rows are skipped.

    Raises
    ------
    ClinicalSheetError
        Naming the file, the row and the problem: a missing column, an empty
        UID or indication, or a study listed twice with different indications.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".xlsx") and not path.is_file():
        raise ClinicalSheetError(f"{path}: the clinical sheet does not exist (site clinical_sheet in the config)")
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".xlsx":
        rows = _xlsx_rows(path)
    else:
        raise ClinicalSheetError(f"{path}: a clinical sheet must be .csv or .xlsx, not {suffix or 'no suffix'!r}")
    if not rows:
        raise ClinicalSheetError(f"{path}: the sheet is empty; expected a header row {', '.join(_SHEET_COLUMNS)}")
    header = [("" if v is None else str(v)).strip() for v in rows[0]]
    where = {}
    for col in _SHEET_COLUMNS:
        if col not in header:
            raise ClinicalSheetError(
                f"{path}: row 1: no column {col!r}; the header is {header!r}, expected "
                f"{', '.join(_SHEET_COLUMNS)}"
            )
        where[col] = header.index(col)
    result: dict[str, str] = {}
    first_row: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if all(v is None or str(v).strip() == "" for v in row):
            continue
        uid_raw = row[where["StudyInstanceUID"]] if where["StudyInstanceUID"] < len(row) else None
        ind_raw = row[where["indication"]] if where["indication"] < len(row) else None
        if uid_raw is not None and not isinstance(uid_raw, str):
            raise ClinicalSheetError(
                f"{path}: row {number}: StudyInstanceUID is a {type(uid_raw).__name__}, not text "
                "(format the column as text so the UID is not turned into a number)"
            )
        uid = (uid_raw or "").strip()
        indication = ("" if ind_raw is None else str(ind_raw)).strip()
        if not uid:
            raise ClinicalSheetError(f"{path}: row {number}: StudyInstanceUID is empty")
        if not re.fullmatch(r"[0-9.]{1,64}", uid):
            raise ClinicalSheetError(f"{path}: row {number}: StudyInstanceUID is not a DICOM UID (digits and dots)")
        if not indication:
            raise ClinicalSheetError(
                f"{path}: row {number}: indication is empty (leave the study out of the sheet to use "
                "the site's indication)"
            )
        if uid in result and result[uid] != indication:
            raise ClinicalSheetError(
                f"{path}: row {number}: the study of row {first_row[uid]} is listed again with another "
                f"indication ({result[uid]!r} vs {indication!r})"
            )
        result[uid] = indication
        first_row.setdefault(uid, number)
    logger.debug("%s: %d studies with an indication", path, len(result))
    return result


def _csv_rows(path: Path) -> list[list[Any]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return [list(r) for r in csv.reader(fh)]
    except UnicodeDecodeError as exc:
        raise ClinicalSheetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ClinicalSheetError(f"{path}: not a readable CSV file ({exc})") from None


def _xlsx_rows(path: Path) -> list[list[Any]]:
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ClinicalSheetError(f"{path}: not a readable .xlsx workbook ({exc})") from None
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
