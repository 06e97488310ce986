"""A site's clinical sheet: the clinical indication of each study, read once at the edge.

A site may name a ``clinical_sheet`` in ``release.toml``
(:attr:`curation.config.SiteConfig.clinical_sheet`): a ``.csv`` or an ``.xlsx``
giving a study's indication where it differs from the site's ``indication``.
It is an input of the site, read and validated here into a plain mapping.

openpyxl is owned by :mod:`release.spreadsheets`, which writes (and reads
back) every spreadsheet of the release; this module is its one other user and
only reads, with ``load_workbook(read_only=True, data_only=True)``.
"""

from __future__ import annotations

import csv
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from curation.config import ConfigError

logger = logging.getLogger(__name__)


class ClinicalSheetError(ConfigError):
    """The clinical sheet cannot be read; the message names file, row and problem.

    A configuration error (the sheet is named in ``release.toml``): exit code 2.
    """


_SHEET_COLUMNS = ("StudyInstanceUID", "indication")


def read_clinical_sheet(path: Path) -> dict[str, str]:
    """Read a site's clinical sheet: StudyInstanceUID -> clinical indication.

    The sheet is a ``.csv`` (UTF-8, comma separated) or the first worksheet of
    an ``.xlsx``, with a header row holding the columns ``StudyInstanceUID``
    and ``indication`` (other columns are ignored).  Blank rows are skipped.

    Parameters
    ----------
    path
        The sheet (``.csv`` or ``.xlsx``).

    Returns
    -------
    dict[str, str]
        StudyInstanceUID -> indication, stripped, in sheet order.

    Raises
    ------
    ClinicalSheetError
        Naming the file, the row and the problem: a missing file, another
        suffix, a missing column, an empty or non-UID StudyInstanceUID, an
        empty indication, or a study listed twice with different indications.
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
    import openpyxl  # here, not at the top: only an .xlsx sheet needs it (about 0.2 s)

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ClinicalSheetError(f"{path}: not a readable .xlsx workbook ({exc})") from None
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
