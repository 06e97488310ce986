"""The leak scan: planted values found inside .nii.gz, .xlsx, zip members, across chunks."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import openpyxl
import pytest

from anonymization import leakscan
from anonymization.leakscan import (
    Leak,
    Matcher,
    UnscannableError,
    scan_member,
    scan_zip,
    value_digest,
)
from curation.state import load_sensitive_values

UID = "2.25.301847562190384756102938475610"
NAME = "Mustermann^Erika"
PATIENT_ID = "00007041776"
AMPERSAND = "Klinik Rot & Weiss"
VALUES = [UID, NAME, PATIENT_ID, AMPERSAND, "AB", "1.2.840.10008.1.2"]  # "AB" is below the minimum


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _found(leaks: list[Leak]) -> set[tuple[str, int, str, str]]:
    return {(leak.file, leak.offset, leak.value_digest, leak.kind) for leak in leaks}


def _zip_tree(root: Path) -> Path:
    """Zip every file under ``root`` as a release is zipped (NIfTI stored, the rest deflated)."""
    release = root / "release.zip"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p != release)
    with zipfile.ZipFile(release, "w") as zf:
        for path in files:
            method = zipfile.ZIP_STORED if path.name.endswith(".nii.gz") else zipfile.ZIP_DEFLATED
            zf.write(path, path.relative_to(root).as_posix(), compress_type=method)
    return release


def _scan(root: Path, values: list[str]) -> list[Leak]:
    """Scan the files under ``root`` the way a release is scanned: zipped, with :func:`scan_zip`.

    Returns the leaks inside members, named by their path under ``root`` (the
    zip's own bytes may repeat an incompressible member's content verbatim).
    """
    prefix = "release.zip!"
    leaks = scan_zip(_zip_tree(root), values)
    return [dataclasses.replace(leak, file=leak.file.removeprefix(prefix)) for leak in leaks if leak.file.startswith(prefix)]


def _nifti_with(path: Path, *, descrip: str, voxel_text: bytes, at_byte: int) -> int:
    """Write a .nii.gz whose header descrip and voxel bytes carry text; return the data offset."""
    data = np.zeros((16, 16, 4), dtype=np.int16)
    raw = bytearray(data.tobytes(order="F"))
    raw[at_byte : at_byte + len(voxel_text)] = voxel_text
    data = np.frombuffer(bytes(raw), dtype=np.int16).reshape((16, 16, 4), order="F")
    img = nib.Nifti1Image(data, np.eye(4))
    img.header["descrip"] = descrip.encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return len(gzip.decompress(path.read_bytes())) - len(raw)  # the voxel data ends the stream


def test_value_in_nifti_header_and_voxels_is_found_with_its_offsets(tmp_path: Path) -> None:
    at_byte = 777
    offset = _nifti_with(tmp_path / "imaging-data/images/CT/0001.nii.gz", descrip=f"id {PATIENT_ID}",
                         voxel_text=UID.encode("ascii"), at_byte=at_byte)
    leaks = _scan(tmp_path, VALUES)
    assert _found(leaks) == {
        ("imaging-data/images/CT/0001.nii.gz", 148 + 3, _digest(PATIENT_ID), "gunzip:verbatim"),  # descrip at 148
        ("imaging-data/images/CT/0001.nii.gz", offset + at_byte, _digest(UID), "gunzip:verbatim"),
    }
    # offsets point at the value in the decompressed stream
    stream = gzip.decompress((tmp_path / "imaging-data/images/CT/0001.nii.gz").read_bytes())
    assert stream[offset + at_byte : offset + at_byte + len(UID)] == UID.encode()


def _workbook_bytes(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def _member_offset(xlsx: bytes, needle: bytes) -> tuple[str, int]:
    """The one member of ``xlsx`` holding ``needle`` (openpyxl: inline or shared strings) and the offset."""
    with zipfile.ZipFile(io.BytesIO(xlsx)) as zf:
        hits = [(name, zf.read(name)) for name in zf.namelist() if needle in zf.read(name)]
    assert len(hits) == 1 and hits[0][1].count(needle) == 1, [name for name, _ in hits]
    return hits[0][0], hits[0][1].find(needle)


def test_value_in_xlsx_cell_is_found_xml_escaped(tmp_path: Path) -> None:
    xlsx = _workbook_bytes([["case", "site"], ["0001", AMPERSAND], ["0002", NAME]])
    (tmp_path / "CT-details.xlsx").write_bytes(xlsx)
    leaks = _scan(tmp_path, VALUES)
    amp_member, amp_offset = _member_offset(xlsx, b"Klinik Rot &amp; Weiss")
    name_member, name_offset = _member_offset(xlsx, NAME.encode())
    assert _found(leaks) == {
        (f"CT-details.xlsx!{amp_member}", amp_offset, _digest(AMPERSAND), "bytes:xml-escaped"),
        (f"CT-details.xlsx!{name_member}", name_offset, _digest(NAME), "bytes:verbatim"),
    }


def test_zip_members_nested_xlsx_and_member_names_are_scanned(tmp_path: Path) -> None:
    xlsx = _workbook_bytes([["case"], [PATIENT_ID]])
    readme = b"# dataset\n\nno identifiers here, only 0001 and 0002\n" + b"x" * 1000 + NAME.encode() + b"\n"
    nii = tmp_path / "src.nii.gz"
    offset = _nifti_with(nii, descrip="clean", voxel_text=UID.encode(), at_byte=10)
    release = tmp_path / "release.zip"
    with zipfile.ZipFile(release, "w") as zf:
        zf.writestr("rel/README.md", readme, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("rel/PT-details.xlsx", xlsx, compress_type=zipfile.ZIP_DEFLATED)
        zf.write(nii, "rel/imaging-data/images/PT/0001.nii.gz", compress_type=zipfile.ZIP_STORED)
        zf.writestr(f"rel/{UID}.json", b"{}", compress_type=zipfile.ZIP_DEFLATED)  # a UID in a member name
    leaks = scan_zip(release, VALUES)
    found = _found(leaks)
    cell_member, cell_offset = _member_offset(xlsx, PATIENT_ID.encode())
    assert ("release.zip!rel/README.md", readme.find(NAME.encode()), _digest(NAME), "bytes:verbatim") in found
    assert (f"release.zip!rel/PT-details.xlsx!{cell_member}", cell_offset, _digest(PATIENT_ID),
            "bytes:verbatim") in found
    assert ("release.zip!rel/imaging-data/images/PT/0001.nii.gz", offset + 10, _digest(UID),
            "gunzip:verbatim") in found
    # the UID in the member name is in the zip's own bytes (local header and central directory)
    raw = release.read_bytes()
    name_offsets = {leak.offset for leak in leaks if leak.file == "release.zip" and leak.value_digest == _digest(UID)}
    assert name_offsets == {i for i in range(len(raw)) if raw.startswith(UID.encode(), i)}
    assert len(name_offsets) == 2


def test_value_across_a_chunk_boundary_is_found_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leakscan, "CHUNK_SIZE", 64)
    rng = np.random.default_rng(7)
    body = bytearray(rng.integers(0x80, 0x100, 1000, dtype=np.uint8).tobytes())  # no ASCII: no stray matches
    positions = {UID: 64 - 10, NAME: 128 + 64 - 1, PATIENT_ID: 0}
    for value, pos in positions.items():
        body[pos : pos + len(value)] = value.encode()
    tail = AMPERSAND.encode()
    data = bytes(body) + b" " + tail  # a value that ends exactly at the end of the file
    (tmp_path / "blob.bin").write_bytes(data)
    leaks = _scan(tmp_path, VALUES)
    assert sorted((leak.offset, leak.value_digest) for leak in leaks) == sorted(
        [(pos, _digest(value)) for value, pos in positions.items()] + [(len(data) - len(tail), _digest(AMPERSAND))]
    )
    # the same with the default chunk size gives the same answer
    monkeypatch.setattr(leakscan, "CHUNK_SIZE", 8 << 20)
    assert _found(_scan(tmp_path, VALUES)) == _found(leaks)


def test_numbers_need_a_boundary_and_very_short_values_are_ignored(tmp_path: Path) -> None:
    text = (
        f"sha 9f{PATIENT_ID}ab\n"  # glued to hex letters: not a leak
        f"n 1{PATIENT_ID}\n"  # glued to a digit: not a leak
        f"id={PATIENT_ID};\n"  # a leak
        f"{UID}9\n"  # a longer UID: not this UID
        "AB AB\n"  # below the minimum length
        "1.2.840.10008.1.2\n"  # public DICOM UID: never sensitive
    ).encode()
    (tmp_path / "SHA256SUMS").write_bytes(text)
    leaks = _scan(tmp_path, VALUES)
    assert _found(leaks) == {("SHA256SUMS", text.find(b"id=") + 3, _digest(PATIENT_ID), "bytes:verbatim")}


def test_json_escaped_value_is_found(tmp_path: Path) -> None:
    value = 'Dr. "Who" Müller'
    (tmp_path / "labels.json").write_text(json.dumps({"x": value}), encoding="utf-8")
    leaks = _scan(tmp_path, [value])
    assert [(leak.file, leak.kind) for leak in leaks] == [("labels.json", "bytes:json-escaped")]


def test_gzip_header_file_name_is_scanned(tmp_path: Path) -> None:
    target = tmp_path / "x.gz"
    with open(target, "wb") as raw, gzip.GzipFile(filename=f"{NAME}.nii", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(b"clean payload")
    leaks = _scan(tmp_path, VALUES)
    assert _found(leaks) == {("x.gz", 10, _digest(NAME), "bytes:verbatim")}  # FNAME follows the 10-byte header


def test_clean_release_like_tree_has_no_false_positive(tmp_path: Path, small_phantom: object) -> None:
    """Real-looking release files against many UIDs, IDs and names: nothing found."""
    rng = np.random.default_rng(11)
    values = [f"2.25.{int(rng.integers(1, 2**62))}{int(rng.integers(1, 2**62))}" for _ in range(5000)]
    values += [f"{int(rng.integers(10**8, 10**11))}" for _ in range(2000)]  # numeric IDs, accession numbers
    values += ["Mustermann^Erika", "LEI-0001", "Klinik Rot & Weiss", "19580312", "Hausmann^Karl^^Dr."]
    ct = np.asarray(small_phantom.ct_hu, dtype=np.int16)  # type: ignore[attr-defined]
    pt = np.asarray(small_phantom.pt_bqml, dtype=np.float32)  # type: ignore[attr-defined]
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "CT.nii.gz")
    nib.save(nib.Nifti1Image(pt, np.eye(4)), tmp_path / "PT.nii.gz")
    labels = (np.arange(ct.size, dtype=np.int64) // 97 % 131).astype(np.uint8).reshape(ct.shape)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "Organs.nii.gz")
    sums = "".join(f"{hashlib.sha256(str(k).encode()).hexdigest()}  file{k}.nii.gz\n" for k in range(2000))
    (tmp_path / "SHA256SUMS").write_text(sums, encoding="utf-8")
    (tmp_path / "PT-details.xlsx").write_bytes(
        _workbook_bytes([["case", "weight", "activity"]] + [[f"{k:04d}", 70.5 + k, 3.7e8 + k] for k in range(200)])
    )
    assert scan_zip(_zip_tree(tmp_path), values) == []


def test_corrupt_gzip_is_unscannable_not_silently_clean(tmp_path: Path) -> None:
    good = gzip.compress(b"x" * 100000)
    (tmp_path / "broken.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnscannableError, match=r"broken\.nii\.gz: the gzip stream cannot be decompressed"):
        _scan(tmp_path, VALUES)


def test_scan_zip_refuses_a_non_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(UnscannableError, match="not a zip file"):
        scan_zip(tmp_path / "x.zip", VALUES)


def test_leaks_carry_digests_not_values(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(NAME, encoding="utf-8")
    (leak,) = _scan(tmp_path, VALUES)
    assert leak.value_digest == value_digest(NAME) == _digest(NAME)
    assert NAME not in repr(leak)


def test_load_sensitive_values_reads_every_study_file(tmp_path: Path) -> None:
    ingest_form = {"StudyInstanceUID": "2.25.999000111222333", "values": [PATIENT_ID]}
    for site, key, content in [("leipzig", "a1", [UID, " LEI-0001 "]), ("vienna", "b2", [NAME, ""]),
                               ("boston", "c3", ingest_form)]:
        folder = tmp_path / "sites" / site / "sensitive"
        folder.mkdir(parents=True)
        (folder / f"{key}.json").write_text(json.dumps(content), encoding="utf-8")
    # an interrupted atomic write leaves a temporary beside the files: not a study's record
    (tmp_path / "sites" / "boston" / "sensitive" / ".c3.x1y2.tmp.json").write_text('["2.25.1', encoding="utf-8")
    assert load_sensitive_values(tmp_path) == frozenset(
        {UID, "LEI-0001", NAME, PATIENT_ID, "2.25.999000111222333"}
    )
    (tmp_path / "sites" / "vienna" / "sensitive" / "bad.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: expected a JSON list of strings"):
        load_sensitive_values(tmp_path)


def test_dates_are_loaded_only_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "sites" / "leipzig" / "sensitive"
    folder.mkdir(parents=True)
    record = {"StudyInstanceUID": "2.25.7", "values": [PATIENT_ID], "dates": ["2021-03-04", "20210304", "44259"]}
    (folder / "a1.json").write_text(json.dumps(record), encoding="utf-8")
    assert load_sensitive_values(tmp_path) == frozenset({PATIENT_ID, "2.25.7"})
    assert load_sensitive_values(tmp_path, include_dates=True) == frozenset(
        {PATIENT_ID, "2.25.7", "2021-03-04", "20210304", "44259"}
    )
    (folder / "a1.json").write_text(json.dumps({**record, "dates": "2021-03-04"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r'a1\.json: "dates" must be a JSON list of strings'):
        load_sensitive_values(tmp_path)


def test_gate_values_and_leak_scan_work_together(tmp_path: Path, read_deid: object) -> None:
    """The values the gate collects from a real identified file are found in a copy of that file."""
    from anonymization.gate import check_datasets

    ds = read_deid("humans/ctbrain1.dcm")  # type: ignore[operator]
    report = check_datasets([ds])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    (tmp_path / "leaked.dcm.gz").write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    leaks = _scan(tmp_path, report.sensitive_values)
    found = {leak.value_digest for leak in leaks}
    for value in ("00007041776", "SIMPSON^HOMER^J", "999887722", "Evergreen Terrace Springfield",
                  "1.2.840.113696.376376.500.43158802.99999999999999"):
        assert _digest(value) in found, value


# ---------------------------------------------------------------------------
# no blind spots: letter case, names in any order, short values, dates (issue 9)


def _kinds(leaks: list[Leak], value: str) -> list[tuple[str, int, str]]:
    return sorted((leak.file, leak.offset, leak.kind) for leak in leaks if leak.value_digest == _digest(value))


def test_values_are_found_in_any_letter_case(tmp_path: Path) -> None:
    readme = "pseudonym lei-0001 and KLINIK ROT &AMP; WEISS; MUSTERMANN^ERIKA\n"
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    values = ["LEI-0001", AMPERSAND, NAME, "Jörg^Müller"]
    (tmp_path / "card.json").write_text(json.dumps({"by": "JÖRG MÜLLER"}, ensure_ascii=False), encoding="utf-8")
    leaks = _scan(tmp_path, values)
    assert _kinds(leaks, "LEI-0001") == [("README.md", readme.find("lei-0001"), "bytes:verbatim")]
    assert _kinds(leaks, AMPERSAND) == [("README.md", readme.find("KLINIK"), "bytes:xml-escaped")]
    assert _kinds(leaks, NAME) == [("README.md", readme.find("MUSTERMANN"), "bytes:verbatim")]
    assert _kinds(leaks, "Jörg^Müller") == [("card.json", len('{"by": "'), "bytes:person-name")]


@pytest.mark.parametrize(
    "written",
    ["Hans Mueller", "mueller, hans", "HANS_MUELLER", "Mueller.Hans", "hans-mueller.nii.gz", "Mueller  ^Hans",
     "MuellerHans"],
)
def test_person_name_is_found_by_its_components_in_any_order(tmp_path: Path, written: str) -> None:
    text = f"<t>reported by {written}</t>"
    (tmp_path / "notes.xml").write_text(text, encoding="utf-8")
    leaks = _scan(tmp_path, ["MUELLER^HANS"])
    assert _kinds(leaks, "MUELLER^HANS") == [("notes.xml", text.find(written), "bytes:person-name")]


def test_person_name_initials_and_titles_may_sit_between_components(tmp_path: Path) -> None:
    text = "Homer J. Simpson; SIMPSON, HOMER J; Dr. Karl Hausmann\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    leaks = _scan(tmp_path, ["SIMPSON^HOMER^J", "Hausmann^Karl^^Dr."])
    assert [o for _, o, _ in _kinds(leaks, "SIMPSON^HOMER^J")] == [0, text.find("SIMPSON")]
    assert [o for _, o, _ in _kinds(leaks, "Hausmann^Karl^^Dr.")] == [text.find("Karl")]


def test_a_name_needs_every_long_component(tmp_path: Path) -> None:
    text = "Hans Meier; Muellerstrasse 3; Mueller, Dr. Hans; xHans Mueller's\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    leaks = _scan(tmp_path, ["MUELLER^HANS"])
    # "Dr" is not part of this name; "Hans Mueller" glued into "xHans Mueller's" is 12 characters,
    # long enough to count anywhere
    assert [leak.offset for leak in leaks] == [text.find("Hans Mueller's")]


def test_short_values_are_matched_as_whole_tokens_in_text(tmp_path: Path) -> None:
    text = "id KAI-7 by kai; Kaiser; skai; 0451; 04511; (0451)\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    leaks = _scan(tmp_path, ["Kai", "0451"])
    assert [o for _, o, _ in _kinds(leaks, "Kai")] == [text.find("KAI"), text.find("kai;")]
    assert [o for _, o, _ in _kinds(leaks, "0451")] == [text.find("0451"), text.find("(0451)") + 1]


def test_short_values_in_a_nifti_header_are_found_but_not_in_binary_voxels(tmp_path: Path) -> None:
    """A short value in the NIfTI descrip (text, NUL padded) is found; the same bytes in noise are not."""
    rng = np.random.default_rng(3)
    noise = bytearray(rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    noise[5000:5005] = b"\x01kai\x02"  # bounded by non-alphanumerics, but in binary bytes
    data = np.frombuffer(bytes(noise), dtype=np.float32).reshape((64, 64, 4), order="F").copy()
    img = nib.Nifti1Image(data, np.eye(4))
    img.header["descrip"] = b"kai"
    nib.save(img, tmp_path / "PT.nii.gz")
    leaks = _scan(tmp_path, ["KAI"])
    assert _found(leaks) == {("PT.nii.gz", 148, _digest("KAI"), "gunzip:verbatim")}


def test_dates_are_found_as_tokens_including_the_xlsx_serial(tmp_path: Path) -> None:
    import datetime

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["case", "StudyDate", "note"])
    sheet.append(["0001", datetime.date(2023, 7, 16), "scanned 2023-07-16T10:15:00"])
    sheet.append(["0002", 145123, "20230716x"])  # the serial inside a longer number; a date glued to a letter
    buf = io.BytesIO()
    book.save(buf)
    (tmp_path / "CT-details.xlsx").write_bytes(buf.getvalue())
    dates = ["20230716", "2023-07-16", "45123"]  # the three forms ingest records for a date
    leaks = _scan(tmp_path, dates)
    serial_member, serial_offset = _member_offset(buf.getvalue(), b"<v>45123</v>")
    iso_member, iso_offset = _member_offset(buf.getvalue(), b"2023-07-16T")
    assert _found(leaks) == {
        (f"CT-details.xlsx!{serial_member}", serial_offset + 3, _digest("45123"), "bytes:verbatim"),
        (f"CT-details.xlsx!{iso_member}", iso_offset, _digest("2023-07-16"), "bytes:verbatim"),
    }


def test_short_values_and_names_across_a_chunk_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leakscan, "CHUNK_SIZE", 97)
    filler = "lorem ipsum dolor sit amet, " * 3
    text = f"{filler}kai {filler}Hans Mueller{filler} 45123"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    values = ["KAI", "MUELLER^HANS", "45123"]
    leaks = _scan(tmp_path, values)
    expected = {(text.find("kai "), _digest("KAI")), (text.find("Hans"), _digest("MUELLER^HANS")),
                (text.find("45123"), _digest("45123"))}
    assert {(leak.offset, leak.value_digest) for leak in leaks} == expected
    for size in (7, 13, 64, 8 << 20):
        monkeypatch.setattr(leakscan, "CHUNK_SIZE", size)
        assert {(leak.offset, leak.value_digest) for leak in _scan(tmp_path, values)} == expected, size


def test_no_false_alarm_from_short_values_on_phantom_volumes(tmp_path: Path, small_phantom: object) -> None:
    """Short values and dates against real-looking volumes and random float noise: only the planted one is found."""
    rng = np.random.default_rng(5)
    ct = np.asarray(small_phantom.ct_hu, dtype=np.int16)  # type: ignore[attr-defined]
    pt = np.asarray(small_phantom.pt_bqml, dtype=np.float32)  # type: ignore[attr-defined]
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "CT.nii.gz")
    nib.save(nib.Nifti1Image(pt, np.eye(4)), tmp_path / "PT.nii.gz")
    (tmp_path / "noise.bin").write_bytes(rng.standard_normal(1 << 20).astype(np.float32).tobytes())
    letters = "abcdefghijklmnopqrstuvwxyz"
    values = ["".join(rng.choice(list(letters), size=int(rng.integers(3, 6)))) for _ in range(300)]
    values += [f"{int(rng.integers(40000, 47000))}" for _ in range(300)]  # xlsx date serials
    # the one place a value is: in text
    (tmp_path / "README.md").write_text(f"# notes\n\nseen on {values[-1]}\n", encoding="utf-8")
    leaks = _scan(tmp_path, values)
    assert [(leak.file, leak.value_digest) for leak in leaks] == [("README.md", _digest(values[-1]))]


def test_scan_logs_never_show_a_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.txt").write_text("Hans Mueller 45123", encoding="utf-8")
    with caplog.at_level("DEBUG"):
        leaks = _scan(tmp_path, ["MUELLER^HANS", "45123"])
    assert len(leaks) == 2
    text = caplog.text + repr(leaks)
    assert "Mueller" not in text and "MUELLER" not in text and "45123" not in text


def test_buffers_of_bytes_no_value_starts_with_are_skipped_without_losing_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A label map's voxels (bytes 0..31) and a CT's (int16 -1024..3071) start no match: the scan skips them.

    Values sit in text just before, across and just after buffers of such
    bytes, so matches begun in one buffer are decided by the bytes of the next;
    the leaks are those of the scan without the skip.
    """
    rng = np.random.default_rng(11)
    values = [UID, NAME, PATIENT_ID, "KAI", "MUELLER^HANS"]
    matcher = Matcher(values)
    assert matcher.min_start == ord("0")  # the UID's and the ID's digits; "K" and "M" fold to larger bytes
    everything = Matcher(values)
    everything.min_start, everything.byte_classes = 0, bytes([3] * 256)  # the same scan without the skip
    ct = rng.integers(-1024, 3072, 1 << 16, dtype=np.int16).tobytes()
    assert leakscan._no_match_starts(ct + b"\x00" * 100, matcher)
    assert not leakscan._no_match_starts(ct + b"\x00" * 100, everything)
    assert not leakscan._no_match_starts(rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes(), matcher)
    pieces = []
    for k in range(60):
        run = int(rng.integers(1, 400))  # background (NUL: text to the scan), other labels, CT voxels
        pieces.append([bytes(run), rng.integers(0, 32, run, dtype=np.uint8).tobytes(), ct[: 2 * run]][k % 3])
        pieces.append(rng.choice([b" kai ", b"\x00kai\x00", f" {UID} ".encode(), b"Hans Mueller",
                                  f"={PATIENT_ID};".encode(), b"Erika MUSTERMANN", b"Kai"]))
    data = b"".join(pieces) + b"\x00kai"
    reference = scan_member(data, everything, "labels.bin")
    assert len(reference) >= 15  # a short value needs text around it (NUL is, other low bytes are not)
    for size in (7, 64, 97, 300, 8 << 20):
        monkeypatch.setattr(leakscan, "CHUNK_SIZE", size)
        assert scan_member(data, matcher, "labels.bin") == reference, size
        assert scan_member(data, everything, "labels.bin") == reference, size


def test_a_value_in_the_last_gzip_member_is_found(tmp_path: Path) -> None:
    """Our .nii.gz files are many gzip members: the scan reads past the first (the header's)."""
    from curation.nifti import gunzip, gzip_members, write_nifti

    volume = np.zeros((256, 256, 40), dtype=np.int16)  # 128 KiB planes: 8 a member, 5 voxel members
    raw = bytearray(volume.tobytes(order="F"))
    at = len(raw) - 1000
    raw[at : at + len(UID)] = UID.encode("ascii")
    volume = np.frombuffer(bytes(raw), dtype=np.int16).reshape(volume.shape, order="F")
    path = tmp_path / "imaging-data/images/CT/0001.nii.gz"
    path.parent.mkdir(parents=True)
    write_nifti(volume, np.eye(4), path, dtype=np.int16)
    content = path.read_bytes()
    assert len(gzip_members(content) or []) == 6
    expected = {("imaging-data/images/CT/0001.nii.gz", 352 + at, _digest(UID), "gunzip:verbatim")}
    assert _found(_scan(tmp_path, VALUES)) == expected  # the zip scan: ISA-L's gzip reader
    in_memory = scan_member(content, Matcher(VALUES), "imaging-data/images/CT/0001.nii.gz", gunzipped=gunzip(content))
    assert _found(in_memory) == expected  # verify's: the member inflated once for every check
