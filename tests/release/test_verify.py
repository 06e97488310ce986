from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from curation.state import StatePaths
from release.assemble import assemble_release
from release.spreadsheets import details_xlsx_bytes
from release.verify import verify_release

from .conftest import (
    CT_AFFINE,
    CT_SHAPE,
    PLANTED_PATIENT_ID,
    ReleaseInputs,
    planted_uid,
    rewrite_zip,
)

NAME = "enhance-pet-test"


def _build(inputs: ReleaseInputs) -> Path:
    result = assemble_release(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0", force=True)
    return Path(result.zip_path)


def _state(inputs: ReleaseInputs) -> Path:
    """Record the sensitive values of every study, as ingest does, and return state_dir."""
    state = inputs.config.release.state_dir
    for entry in inputs.entries:
        c = entry.converted
        folder = StatePaths(state).sensitive_dir(c.site)
        folder.mkdir(parents=True, exist_ok=True)
        values = [c.StudyInstanceUID, c.PatientID, "Doe^Planted", c.ct_series, c.pt_series]
        (folder / f"{c.key}.json").write_text(json.dumps(values))
    return state


def _flip(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    pos = data.find(needle)
    assert pos > 0 and data.find(needle, pos + 1) == -1
    data[pos + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_good_release_passes_with_and_without_state(inputs: ReleaseInputs) -> None:
    zip_path = _build(inputs)
    report = verify_release(zip_path)
    assert report.ok, report.problems
    assert (report.cases, report.members) == (3, 32)
    assert "leak-scan" not in report.checked and "defacing" not in report.checked
    report = verify_release(zip_path, state_dir=_state(inputs))
    assert report.ok, report.problems
    assert {"integrity", "checksums", "layout", "spreadsheets", "leak-scan", "defacing"} <= set(report.checked)


def test_flipped_byte_in_a_stored_nifti(inputs: ReleaseInputs) -> None:
    zip_path = _build(inputs)
    member = f"{NAME}/imaging-data/images/PT/0002.nii.gz"
    with zipfile.ZipFile(zip_path) as zf:
        content = zf.read(member)
    _flip(zip_path, content[200:264])
    report = verify_release(zip_path)
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{member}: ")
    assert "CRC" in report.problems[0] or "gzip" in report.problems[0]


def test_flipped_byte_in_a_deflated_member(inputs: ReleaseInputs) -> None:
    zip_path = _build(inputs)
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(f"{NAME}/README.md")
    raw = zip_path.read_bytes()
    start = info.header_offset + 30 + len(info.filename)  # no extra field in our local headers
    _flip(zip_path, raw[start + 40 : start + 80])
    report = verify_release(zip_path)
    assert not report.ok
    assert any(p.startswith(f"{NAME}/README.md: ") for p in report.problems), report.problems


def test_missing_member(inputs: ReleaseInputs, tmp_path: Path) -> None:
    zip_path = _build(inputs)
    out = tmp_path / "missing.zip"
    rewrite_zip(zip_path, out, replace={"imaging-data/ground-truth/Organs/0002.nii.gz": None})
    assert verify_release(out).problems == ("case 0002: missing Organs",)
    rewrite_zip(zip_path, out, replace={"imaging-data/images/CT/0003.nii.gz": None}, fix_sums=False)
    assert set(verify_release(out).problems) == {
        "case 0003: missing CT",
        f"{NAME}/imaging-data/images/CT/0003.nii.gz: listed in SHA256SUMS but not in the zip",
    }
    rewrite_zip(zip_path, out, replace={"labels.json": None})
    assert verify_release(out).problems == (f"{NAME}/labels.json: missing",)


def test_extra_member(inputs: ReleaseInputs, tmp_path: Path) -> None:
    zip_path = _build(inputs)
    out = tmp_path / "extra.zip"
    rewrite_zip(zip_path, out, add={"notes.txt": b"hello"})
    assert verify_release(out).problems == (f"{NAME}/notes.txt: not part of the release layout",)
    rewrite_zip(zip_path, out, add={"imaging-data/ground-truth/Lesions/0001.nii.gz": b"x"})
    (problem,) = verify_release(out).problems
    assert "'Lesions' is not a label category" in problem
    rewrite_zip(zip_path, out, add={"imaging-data/images/CT/00004.nii.gz": b"x"})
    assert verify_release(out).problems == (
        f"{NAME}/imaging-data/images/CT/00004.nii.gz: case number '00004' is not written as the release writes it",
    )
    # folder entries (as `zip -r` writes them) are fine for the layout's folders only
    rewrite_zip(zip_path, out, add={"": b"", "imaging-data/": b"", "imaging-data/images/CT/": b""})
    assert verify_release(out).ok
    rewrite_zip(zip_path, out, add={"imaging-data/extra/": b""})
    assert verify_release(out).problems == (f"{NAME}/imaging-data/extra/: a folder outside the release layout",)
    rewrite_zip(zip_path, out, add={"README.txt": b"x"}, fix_sums=False)
    assert set(verify_release(out).problems) == {
        f"{NAME}/README.txt: not part of the release layout",
        f"{NAME}/README.txt: not listed in SHA256SUMS",
    }


def test_sums_mismatch(inputs: ReleaseInputs, tmp_path: Path) -> None:
    zip_path = _build(inputs)
    out = tmp_path / "sums.zip"
    rewrite_zip(zip_path, out, replace={"README.md": b"# another card\n"}, fix_sums=False)
    (problem,) = verify_release(out).problems
    assert problem.startswith(f"{NAME}/README.md: sha256 ") and "does not match SHA256SUMS" in problem


def test_planted_identifier_found_with_state(inputs: ReleaseInputs) -> None:
    # a steward's indication text carrying a patient id: it reaches the spreadsheets and the card
    inputs.entries[1] = dataclasses.replace(inputs.entries[1], indication=f"lymphoma {PLANTED_PATIENT_ID}")
    zip_path = _build(inputs)
    assert verify_release(zip_path).ok  # nothing to compare with without the state
    report = verify_release(zip_path, state_dir=_state(inputs))
    # leak files are "<zip>!<member>[!<member of the xlsx>]"; cut after the release member
    files = sorted({"!".join(p.split(":")[0].split("!")[:2]) for p in report.problems})
    assert files == [
        f"{NAME}-1.0.0.zip!{NAME}/CT-details.xlsx",
        f"{NAME}-1.0.0.zip!{NAME}/PT-details.xlsx",
        f"{NAME}-1.0.0.zip!{NAME}/README.md",
    ], report.problems
    assert all("identifying value" in p and PLANTED_PATIENT_ID not in p for p in report.problems)


def test_planted_uid_in_a_nifti_header_found_with_state(inputs: ReleaseInputs) -> None:
    ct = np.asanyarray(nib.load(inputs.entries[2].prepared.ct.path).dataobj)
    img = nib.Nifti1Image(ct, CT_AFFINE)
    img.header["descrip"] = planted_uid(2).encode()
    nib.save(img, inputs.entries[2].prepared.ct.path)
    inputs.replace_image(3, "CT", ct)  # rewrites the file with the same data; header set below
    nib.save(img, inputs.entries[2].prepared.ct.path)
    from curation.atomic import sha256_file

    prepared = inputs.entries[2].prepared
    ct_file = dataclasses.replace(prepared.ct, sha256=sha256_file(prepared.ct.path))
    inputs.entries[2] = dataclasses.replace(inputs.entries[2], prepared=dataclasses.replace(prepared, ct=ct_file))
    zip_path = _build(inputs)
    assert verify_release(zip_path).problems == (f"{NAME}/imaging-data/images/CT/0003.nii.gz: header field descrip is not empty",)
    report = verify_release(zip_path, state_dir=_state(inputs))
    leaks = [p for p in report.problems if "identifying value" in p]
    assert len(leaks) == 1 and leaks[0].startswith(f"{NAME}-1.0.0.zip!{NAME}/imaging-data/images/CT/0003.nii.gz")


def test_label_value_outside_labels_json(inputs: ReleaseInputs) -> None:
    organs = np.asanyarray(nib.load(inputs.entries[1].prepared.labels["Organs"].path).dataobj).copy()
    organs[3, 4, 5] = 200
    inputs.replace_image(2, "Organs", organs)
    zip_path = _build(inputs)
    assert verify_release(zip_path).problems == (
        f"{NAME}/imaging-data/ground-truth/Organs/0002.nii.gz: values 200 are not in labels.json for Organs",
    )


def test_wrong_dtypes(inputs: ReleaseInputs) -> None:
    ct = np.asanyarray(nib.load(inputs.entries[1].prepared.ct.path).dataobj).astype(np.float32)
    inputs.replace_image(2, "CT", ct)
    pt = np.asanyarray(nib.load(inputs.entries[1].prepared.pt.path).dataobj).astype(np.float64)
    inputs.replace_image(2, "PT", pt, affine=nib.load(inputs.entries[1].prepared.pt.path).affine)
    ribs = np.asanyarray(nib.load(inputs.entries[1].prepared.labels["Ribs"].path).dataobj).astype(np.int16)
    inputs.replace_image(2, "Ribs", ribs)
    zip_path = _build(inputs)
    assert set(verify_release(zip_path).problems) == {
        f"{NAME}/imaging-data/images/CT/0002.nii.gz: stored as float32, expected int16",
        f"{NAME}/imaging-data/images/PT/0002.nii.gz: stored as float64, expected float32",
        f"{NAME}/imaging-data/ground-truth/Ribs/0002.nii.gz: stored as int16, expected uint8",
    }


def test_label_off_the_ct_grid(inputs: ReleaseInputs) -> None:
    cardiac = np.asanyarray(nib.load(inputs.entries[0].prepared.labels["Cardiac"].path).dataobj)
    shifted = CT_AFFINE.copy()
    shifted[0, 3] += 0.01
    inputs.replace_image(1, "Cardiac", cardiac, affine=shifted)
    inputs.replace_image(1, "Muscles", np.zeros((CT_SHAPE[0], CT_SHAPE[1], CT_SHAPE[2] + 1), np.uint8))
    zip_path = _build(inputs)
    assert set(verify_release(zip_path).problems) == {
        f"{NAME}/imaging-data/ground-truth/Cardiac/0001.nii.gz: affine differs from the CT's by up to 0.01 mm",
        f"{NAME}/imaging-data/ground-truth/Muscles/0001.nii.gz: shape (12, 10, 9) is not the CT's (12, 10, 8)",
    }


def test_spreadsheet_row_count_mismatch(inputs: ReleaseInputs, tmp_path: Path) -> None:
    zip_path = _build(inputs)
    with zipfile.ZipFile(zip_path) as zf:
        from release.spreadsheets import read_details_xlsx

        header, rows = read_details_xlsx(zf.open(f"{NAME}/PT-details.xlsx"))
    columns = [(name, "str") for name in header]
    short = details_xlsx_bytes(columns, [dict(zip(header, map(str, r), strict=True)) for r in rows[:2]])
    out = tmp_path / "rows.zip"
    rewrite_zip(zip_path, out, replace={"PT-details.xlsx": short})
    assert verify_release(out).problems == (
        f"{NAME}/PT-details.xlsx: 2 rows for 3 cases",
        f"{NAME}/PT-details.xlsx: rows for cases not in the zip [], no row for cases ['0003']",
    )
    doubled = details_xlsx_bytes(columns, [dict(zip(header, map(str, r), strict=True)) for r in [*rows, rows[0]]])
    rewrite_zip(zip_path, out, replace={"CT-details.xlsx": doubled})
    assert verify_release(out).problems == (
        f"{NAME}/CT-details.xlsx: 4 rows for 3 cases",
        f"{NAME}/CT-details.xlsx: a case has more than one row",
    )


def test_undefaced_cylinder_caught_with_state(inputs: ReleaseInputs) -> None:
    rng = np.random.default_rng(7)
    inputs.replace_image(1, "CT", rng.integers(0, 100, size=CT_SHAPE).astype(np.int16))  # face back in
    zip_path = _build(inputs)
    assert verify_release(zip_path).ok  # the cylinder is only known to the state
    report = verify_release(zip_path, state_dir=_state(inputs))
    (problem,) = report.problems
    assert problem.startswith(f"{NAME}/imaging-data/images/CT/0001.nii.gz: ")
    assert "inside the recorded defacing cylinder are not -1000" in problem


def test_state_without_manifest_or_values(inputs: ReleaseInputs, tmp_path: Path) -> None:
    zip_path = _build(inputs)
    empty = tmp_path / "empty-state"
    empty.mkdir()
    problems = verify_release(zip_path, state_dir=empty).problems
    assert problems == (
        f"{StatePaths(empty).release_manifest(zip_path.name)}: no build manifest for {zip_path.name} in the state folder",
        f"{empty}: no sensitive values recorded; the leak scan has nothing to look for",
    )


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip at all")
    (problem,) = verify_release(bad).problems
    assert problem.startswith(f"{bad}: not a readable zip")
    assert verify_release(tmp_path / "absent.zip").problems == (f"{tmp_path / 'absent.zip'}: no such file",)


@pytest.mark.parametrize("member", ["README.md", "SHA256SUMS"])
def test_missing_top_files(inputs: ReleaseInputs, tmp_path: Path, member: str) -> None:
    zip_path = _build(inputs)
    out = tmp_path / "top.zip"
    rewrite_zip(zip_path, out, replace={member: None}, fix_sums=member != "SHA256SUMS")
    assert verify_release(out).problems == (f"{NAME}/{member}: missing",)


def _damaged_release_with_leaks(inputs: ReleaseInputs) -> Path:
    """A release with problems of every kind a chunk sees, and identifiers in a spreadsheet, a card and a header."""
    inputs.entries[1] = dataclasses.replace(inputs.entries[1], indication=f"lymphoma {PLANTED_PATIENT_ID}")
    ct = np.asanyarray(nib.load(inputs.entries[2].prepared.ct.path).dataobj).astype(np.float32)
    inputs.replace_image(3, "CT", ct)  # wrong dtype
    rng = np.random.default_rng(7)
    inputs.replace_image(1, "CT", rng.integers(0, 100, size=CT_SHAPE).astype(np.int16))  # face back in
    organs = np.asanyarray(nib.load(inputs.entries[1].prepared.labels["Organs"].path).dataobj).copy()
    organs[0, 0, 0] = 250
    inputs.replace_image(2, "Organs", organs)  # a value labels.json does not define
    cardiac = np.asanyarray(nib.load(inputs.entries[0].prepared.labels["Cardiac"].path).dataobj)
    shifted = CT_AFFINE.copy()
    shifted[0, 3] += 0.01
    inputs.replace_image(1, "Cardiac", cardiac, affine=shifted)  # off the CT grid
    pt_path = inputs.entries[0].prepared.pt.path  # a UID in a NIfTI header: found in the inflated stream
    img = nib.load(pt_path)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    img.header["descrip"] = planted_uid(1).encode()
    nib.save(img, pt_path)
    from curation.atomic import sha256_file

    prepared = inputs.entries[0].prepared
    pt_file = dataclasses.replace(prepared.pt, sha256=sha256_file(pt_path))
    inputs.entries[0] = dataclasses.replace(inputs.entries[0], prepared=dataclasses.replace(prepared, pt=pt_file))
    return _build(inputs)


def test_the_report_does_not_depend_on_how_the_work_is_split(inputs: ReleaseInputs) -> None:
    from release.verify import finish_verify, plan_verify, verify_chunk

    zip_path = _damaged_release_with_leaks(inputs)
    state = _state(inputs)
    whole = verify_release(zip_path, state_dir=state, chunks=1)
    assert len(whole.problems) >= 7 and any("identifying value" in p for p in whole.problems)
    assert any("off" in p or "affine differs" in p for p in whole.problems)
    for chunks in (2, 5, 1000):
        plan = plan_verify(zip_path, state_dir=state, chunks=chunks)
        assert 1 < len(plan.chunks) <= chunks
        names = sorted(m.name for c in plan.chunks for m in c.members)
        assert names == sorted(plan.images.values())  # each image once
        assert all([m.order for m in c.members] == sorted(m.order for m in c.members) for c in plan.chunks)
        assert [c.work for c in plan.chunks] == sorted((c.work for c in plan.chunks), reverse=True)  # largest first
        assert sum(len(c.members) for c in plan.chunks) == 27  # 3 cases x 9 images
        # chunks run in any order, anywhere: the report is the same
        results = {i: verify_chunk(plan.job(i)) for i in reversed(range(len(plan.chunks)))}
        assert finish_verify(plan, [results[i] for i in range(len(plan.chunks))]) == whole


def test_the_leak_scan_in_the_checks_finds_what_scan_zip_finds(inputs: ReleaseInputs) -> None:
    from release.verify import leak_scan_problems

    zip_path = _damaged_release_with_leaks(inputs)
    state = _state(inputs)
    report = verify_release(zip_path, state_dir=state, chunks=4)
    scanned = [p for p in report.problems if "identifying value" in p]
    alone = leak_scan_problems(zip_path, state)
    assert any("PT/0001.nii.gz: an identifying value (gunzip" in p for p in alone)
    assert len(alone) >= 4 and scanned == alone  # the same lines, in the same order


def test_every_member_is_read_once(inputs: ReleaseInputs, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import release.verify as verify

    zip_path = _build(inputs)
    state = _state(inputs)
    read: list[int] = []
    real = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        data = real(fd, size, offset)
        read.append(len(data))
        return data

    plan = verify.plan_verify(zip_path, state_dir=state, chunks=3)
    monkeypatch.setattr(verify.os, "pread", counting)
    results = [verify.verify_chunk(plan.job(i)) for i in range(len(plan.chunks))]
    regions = sum(m.region_end - m.header_offset for c in plan.chunks for m in c.members)
    members = sum(len(c.members) for c in plan.chunks)
    assert len(read) == members  # one read per member: its header, data and the bytes beside it
    margin = verify.context_bytes(verify._matcher(zip_path, state))
    assert regions <= sum(read) <= regions + 2 * margin * members
    assert verify.finish_verify(plan, results).ok


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stored_members_bytes_scanned_once_are_found_as_a_scan_of_the_whole_zip_finds_them(
        tmp_path: Path, seed: int) -> None:
    """The zip's own bytes of a stored member are taken from the member's own scan, but for its two ends."""
    from anonymization.leakscan import Matcher, context_bytes, scan_member, scan_region
    from release.verify import MemberRef, _member_content, _zip_bytes_leaks

    values = ["SITE-0042", "1.2.826.0.1.3680043.9.7", "Doe^Planted", "19840215"]
    matcher = Matcher(values)
    margin = context_bytes(matcher)
    rng = np.random.default_rng(seed)
    content = bytearray(rng.integers(0, 256, size=20 * margin + 977, dtype=np.uint8).tobytes())
    text = [b" SITE-0042 ", b" 1.2.826.0.1.3680043.9.7 ", b"\x00doe^planted\x00", b" 19840215 "]
    # at both ends, either side of the margin, and inside
    for at in (0, 3, margin - 5, margin, margin + 1, 7 * margin, len(content) - margin - 4,
               len(content) - margin + 2, len(content) - 12, *rng.integers(0, len(content) - 40, size=6)):
        piece = text[int(rng.integers(0, len(text)))]
        content[int(at) : int(at) + len(piece)] = piece[: len(content) - int(at)]
    zip_path = tmp_path / "r.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("before.txt", b"x" * 50)
        zf.writestr("CT/0001.nii.gz", bytes(content))
        zf.writestr("after.txt", b"y" * 50)
    with zipfile.ZipFile(zip_path) as zf:
        info, nxt = zf.infolist()[1], zf.infolist()[2]
    raw = zip_path.read_bytes()
    ref = MemberRef(info.filename, 1, info.header_offset, nxt.header_offset, info.compress_type,
                    info.compress_size, info.file_size, info.CRC)
    base = max(ref.header_offset - margin, 0)
    region = raw[base : ref.region_end + margin]
    member, start = _member_content(region, base, ref)
    assert bytes(member) == bytes(content)
    own = [leak for leak in scan_member(bytes(member), matcher, f"r.zip!{info.filename}")
           if leak.kind.startswith("bytes:")]
    whole = scan_region(region, matcher, "r.zip", base=base, start=ref.header_offset, end=ref.region_end)
    assert len(whole) >= 8  # the planted values, at both ends and inside
    assert _zip_bytes_leaks(region, base, ref, matcher, "r.zip", margin, (start, len(member), own)) == whole


def test_members_go_largest_first_to_the_chunk_with_the_least_work() -> None:
    from release.verify import MemberRef, _cut

    works = [30, 300, 20, 90, 40, 100, 10, 60]  # in zip order; the 300 is a CT
    refs = [MemberRef(f"m{i}", i, i, i + 1, 0, w, w, 0) for i, w in enumerate(works)]
    chunks = _cut(refs, works, 3)
    assert [[m.order for m in c.members] for c in chunks] == [[1], [0, 4, 5, 6], [2, 3, 7]]
    assert [c.work for c in chunks] == [300, 180, 170]
    assert _cut(refs, works, 1)[0].members == tuple(refs)  # one chunk: the zip's order
    assert len(_cut(refs, works, 100)) == len(refs)


def test_chunk_count_is_a_multiple_of_the_workers() -> None:
    # 7 chunks' worth of work on 2 workers would leave one worker alone with the last
    from release.verify import CHUNK_BYTES, MemberRef, _cut

    works = [CHUNK_BYTES // 2] * 14  # 7 chunks' worth
    refs = [MemberRef(f"m{i}", i, i, i + 1, 0, w, w, 0) for i, w in enumerate(works)]
    assert len(_cut(refs, works, None)) == 7
    assert len(_cut(refs, works, None, workers=1)) == 7
    assert len(_cut(refs, works, None, workers=2)) == 8
    assert len(_cut(refs, works, None, workers=4)) == 8
    assert len(_cut(refs, works, None, workers=16)) == 14  # never more chunks than members
    assert len(_cut(refs, works, 3, workers=2)) == 3  # a count asked for is kept
    assert len(_cut(refs[:1], works[:1], None, workers=2)) == 1
