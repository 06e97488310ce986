from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import openpyxl
import pytest

from anonymization.dates import SECRET_NAME, date_strings, patient_offset_days
from curation.config import IdentityFlagPolicy
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import CATEGORIES
from curation.state import StatePaths
from release.assemble import (
    STAGING_DIR,
    ReleaseExistsError,
    assemble_release,
    publish_release,
    quarantine_release,
)
from release.verify import leak_scan_problems
from release.zipper import MemberChangedError

from .conftest import PLANTED_PATIENT_ID, PLANTED_UID_ROOT, TEST_SECRET, ReleaseInputs, make_inputs

NAME = "enhance-pet-test"


def _build(inputs: ReleaseInputs, **kw):
    """Assemble and publish (what the build flow does once verify passes)."""
    return publish_release(_stage(inputs, **kw), inputs.config)


def _stage(inputs: ReleaseInputs, **kw):
    return assemble_release(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0", **kw)


def _offset(site: str) -> int:
    """The test patient's date offset at ``site`` (every test case has the PatientID PLANTED_PATIENT_ID)."""
    return patient_offset_days(TEST_SECRET, site, PLANTED_PATIENT_ID)


def _sheet_rows(zip_path: str, sheet: str) -> tuple[list[list[object]], dict[str, int]]:
    with zipfile.ZipFile(zip_path) as zf:
        wb = openpyxl.load_workbook(io.BytesIO(zf.read(f"{NAME}/{sheet}")))
    rows = [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    return rows, {name: i for i, name in enumerate(rows[0])}


def _text_members(zip_path: str) -> dict[str, str]:
    """Every text the release holds: its text members and the XML inside its spreadsheets."""
    texts = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".xlsx"):
                with zipfile.ZipFile(io.BytesIO(data)) as xlsx:
                    texts.update({f"{name}!{m}": xlsx.read(m).decode() for m in xlsx.namelist()})
            elif not name.endswith(".nii.gz"):
                texts[name] = data.decode()
    return texts


def test_a_new_zip_is_staged_and_published_only_by_publish_release(inputs: ReleaseInputs) -> None:
    final = inputs.root / "dist" / f"{NAME}-1.0.0.zip"
    staged = _stage(inputs)
    assert not staged.published and not staged.reused
    assert staged.zip_path == str(final.parent / STAGING_DIR / final.name)
    assert not final.exists() and not Path(str(final) + ".sha256").exists()
    # a build killed before verify finished: the next one finds the staged bytes and writes nothing
    mtime = Path(staged.zip_path).stat().st_mtime_ns
    again = _stage(inputs)
    assert (again.zip_path, again.sha256, again.published, again.reused) == (
        staged.zip_path, staged.sha256, False, True)
    assert Path(again.zip_path).stat().st_mtime_ns == mtime
    published = publish_release(again, inputs.config)
    assert published.published and published.zip_path == str(final)
    assert Path(str(final) + ".sha256").read_text() == f"{staged.sha256}  {final.name}\n"
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, final.name + ".sha256"]
    # staged bytes changed after their verification are never published
    other = _stage(dataclasses.replace(inputs, entries=inputs.entries[:2]), force=True)
    Path(other.zip_path).write_bytes(b"PK not what was verified")
    with pytest.raises(ValueError, match="changed since it was verified"):
        publish_release(other, inputs.config)
    assert Path(str(final) + ".sha256").read_text().startswith(staged.sha256)


def test_a_zip_that_fails_verify_is_moved_aside_beside_the_published_name(inputs: ReleaseInputs) -> None:
    staged = _stage(inputs)
    target = quarantine_release(Path(staged.zip_path))
    assert target == inputs.root / "dist" / f"{NAME}-1.0.0.zip.failed-verify"
    assert target.is_file() and not Path(staged.zip_path).exists()
    assert not (inputs.root / "dist" / f"{NAME}-1.0.0.zip").exists()


def test_layout_exactly(inputs: ReleaseInputs) -> None:
    result = _build(inputs)
    assert result.zip_path == str(inputs.root / "dist" / f"{NAME}-1.0.0.zip")
    assert (result.cases, result.reused) == (3, False)
    expected = {f"{NAME}/{f}" for f in ("labels.json", "CT-details.xlsx", "PT-details.xlsx", "SHA256SUMS", "README.md")}
    for case in ("0001", "0002", "0003"):
        expected |= {f"{NAME}/imaging-data/images/CT/{case}.nii.gz", f"{NAME}/imaging-data/images/PT/{case}.nii.gz"}
        expected |= {f"{NAME}/imaging-data/ground-truth/{c}/{case}.nii.gz" for c in CATEGORIES}
    with zipfile.ZipFile(result.zip_path) as zf:
        names = zf.namelist()
        assert set(names) == expected and names == sorted(names)
        assert result.members == len(expected) == 5 + 3 * 9
        methods = {i.filename: i.compress_type for i in zf.infolist()}
        assert {m for n, m in methods.items() if n.endswith(".nii.gz")} == {zipfile.ZIP_STORED}
        assert {m for n, m in methods.items() if not n.endswith(".nii.gz")} == {zipfile.ZIP_DEFLATED}
        # the released CT is the prepared file, byte for byte
        assert zf.read(f"{NAME}/imaging-data/images/CT/0002.nii.gz") == Path(inputs.entries[1].prepared.ct.path).read_bytes()
        labels = json.loads(zf.read(f"{NAME}/labels.json"))
        assert list(labels) == list(CATEGORIES) and labels["Organs"]["4"] == "brain"
    sidecar = Path(result.zip_path + ".sha256").read_text()
    assert sidecar == f"{result.sha256}  {NAME}-1.0.0.zip\n"
    assert result.bytes == Path(result.zip_path).stat().st_size


def test_sha256sum_tool_accepts_the_extracted_release(inputs: ReleaseInputs, tmp_path: Path) -> None:
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum (coreutils) is not installed")
    result = _build(inputs)
    out = tmp_path / "x"
    with zipfile.ZipFile(result.zip_path) as zf:
        zf.extractall(out)
        sums = zf.read(f"{NAME}/SHA256SUMS").decode()
    assert len(sums.splitlines()) == result.members - 1 and "SHA256SUMS" not in sums
    run = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out / NAME, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK") == result.members - 1
    run = subprocess.run(["sha256sum", "-c", f"{NAME}-1.0.0.zip.sha256"], cwd=inputs.root / "dist", capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_two_builds_give_the_same_bytes(tmp_path: Path) -> None:
    a = make_inputs(tmp_path / "a")
    b = make_inputs(tmp_path / "b")  # same content, other folders, other file times
    ra, rb = _build(a), _build(b)
    assert Path(ra.zip_path).read_bytes() == Path(rb.zip_path).read_bytes()
    assert ra.sha256 == rb.sha256
    c = make_inputs(tmp_path / "c", seed=1)
    assert _build(c).sha256 != ra.sha256


def test_reuse_identical_refuse_different_force(inputs: ReleaseInputs) -> None:
    first = _build(inputs)
    zip_path = Path(first.zip_path)
    mtime = zip_path.stat().st_mtime_ns
    again = _build(inputs)
    assert again.reused and again.sha256 == first.sha256
    assert zip_path.stat().st_mtime_ns == mtime  # nothing rewritten

    inputs.entries[0] = dataclasses.replace(inputs.entries[0], indication="melanoma")
    with pytest.raises(ReleaseExistsError, match=r"already exists and SHA256SUMS differs.*--force"):
        _build(inputs)
    assert zip_path.stat().st_mtime_ns == mtime
    forced = _build(inputs, force=True)
    assert not forced.reused and forced.sha256 != first.sha256
    assert Path(forced.zip_path + ".sha256").read_text().startswith(forced.sha256)
    # dropping a case is different content too
    with pytest.raises(ReleaseExistsError, match="members differ"):
        assemble_release(inputs.config, inputs.entries[:2], inputs.labels, pipeline_version="0.1.0")


def test_a_zip_whose_publication_was_interrupted_is_verified_again_then_given_its_sidecar(
    inputs: ReleaseInputs,
) -> None:
    first = _build(inputs)
    Path(first.zip_path + ".sha256").unlink()  # killed between the rename and the .sha256
    again = _stage(inputs)
    assert again.reused and not again.published and again.zip_path == first.zip_path
    published = publish_release(again, inputs.config)
    assert published.published and Path(first.zip_path + ".sha256").read_text().split()[0] == first.sha256


def test_a_zip_changed_after_its_build_is_not_reused(inputs: ReleaseInputs) -> None:
    first = _build(inputs)
    zip_path = Path(first.zip_path)
    # same member list and SHA256SUMS, but a stored NIfTI member's bytes altered in place
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        member = next(i for i in zf.infolist() if i.filename.endswith("CT/0001.nii.gz"))
    offset = member.header_offset + 30 + len(member.filename) + len(member.extra) + 200
    data[offset] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    with pytest.raises(ReleaseExistsError, match=r"changed after the build; rebuild with --force"):
        _build(inputs)
    repaired = _build(inputs, force=True)
    assert not repaired.reused and repaired.sha256 == first.sha256
    assert zip_path.read_bytes() != bytes(data)


def test_changed_prepared_file_aborts_without_a_zip(inputs: ReleaseInputs) -> None:
    ct_path = Path(inputs.entries[2].prepared.ct.path)
    img = nib.load(ct_path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) + np.int16(1), img.affine), ct_path)
    with pytest.raises(MemberChangedError, match=r"CT\.nii\.gz: content sha256 .* is not the recorded"):
        _build(inputs)
    assert [p for p in (inputs.root / "dist").rglob("*") if p.is_file()] == []


def test_stale_temporary_of_a_killed_build_is_removed(inputs: ReleaseInputs) -> None:
    dist = inputs.root / "dist"
    dist.mkdir()
    (dist / STAGING_DIR).mkdir()
    for folder in (dist, dist / STAGING_DIR):
        (folder / f".{NAME}-1.0.0.abc123.tmp.zip").write_bytes(b"PK half a zip")
    _build(inputs)
    assert sorted(p.name for p in dist.iterdir()) == [f"{NAME}-1.0.0.zip", f"{NAME}-1.0.0.zip.sha256"]


def test_spreadsheets_rows_types_and_no_identifiers(inputs: ReleaseInputs) -> None:
    result = _build(inputs)
    with zipfile.ZipFile(result.zip_path) as zf:
        for sheet, fields in (("CT-details.xlsx", CT_FIELDS), ("PT-details.xlsx", PT_FIELDS)):
            data = zf.read(f"{NAME}/{sheet}")
            wb = openpyxl.load_workbook(io.BytesIO(data))
            ws = wb.worksheets[0]
            rows = [list(r) for r in ws.iter_rows(values_only=True)]
            assert rows[0] == ["Case", "Site", "License", "Indication", *(n for n, _ in fields)]
            assert [r[:4] for r in rows[1:]] == [
                ["0001", "leipzig", "CC-BY-4.0", "lung cancer"],
                ["0002", "vienna", "CC-BY-NC-4.0", "lymphoma"],
                ["0003", "leipzig", "CC-BY-4.0", "lung cancer"],
            ]
            assert ws.freeze_panes == "A2" and all(c.font.bold for c in ws[1])
            col = {name: i for i, name in enumerate(rows[0])}
            second = rows[2]
            if sheet.startswith("CT"):
                assert second[col["XRayTubeCurrent"]] == 81.5
                assert isinstance(second[col["Rows"]], int) and second[col["Rows"]] == 10
                # the default date policy: shifted by the patient's offset (vienna's patient), times as acquired
                assert second[col["AcquisitionDate"]] == dt.datetime(2024, 3, 2) + dt.timedelta(days=_offset("vienna"))
                assert second[col["AcquisitionTime"]] == dt.time(14, 5, 9)
            else:
                assert second[col["PatientAge"]] == 51 and second[col["PatientSex"]] == "F"
                assert second[col["RadiopharmaceuticalStartDateTime"]] == (
                    dt.datetime(2024, 3, 2, 13, 1, 2) + dt.timedelta(days=_offset("vienna")))
                assert second[col["PhilipsSUVScaleFactor"]] is None
            cells = [str(v) for r in rows for v in r if v is not None]
            assert not any(PLANTED_UID_ROOT in c or PLANTED_PATIENT_ID in c or "Planted" in c for c in cells)
            # nor anywhere in the workbook's bytes, compressed or not
            assert PLANTED_PATIENT_ID.encode() not in data
            with zipfile.ZipFile(io.BytesIO(data)) as xlsx:
                for member in xlsx.namelist():
                    raw = xlsx.read(member)
                    assert PLANTED_UID_ROOT.encode() not in raw and PLANTED_PATIENT_ID.encode() not in raw
                    assert b"Planted" not in raw


def test_dataset_card(inputs: ReleaseInputs) -> None:
    result = _build(inputs)
    with zipfile.ZipFile(result.zip_path) as zf:
        card = zf.read(f"{NAME}/README.md").decode()
    assert card.startswith(f"# {NAME} 1.0.0\n")
    assert "| leipzig | 2 | CC-BY-4.0 | yes |" in card
    assert "| vienna | 1 | CC-BY-NC-4.0 | no |" in card
    assert "| lung cancer | 2 |" in card and "| lymphoma | 1 |" in card
    assert "| Organs | 18 | 1-18 |" in card
    assert "Each case carries the licence of the site it comes from" in card
    assert "petct-release 0.1.0" in card
    assert "Defaced sites: leipzig (2 cases defaced)" in card and "extends 2 PET slice spacings" in card
    assert "3 mm beyond" in card
    assert "sha256sum -c SHA256SUMS" in card and f"petct-release verify {NAME}-1.0.0.zip" in card
    assert PLANTED_UID_ROOT not in card


def test_manifest_for_verify(inputs: ReleaseInputs) -> None:
    result = _build(inputs)
    manifest = json.loads(StatePaths(inputs.config.release.state_dir).release_manifest(f"{NAME}-1.0.0.zip").read_text())
    assert manifest["zip_sha256"] == result.sha256
    assert [c["case"] for c in manifest["cases"]] == ["0001", "0002", "0003"]
    first = manifest["cases"][0]
    assert first["study_key"] == inputs.entries[0].prepared.key and first["defaced"] is True
    assert first["cylinder"]["radius"] == 5.0
    assert manifest["cases"][1]["cylinder"] is None
    assert first["members"]["imaging-data/images/CT/0001.nii.gz"] == inputs.entries[0].prepared.ct.sha256


def test_inconsistent_entries_are_refused(inputs: ReleaseInputs) -> None:
    twice = [*inputs.entries, dataclasses.replace(inputs.entries[0])]
    with pytest.raises(ValueError, match="case number 1 is given twice"):
        assemble_release(inputs.config, twice, inputs.labels, pipeline_version="0.1.0")
    labels = dict(inputs.entries[0].prepared.labels)
    del labels["Ribs"]
    broken = dataclasses.replace(inputs.entries[0], prepared=dataclasses.replace(inputs.entries[0].prepared, labels=labels))
    with pytest.raises(ValueError, match=r"case 1 .*expected exactly Body-Composition"):
        assemble_release(inputs.config, [broken], inputs.labels, pipeline_version="0.1.0")
    Path(inputs.entries[1].prepared.pt.path).unlink()
    with pytest.raises(FileNotFoundError, match=r"case 2 .*PT\.nii\.gz does not exist"):
        _build(inputs)


# ---------------------------------------------------------------------------
# dates and ages in what is published ([release] dates, age_cap)


def test_shift_moves_each_patients_dates_by_one_offset_and_keeps_times_and_intervals(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, cases=3, dates="shift")
    result = _build(inputs)
    leipzig, vienna = _offset("leipzig"), _offset("vienna")
    assert leipzig != vienna  # the same PatientID at two sites is two patients
    ct, ct_col = _sheet_rows(result.zip_path, "CT-details.xlsx")
    pt, pt_col = _sheet_rows(result.zip_path, "PT-details.xlsx")
    offsets = {"0001": leipzig, "0002": vienna, "0003": leipzig}  # cases 1 and 3: one patient, two studies
    for i, (ct_row, pt_row) in enumerate(zip(ct[1:], pt[1:], strict=True)):
        original = dt.datetime(2024, 3, i + 1)
        shift = dt.timedelta(days=offsets[ct_row[0]])
        assert ct_row[ct_col["AcquisitionDate"]] == original + shift
        assert ct_row[ct_col["AcquisitionTime"]] == dt.time(14, 5, 9)
        injection = pt_row[pt_col["RadiopharmaceuticalStartDateTime"]]
        scan = dt.datetime.combine(pt_row[pt_col["AcquisitionDate"]].date(), pt_row[pt_col["AcquisitionTime"]])
        assert injection == original.replace(hour=13, minute=1, second=2) + shift
        assert scan - injection == dt.timedelta(minutes=78, seconds=58)  # exact
        # the SUV columns: dates shifted with the others, the interval and the factor exact
        assert pt_row[pt_col["SeriesDate"]] == original + shift
        assert pt_row[pt_col["SeriesTime"]] == dt.time(14, 20)
        start = pt_row[pt_col["SeriesStartDateTime"]]
        assert start == original.replace(hour=14, minute=20) + shift
        assert (start - injection).total_seconds() == pt_row[pt_col["InjectionToSeriesStartSeconds"]] == 4738.0
        assert pt_row[pt_col["SUVbwScaleFactor"]] == pytest.approx(71500 / (3.1e8 * 2 ** (-4738 / 6586.2)))
    # between the two studies of one patient: exactly the original two days
    assert ct[3][ct_col["AcquisitionDate"]] - ct[1][ct_col["AcquisitionDate"]] == dt.timedelta(days=2)
    # no original date, and no offset, anywhere in the release's text (spreadsheet XML, card, ...)
    texts = _text_members(result.zip_path)
    originals = date_strings(dt.date(2024, 3, d) for d in (1, 2, 3))
    assert "45352" in originals  # 2024-03-01 as a spreadsheet serial

    def found(token: object, text: str) -> bool:
        return re.search(rf"(?<![0-9A-Za-z]){re.escape(str(token))}(?![0-9A-Za-z])", text) is not None

    for name, text in texts.items():
        assert not [f for f in originals if found(f, text)], name
        assert not [o for o in (leipzig, vienna) if found(o, text)], name
    # nor in the build manifest (state) or the secret's neighbourhood
    manifest = StatePaths(inputs.config.release.state_dir).release_manifest(f"{NAME}-1.0.0.zip").read_text()
    assert json.loads(manifest)["dates"] == "shift"
    assert str(leipzig) not in manifest and str(vienna) not in manifest


def test_secret_is_made_once_in_the_state_and_reused_by_the_next_build(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, secret=None)  # a real state folder: no secret yet
    secret = inputs.config.release.state_dir / SECRET_NAME
    assert not secret.exists()
    first = _build(inputs)
    assert secret.stat().st_mode & 0o777 == 0o600
    made = secret.read_bytes()
    assert _build(inputs, force=True).sha256 == first.sha256  # same secret, same release
    assert secret.read_bytes() == made
    with zipfile.ZipFile(first.zip_path) as zf:  # never released
        assert not any(SECRET_NAME in n for n in zf.namelist())
        assert all(made.strip() not in zf.read(n) for n in zf.namelist())


def test_year_keeps_the_year_and_the_times(tmp_path: Path) -> None:
    result = _build(make_inputs(tmp_path, dates="year"))
    ct, ct_col = _sheet_rows(result.zip_path, "CT-details.xlsx")
    pt, pt_col = _sheet_rows(result.zip_path, "PT-details.xlsx")
    assert [r[ct_col["AcquisitionDate"]] for r in ct[1:]] == [2024, 2024, 2024]
    assert [r[ct_col["AcquisitionTime"]] for r in ct[1:]] == [dt.time(14, 5, 9)] * 3
    assert [r[pt_col["RadiopharmaceuticalStartDateTime"]] for r in pt[1:]] == [dt.time(13, 1, 2)] * 3
    assert [r[pt_col["SeriesDate"]] for r in pt[1:]] == [2024, 2024, 2024]
    assert [r[pt_col["SeriesStartDateTime"]] for r in pt[1:]] == [dt.time(14, 20)] * 3
    assert [r[pt_col["InjectionToSeriesStartSeconds"]] for r in pt[1:]] == [4738.0] * 3
    card = _text_members(result.zip_path)[f"{NAME}/README.md"]
    assert "Dates carry the year only" in card


def test_as_delivered_publishes_the_dates_and_the_card_says_so(tmp_path: Path) -> None:
    result = _build(make_inputs(tmp_path, dates="as-delivered"))
    ct, ct_col = _sheet_rows(result.zip_path, "CT-details.xlsx")
    assert [r[ct_col["AcquisitionDate"]] for r in ct[1:]] == [dt.datetime(2024, 3, d) for d in (1, 2, 3)]
    card = _text_members(result.zip_path)[f"{NAME}/README.md"]
    assert "Dates are as the sites delivered them" in card and "shifted" not in card.split("## Dates")[1][:80]


@pytest.mark.parametrize("cap", [90, 85])
def test_ages_at_or_above_the_cap_are_published_as_the_cap(tmp_path: Path, cap: int) -> None:
    inputs = make_inputs(tmp_path, age_cap=cap)
    ages = [84, 90, 97]
    inputs.entries = [
        dataclasses.replace(e, converted=dataclasses.replace(
            e.converted, pt_metadata={**e.converted.pt_metadata, "PatientAge": age}))
        for e, age in zip(inputs.entries, ages, strict=True)
    ]
    result = _build(inputs)
    pt, col = _sheet_rows(result.zip_path, "PT-details.xlsx")
    assert [r[col["PatientAge"]] for r in pt[1:]] == [min(a, cap) for a in ages]
    card = _text_members(result.zip_path)[f"{NAME}/README.md"]
    assert f"{cap} means {cap} or older" in card


@pytest.mark.parametrize(("policy", "flagged"), [("shift", True), ("year", True), ("as-delivered", False)])
def test_original_dates_are_on_the_leak_scan_list_unless_published_on_purpose(
    tmp_path: Path, policy: str, flagged: bool
) -> None:
    """A study date that reaches the release as text (here in a clinical indication) is a leak,
    unless the release publishes dates as delivered."""
    inputs = make_inputs(tmp_path, dates=policy)
    inputs.entries[0] = dataclasses.replace(inputs.entries[0], indication="restaging after 2024-03-01 surgery")
    state = inputs.config.release.state_dir
    sensitive = state / "sites" / "leipzig" / "sensitive" / f"{inputs.entries[0].prepared.key}.json"
    sensitive.parent.mkdir(parents=True)
    sensitive.write_text(json.dumps({"StudyInstanceUID": inputs.entries[0].converted.StudyInstanceUID,
                                     "values": [PLANTED_PATIENT_ID],
                                     "dates": date_strings([dt.date(2024, 3, 1)])}))
    result = _build(inputs)
    problems = leak_scan_problems(Path(result.zip_path), state)
    assert bool(problems) is flagged, problems
    if flagged:
        assert any("README.md" in p for p in problems) and any("CT-details.xlsx" in p for p in problems)
        assert not any("2024-03-01" in p for p in problems)  # named by digest, never by value


def test_header_values_that_cannot_be_read_do_not_stop_the_packaging(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    first = inputs.entries[0]
    ct = {**first.converted.ct_metadata, "AcquisitionDate": "2024-13-45", "AcquisitionTime": "25:61:00",
          "KVP": float("nan"), "Manufacturer": "SIE\x1bMENS\x01", "ConvolutionKernel": "=HYPERLINK(\"http://x\")"}
    inputs.entries[0] = dataclasses.replace(first, converted=dataclasses.replace(first.converted, ct_metadata=ct))
    result = _build(inputs)
    assert (result.blanked_values, result.removed_characters) == (2, 2)
    ct_rows, col = _sheet_rows(result.zip_path, "CT-details.xlsx")
    row = ct_rows[1]
    assert row[col["AcquisitionDate"]] is None and row[col["AcquisitionTime"]] is None and row[col["KVP"]] is None
    assert row[col["Manufacturer"]] == "SIEMENS"
    assert row[col["ConvolutionKernel"]] == '=HYPERLINK("http://x")'
    sheet_xml = _text_members(result.zip_path)[f"{NAME}/CT-details.xlsx!xl/worksheets/sheet1.xml"]
    assert "<f>" not in sheet_xml and "<f " not in sheet_xml


def test_the_card_names_the_sites_whose_identity_flag_is_optional(tmp_path: Path) -> None:
    card = _text_members(_build(make_inputs(tmp_path / "required")).zip_path)[f"{NAME}/README.md"]
    assert "PatientIdentityRemoved was not required" not in card  # the default: required everywhere
    inputs = make_inputs(tmp_path / "optional")
    vienna = dataclasses.replace(inputs.config.sites[1], identity_removed_flag=IdentityFlagPolicy.OPTIONAL)
    config = dataclasses.replace(inputs.config, sites=(inputs.config.sites[0], vienna))
    card = _text_members(_build(dataclasses.replace(inputs, config=config)).zip_path)[f"{NAME}/README.md"]
    assert "- PatientIdentityRemoved was not required for: vienna (the steward set " in card
    assert 'identity_removed_flag = "optional"' in card and "leipzig (the steward" not in card
