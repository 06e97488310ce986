from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

import openpyxl
import pytest

from release.spreadsheets import (
    ClinicalSheetError,
    details_xlsx_bytes,
    read_clinical_sheet,
    write_details_xlsx,
)

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


def test_details_read_back_with_rows_types_header(tmp_path: Path) -> None:
    path = tmp_path / "CT-details.xlsx"
    write_details_xlsx(path, COLUMNS, ROWS)
    wb = openpyxl.load_workbook(path)
    ws = wb.worksheets[0]
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
    with zipfile.ZipFile(__import__("io").BytesIO(first)) as zf:
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
def test_identifying_columns_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        write_details_xlsx(tmp_path / "x.xlsx", [("Case", "str"), (name, "str")], [])
    assert not (tmp_path / "x.xlsx").exists()


def test_bad_value_names_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"row 2, column 'Rows'.*12.5"):
        write_details_xlsx(tmp_path / "x.xlsx", [("Rows", "int")], [{"Rows": 12.5}])
    with pytest.raises(ValueError, match=r"row 3, column 'AcquisitionDate'.*not a date"):
        write_details_xlsx(tmp_path / "x.xlsx", [("AcquisitionDate", "date")], [{}, {"AcquisitionDate": "yesterday"}])


def test_clinical_sheet_csv_and_xlsx(tmp_path: Path) -> None:
    csv_path = tmp_path / "clinical.csv"
    csv_path.write_text(
        "\ufeffStudyInstanceUID,indication,comment\n1.2.3.4,lung cancer,x\n\n1.2.3.5, lymphoma ,\n1.2.3.4,lung cancer,again\n",
        encoding="utf-8",
    )
    assert read_clinical_sheet(csv_path) == {"1.2.3.4": "lung cancer", "1.2.3.5": "lymphoma"}

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["indication", "StudyInstanceUID"])
    ws.append(["melanoma", "1.2.3.9"])
    ws.append([None, None])
    ws.append(["sarcoma", "1.2.3.10"])
    xlsx = tmp_path / "clinical.xlsx"
    wb.save(xlsx)
    assert read_clinical_sheet(xlsx) == {"1.2.3.9": "melanoma", "1.2.3.10": "sarcoma"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("UID,indication\n1.2.3,x\n", r"row 1: no column 'StudyInstanceUID'"),
        ("StudyInstanceUID,indication\n1.2.3,\n", r"row 2: indication is empty"),
        ("StudyInstanceUID,indication\n1.2.3,a\n,b\n", r"row 3: StudyInstanceUID is empty"),
        ("StudyInstanceUID,indication\n1.2.3,a\n1.2.3,b\n", r"row 3: the study of row 2 is listed again"),
        ("StudyInstanceUID,indication\nJohn Doe,a\n", r"row 2: StudyInstanceUID is not a DICOM UID"),
    ],
)
def test_clinical_sheet_errors_name_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ClinicalSheetError, match=message) as info:
        read_clinical_sheet(path)
    assert str(path) in str(info.value)


def test_clinical_sheet_number_uid_in_xlsx_is_an_error(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    wb.active.append(["StudyInstanceUID", "indication"])
    wb.active.append([1.25, "x"])
    path = tmp_path / "sheet.xlsx"
    wb.save(path)
    with pytest.raises(ClinicalSheetError, match=r"row 2: StudyInstanceUID is a float, not text"):
        read_clinical_sheet(path)
