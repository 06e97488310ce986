"""A site's clinical sheet (.csv or .xlsx): StudyInstanceUID -> indication, every error naming file and row."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from curation.clinical import ClinicalSheetError, read_clinical_sheet


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
