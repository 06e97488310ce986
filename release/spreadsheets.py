"""The release's details spreadsheets: the module that owns openpyxl.

Every ``.xlsx`` the pipeline writes is made here (:func:`build_details_xlsx`),
and read back here for verification (:func:`read_details_xlsx`); openpyxl's
quirks are handled in this module only.  The one other importer of openpyxl is
:mod:`curation.clinical`, which only reads a site's clinical sheet (an input
of the site, so it belongs to curation) with ``load_workbook(read_only=True)``.

openpyxl stamps the save time into ``docProps/core.xml`` and the current
local time into every zip member of the ``.xlsx``; :func:`build_details_xlsx`
fixes both, so identical rows give identical bytes (and so an identical
release zip).

Text from the sites (header values, indications) is data, never code: every
text cell is stored as a string cell (openpyxl would make a text starting with
``=`` a formula and ``#N/A`` an error), a text that a spreadsheet program
could read as a formula (``=``, ``+``, ``-``, ``@``) also gets Excel's
quote-prefix style, and characters no worksheet can hold (C0 control
characters, which make openpyxl raise ``IllegalCharacterError``; lone
surrogates, U+FFFE, U+FFFF) are removed and counted
(:attr:`DetailsWorkbook.removed_characters`).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from anonymization.gate import GateAction, iter_rules
from curation.dicomtime import parse_date, parse_datetime, parse_time

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
#: Characters a worksheet cell cannot hold: C0 controls but tab, LF and CR (openpyxl raises on them),
#: lone surrogates and U+FFFE/U+FFFF (not allowed in XML 1.0).
_ILLEGAL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: First characters that make spreadsheet programs read a text as a formula.
FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@")
_CORE_XML = "docProps/core.xml"
_MODIFIED_RE = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")
_CREATED_RE = re.compile(rb"(<dcterms:created[^>]*>)[^<]*(</dcterms:created>)")


@functools.cache
def identifying_keywords() -> frozenset[str]:
    """:data:`IDENTIFYING_COLUMNS` and every attribute the gate's rule table treats as identifying.

    Returns
    -------
    frozenset[str]
        Column names that may never appear in a released spreadsheet.
    """
    flagged = (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM, GateAction.UID, GateAction.REVIEW)
    return IDENTIFYING_COLUMNS | {rule.keyword for rule in iter_rules() if rule.action in flagged}


def check_column_names(names: Sequence[str]) -> None:
    """Refuse any column that would carry an identifier.

    Parameters
    ----------
    names
        Column names.

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


def cell_value(value: Any, kind: str) -> Any:
    r"""Turn a metadata value (JSON or already typed) into the cell value of ``kind``.

    ``None`` and ``""`` give an empty cell.  Lists (for example PixelSpacing)
    of a numeric kind are written as text ``"0.98\0.98"``, as DICOM shows them.

    Parameters
    ----------
    value
        The value: ``None``, a string, a number, a list, or a date/time object.
    kind
        One of :data:`KINDS`.

    Returns
    -------
    Any
        ``None`` (empty cell, also for a NaN or infinite number), ``str``,
        ``int``, ``float``, ``datetime.date``, ``datetime.time`` or
        ``datetime.datetime``.

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
        number = float(value)
        return number if math.isfinite(number) else None  # a header's NaN/Inf: no valid xlsx number
    if kind == "date":
        return parse_date(value)
    if kind == "time":
        return parse_time(value)
    return parse_datetime(value)


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


def clean_text(text: str) -> tuple[str, int]:
    """Remove the characters no worksheet cell can hold.

    Parameters
    ----------
    text
        A cell's text.

    Returns
    -------
    tuple[str, int]
        The text without C0 control characters (tab, LF and CR stay), lone
        surrogates, U+FFFE and U+FFFF, and how many were removed.
    """
    cleaned, removed = _ILLEGAL_CHARACTERS.subn("", text)
    return cleaned, removed


@dataclass(frozen=True)
class DetailsWorkbook:
    """A details spreadsheet's bytes and what had to be cleaned to write it.

    Attributes
    ----------
    data
        The ``.xlsx`` file.
    removed_characters
        Characters no worksheet cell can hold, removed from text cells.
    """

    data: bytes
    removed_characters: int = 0


def _as_text_cell(cell: Any) -> None:
    """Make a cell holding a ``str`` a string cell: never a formula, an error or anything else."""
    cell.data_type = "s"
    if cell.value.startswith(FORMULA_STARTS):
        cell.quotePrefix = True  # Excel keeps it text when the cell is edited


def build_details_xlsx(
    columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], *, title: str = "details"
) -> DetailsWorkbook:
    """Render a details spreadsheet: bold frozen header, typed cells, text cells always text.

    Parameters
    ----------
    columns
        ``(name, kind)`` pairs in column order; ``kind`` is one of :data:`KINDS`.
    rows
        One mapping per row, column name -> value (missing names give empty cells).
    title
        The worksheet's name.

    Returns
    -------
    DetailsWorkbook
        The ``.xlsx`` file (the same columns and rows always give the same
        bytes) and the number of characters removed from text cells.

    Raises
    ------
    ValueError
        When a column name is identifying, names repeat, or a value does not
        fit its column's kind (the message names the row and column).
    """
    names = [name for name, _ in columns]
    check_column_names(names)
    if len(set(names)) != len(names):
        raise ValueError(f"column names repeat: {names}")
    import openpyxl  # here, not at the top: a flow's start does not need it (about 0.2 s)
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    bold = Font(bold=True)
    widths = [len(name) for name in names]
    removed = 0
    ws.append(names)
    for cell in ws[1]:
        cell.font = bold
        _as_text_cell(cell)
    for r, row in enumerate(rows, start=2):
        values = []
        for c, (name, kind) in enumerate(columns):
            try:
                value = cell_value(row.get(name), kind)
            except ValueError as exc:
                raise ValueError(f"row {r}, column {name!r}: {exc}") from None
            if isinstance(value, str):
                value, n = clean_text(value)
                removed += n
            values.append(value)
            widths[c] = max(widths[c], _display_width(value))
        ws.append(values)
        for c, (_, kind) in enumerate(columns, start=1):
            cell = ws.cell(row=r, column=c)
            if isinstance(cell.value, str):
                _as_text_cell(cell)
            elif kind in _NUMBER_FORMATS:
                cell.number_format = _NUMBER_FORMATS[kind]
    if removed:
        logger.warning("%s: removed %d character(s) no worksheet cell can hold from text cells", title, removed)
    for c, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(c)].width = min(width + 2, 80)
    ws.freeze_panes = "A2"
    wb.properties.creator = "petct-release"
    wb.properties.created = FIXED_TIME
    wb.properties.modified = FIXED_TIME
    buffer = io.BytesIO()
    wb.save(buffer)
    return DetailsWorkbook(_repack(buffer.getvalue()), removed)


def details_xlsx_bytes(
    columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], *, title: str = "details"
) -> bytes:
    """Render a details spreadsheet (:func:`build_details_xlsx`) and give its bytes only.

    Parameters
    ----------
    columns, rows, title
        As for :func:`build_details_xlsx`.

    Returns
    -------
    bytes
        The ``.xlsx`` file.

    Raises
    ------
    ValueError
        As :func:`build_details_xlsx`.
    """
    return build_details_xlsx(columns, rows, title=title).data


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


def read_details_xlsx(source: Path | IO[bytes]) -> tuple[list[str], list[list[Any]]]:
    """Read a details spreadsheet back: the header and the value rows of its first sheet.

    Parameters
    ----------
    source
        The ``.xlsx`` file, or a binary stream of it (a zip member).

    Returns
    -------
    tuple[list[str], list[list[Any]]]
        The header's names and the rows that hold a value, as openpyxl reads them.
    """
    import openpyxl

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
