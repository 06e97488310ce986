"""The site index: content-detected DICOM, skipped files with reasons, grouping, fingerprints, links."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import dcmwrite

from curation import dicomindex
from curation.dicomindex import index_site
from curation.phantom import write_study


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def two_studies(tmp_path, small_phantom):
    """A Philips-style study with every decoy (and a DICOMDIR) and a plain Siemens one in one drop."""
    drop = tmp_path / "drop"
    a = write_study(small_phantom, drop, vendor="philips", seed=5, patient_id="A-1", patient_name="A-1")
    b = write_study(small_phantom, drop, vendor="siemens", seed=6, patient_id="B-1", patient_name="B-1", decoys=False)
    return drop, a, b


def test_groups_by_study_and_series_and_counts_skipped_files(two_studies):
    drop, a, b = two_studies
    before = _tree_digest(drop)
    index = index_site("vienna", drop)
    assert _tree_digest(drop) == before  # sources untouched (content and mtime)

    assert index.site == "vienna"
    assert index.files_seen == len(a.all_files) + len(b.all_files)
    assert [s.StudyInstanceUID for s in index.studies] == sorted([a.StudyInstanceUID, b.StudyInstanceUID])
    study_a = next(s for s in index.studies if s.StudyInstanceUID == a.StudyInstanceUID)
    assert study_a.PatientID == "A-1" and study_a.StudyDate == a.StudyDate and study_a.site == "vienna"
    by_uid = {s.SeriesInstanceUID: s for s in study_a.series}
    assert [s.SeriesInstanceUID for s in study_a.series] == sorted(by_uid)
    assert set(by_uid[a.ct_series_uid].files) == {str(p.absolute()) for p in a.files["ct"]}
    assert list(by_uid[a.ct_series_uid].files) == sorted(by_uid[a.ct_series_uid].files)
    assert len(by_uid[a.pt_series_uid].files) == len(a.files["pt"])
    pt = by_uid[a.pt_series_uid]
    assert pt.Modality == "PT" and "ATTN" in pt.CorrectedImage and pt.Units == "BQML"
    assert pt.FrameOfReferenceUID == a.FrameOfReferenceUID
    assert len(study_a.series) == 5  # CT, PET AC, PET NAC, localiser, secondary capture

    why = {Path(s.path): s.why for s in index.skipped}
    assert set(why) == {a.files["text"][0], a.files["truncated"][0], a.files["dicomdir"][0]}
    assert why[a.files["text"][0]].startswith("not DICOM")
    assert "truncated" in why[a.files["truncated"][0]]
    assert why[a.files["dicomdir"][0]].startswith("DICOMDIR")

    timing = dicomindex.LAST_TIMING
    assert timing is not None and timing.files == index.files_seen
    assert timing.bytes_read == sum(p.stat().st_size for p in [*a.all_files, *b.all_files])


def test_index_is_deterministic(two_studies):
    drop, _, _ = two_studies
    assert index_site("s", drop) == index_site("s", drop)


def test_fingerprint_follows_file_content_not_paths(two_studies):
    drop, a, b = two_studies
    first = {s.StudyInstanceUID: s.fingerprint for s in index_site("s", drop).studies}
    victim = a.files["pt"][3]
    ds = pydicom.dcmread(victim)
    ds.PixelData = bytes(len(ds.PixelData))  # same path, same size, other content
    ds.save_as(victim, enforce_file_format=True)
    second = {s.StudyInstanceUID: s.fingerprint for s in index_site("s", drop).studies}
    assert second[a.StudyInstanceUID] != first[a.StudyInstanceUID]
    assert second[b.StudyInstanceUID] == first[b.StudyInstanceUID]
    # moving files around (same content) keeps the fingerprint
    moved = drop / "elsewhere" / "x"
    moved.parent.mkdir()
    shutil.move(b.files["ct"][0], moved)
    third = {s.StudyInstanceUID: s.fingerprint for s in index_site("s", drop).studies}
    assert third[b.StudyInstanceUID] == first[b.StudyInstanceUID]


def test_links_leaving_the_site_are_not_followed(tmp_path, two_studies):
    drop, a, _ = two_studies
    outside = tmp_path / "outside"
    outside.mkdir()
    foreign = outside / "foreign.dcm"
    shutil.copyfile(a.files["ct"][0], foreign)
    os.symlink(foreign, drop / "link-out.dcm")
    os.symlink(outside, drop / "dir-link")
    os.symlink(a.files["ct"][1], drop / "link-in.dcm")  # inside, to a file indexed anyway
    index = index_site("s", drop)
    why = {Path(s.path).name: s.why for s in index.skipped}
    assert why["link-out.dcm"].startswith("symbolic link leaving dicom_dir")
    assert why["dir-link"] == "symbolic link to a folder, not followed"
    assert why["link-in.dcm"].startswith("symbolic link to ") and why["link-in.dcm"].endswith("which is indexed itself")
    study = next(s for s in index.studies if s.StudyInstanceUID == a.StudyInstanceUID)
    ct = next(s for s in study.series if s.SeriesInstanceUID == a.ct_series_uid)
    assert len(ct.files) == len(a.files["ct"])  # no file counted twice


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")  # pydicom on the garbage file
def test_dicom_is_recognised_by_content(tmp_path, small_study):
    # the same dataset without the 128-byte preamble and DICM marker is DICOM too
    ds = pydicom.dcmread(small_study.files["ct"][0])
    bare = tmp_path / "no_preamble"
    ds.preamble = None
    dcmwrite(bare, ds, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    index = index_site("s", tmp_path)
    assert index.skipped == () and len(index.studies) == 1
    assert index.studies[0].series[0].files == (str(bare),)

    garbage = tmp_path / "garbage.dcm"  # starts like a group-0008 element, but is not a dataset
    garbage.write_bytes(b"\x08\x00\x16\x00" + bytes(range(200, 256)) * 2)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    index = index_site("s", tmp_path)
    assert {Path(s.path).name for s in index.skipped} == {"garbage.dcm", "empty"}
    assert len(index.studies) == 1


def test_missing_dicom_dir_is_a_caller_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"site 'x': dicom_dir .*nope is not a folder"):
        index_site("x", tmp_path / "nope")


def test_pixel_values_that_look_like_the_pixel_data_tag_do_not_make_a_slice_truncated(tmp_path, small_phantom):
    drop = tmp_path / "drop"
    study = write_study(small_phantom, drop, vendor="siemens", seed=7, patient_id="P", patient_name="P", decoys=False)
    victim = study.files["pt"][3]
    ds = pydicom.dcmread(victim)
    pixels = bytearray(ds.PixelData)
    # uint16 values 0x7FE0, 0x0010, 0xFFFF, 0x7FFF: the bytes of the (7FE0,0010) tag and a huge "length"
    pixels[-8:] = bytes.fromhex("e07f1000ffffff7f")
    ds.PixelData = bytes(pixels)
    ds.save_as(victim, enforce_file_format=True)
    index = index_site("leipzig", drop)
    assert index.skipped == ()
    (record,) = index.studies
    pt = next(s for s in record.series if s.Modality == "PT")
    assert str(victim) in pt.files

    # a really truncated file is still caught
    data = Path(victim).read_bytes()
    Path(victim).write_bytes(data[: len(data) - 100])
    (skipped,) = index_site("leipzig", drop).skipped
    assert skipped.path == str(victim) and "truncated" in skipped.why


# ---------------------------------------------------------------------------
# cost follows change: the stat cache


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled at once (no racy window): the test decides what changes."""
    from curation import statcache

    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)


def _count_reads(monkeypatch) -> list[Path]:
    read: list[Path] = []
    real = dicomindex._read_header

    def counting(path: Path):
        read.append(path)
        return real(path)

    monkeypatch.setattr(dicomindex, "_read_header", counting)
    return read


def test_an_unchanged_drop_is_indexed_without_reading_a_file(two_studies, tmp_path, monkeypatch, settled):
    drop, _, _ = two_studies
    cache = tmp_path / "state" / "stat-cache.json"
    read = _count_reads(monkeypatch)
    first = index_site("s", drop, cache=cache)
    assert len(read) == first.files_seen and cache.is_file()
    read.clear()
    written = cache.stat().st_mtime_ns
    second = index_site("s", drop, cache=cache)
    assert read == [] and second == first  # the same index, skipped files and their reasons included
    assert dicomindex.LAST_TIMING.bytes_read == 0 and dicomindex.LAST_TIMING.files_read == 0
    assert cache.stat().st_mtime_ns == written  # nothing changed: the cache is not rewritten
    assert index_site("s", drop, cache=cache, rehash=True) == first and len(read) == first.files_seen


_INDEX_IN_A_NEW_PROCESS = (
    "import pickle, sys\n"
    "from pathlib import Path\n"
    "from curation import statcache\n"
    "statcache.RACY_SECONDS = 0.0  # the files were written by the test: settled at once\n"
    "from curation.dicomindex import index_site\n"
    "index = index_site('s', Path(sys.argv[1]), cache=Path(sys.argv[2]))\n"
    "sys.stdout.buffer.write(pickle.dumps((index, 'pydicom' in sys.modules)))\n"
)


def test_an_unchanged_drop_is_indexed_without_importing_pydicom(two_studies, tmp_path):
    import pickle
    import subprocess
    import sys

    drop, _, _ = two_studies
    cache = tmp_path / "stat-cache.json"
    runs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", _INDEX_IN_A_NEW_PROCESS, str(drop), str(cache)],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True, check=False)
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        runs.append(pickle.loads(run.stdout))
    (first, read_files), (second, cached_only) = runs
    assert read_files is True  # reading a file needs pydicom
    assert cached_only is False and second == first  # a run over an unchanged drop does not import it


def test_a_changed_file_is_always_read_again(two_studies, tmp_path, monkeypatch, settled):
    drop, a, _ = two_studies
    cache = tmp_path / "stat-cache.json"
    first = index_site("s", drop, cache=cache)
    victim = a.files["pt"][3]
    before = victim.stat()
    ds = pydicom.dcmread(victim)
    ds.PixelData = bytes(len(ds.PixelData))  # same size, other content ...
    ds.save_as(victim, enforce_file_format=True)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime: only ctime tells
    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    read = _count_reads(monkeypatch)
    second = index_site("s", drop, cache=cache)
    assert read == [victim]
    fingerprint = {s.StudyInstanceUID: s.fingerprint for s in second.studies}
    assert fingerprint != {s.StudyInstanceUID: s.fingerprint for s in first.studies}
    assert fingerprint == {s.StudyInstanceUID: s.fingerprint for s in index_site("s", drop).studies}  # no cache

    # a file replaced by another (new inode), a file removed, a file added
    read.clear()
    other = a.files["ct"][2]
    copy = other.with_suffix(".tmp")
    shutil.copy2(other, copy)
    os.replace(copy, other)
    a.files["ct"][5].unlink()
    shutil.copyfile(a.files["ct"][6], drop / "added.dcm")
    third = index_site("s", drop, cache=cache)
    assert sorted(read) == sorted([other, drop / "added.dcm"])
    assert third == index_site("s", drop)


def test_an_entry_read_within_the_racy_window_is_not_trusted() -> None:
    from curation.statcache import RACY_SECONDS, FileStat, StatCache

    stat = FileStat(size=10, mtime_ns=5_000_000_000, ctime_ns=6_000_000_000, inode=7)
    cache = StatCache(None)
    cache.put("f", stat, ["digest", ""], read_ns=stat.ctime_ns + int(RACY_SECONDS * 1e9) - 1)
    cache.old_files = cache.files  # what the next run loads
    assert StatCache.get(cache, "f", stat) is None  # changed too close to the read: read again
    cache.put("f", stat, ["digest", ""], read_ns=stat.ctime_ns + int(RACY_SECONDS * 1e9) + 1)
    cache.old_files = dict(cache.files)
    assert cache.get("f", stat) == (["digest", ""], None)
    assert cache.get("f", FileStat(10, 5_000_000_000, 6_000_000_001, 7)) is None  # ctime moved
    assert cache.get("f", FileStat(10, 5_000_000_000, 6_000_000_000, 8)) is None  # another inode


def test_a_cache_written_another_way_is_ignored(two_studies, tmp_path, monkeypatch, settled):
    import json

    drop, _, _ = two_studies
    cache = tmp_path / "stat-cache.json"
    first = index_site("s", drop, cache=cache)
    doc = json.loads(cache.read_text())
    doc["context"] = {"tags": ["PatientID"]}
    cache.write_text(json.dumps(doc))
    read = _count_reads(monkeypatch)
    assert index_site("s", drop, cache=cache) == first and len(read) == first.files_seen
    cache.write_text("{damaged")
    read.clear()
    assert index_site("s", drop, cache=cache) == first and len(read) == first.files_seen
