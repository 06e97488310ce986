"""Bounded reading of hostile DICOM files: deflate bombs, huge claimed images, malformed values, Deflated CTs."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from curation import ingest as ingest_module
from curation import prepare as prepare_module
from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
from curation.dicomfile import MAX_HEADER_BYTES, declared_image_bytes, header_int
from curation.dicomindex import index_site
from curation.errors import RejectReason
from curation.ingest import ingest_study
from curation.labels import load_release_labels, load_source_table
from curation.model import ConvertedCase, Rejection
from curation.phantom import write_segmentations, write_study
from curation.prepare import prepare_case
from curation.state import StatePaths

REPO = Path(__file__).resolve().parents[2]


def _site(root: Path, drop: Path) -> SiteConfig:
    return SiteConfig(
        id="leipzig", dicom_dir=drop, segmentations_dir=root / "seg", lesions_dir=None, license="CC-BY-4.0",
        deface=False, indication="lung cancer", clinical_sheet=None, pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element as read from a file, so pydicom keeps an invalid value instead of refusing it."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _deflate_bomb(path: Path, inflated_mib: int) -> None:
    """A Deflated file whose dataset (valid UIDs, then a zero-filled OB element) inflates to ``inflated_mib`` MiB."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "2.25.9001"
    ds.StudyInstanceUID = "2.25.9002"
    ds.SeriesInstanceUID = "2.25.9003"
    ds.Modality = "CT"
    body = io.BytesIO()
    ds.save_as(body, implicit_vr=False, little_endian=True)  # the dataset alone, no file meta
    length = inflated_mib << 20
    element = b"\x42\x00\x11\x00OB\x00\x00" + length.to_bytes(4, "little")  # (0042,0011) EncapsulatedDocument
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = [packer.compress(body.getvalue() + element)]
    zeros = bytes(16 << 20)
    deflated += [packer.compress(zeros) for _ in range(length // len(zeros))]
    deflated.append(packer.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "2.25.9001"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(head, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.getvalue() + b"".join(deflated))


def test_a_deflate_bomb_is_skipped_without_being_inflated(tmp_path: Path) -> None:
    bomb = tmp_path / "drop" / "bomb.dcm"
    _deflate_bomb(bomb, 512)
    assert bomb.stat().st_size < 1 << 20  # well under 1 MB on disk
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from curation.dicomindex import index_site\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "index = index_site('x', Path(sys.argv[1]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_kib': after - before, 'studies': len(index.studies),\n"
        "                  'skipped': [s.why for s in index.skipped]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "drop")], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["studies"] == 0
    (why,) = result["skipped"]
    # its header declares no image: it may inflate to the header allowance only
    assert why.startswith(f"the Deflated dataset inflates to more than {MAX_HEADER_BYTES >> 20} MiB (from ")
    assert why.endswith("with no image size in its header): more than the header allowance of 16 MiB and the "
                        "image; not inflated further")
    # the index's peak memory grew by far less than the 512 MiB the file inflates to
    assert result["grew_kib"] < 128 << 10, result


@pytest.fixture(scope="module")
def deflated_study(tmp_path_factory, small_phantom):
    """A study whose CT and PET files are all written with the Deflated transfer syntax."""
    root = tmp_path_factory.mktemp("deflated")
    study = write_study(small_phantom, root / "drop", vendor="siemens", seed=41, patient_id="LEI-0041",
                        patient_name="LEI-0041", decoys=False)
    plain = write_study(small_phantom, root / "plain", vendor="siemens", seed=41, patient_id="LEI-0041",
                        patient_name="LEI-0041", decoys=False)
    for path in study.files["ct"] + study.files["pt"]:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    return root, study, plain


def test_a_valid_deflated_ct_is_indexed_and_converted(deflated_study) -> None:
    root, study, plain = deflated_study
    first = study.files["ct"][0].read_bytes()
    assert pydicom.dcmread(io.BytesIO(first)).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    index = index_site("leipzig", study.root)
    assert index.skipped == ()
    (record,) = index.studies
    assert {s.SeriesInstanceUID for s in record.series} == {study.ct_series_uid, study.pt_series_uid}
    case = ingest_study(record, _site(root, study.root), StatePaths(root / "state"))
    assert isinstance(case, ConvertedCase), case
    # the same voxels as the same study written uncompressed
    (plain_record,) = index_site("leipzig", plain.root).studies
    reference = ingest_study(plain_record, _site(root, plain.root), StatePaths(root / "state-plain"))
    assert isinstance(reference, ConvertedCase), reference
    for mine, theirs in ((case.ct, reference.ct), (case.pt, reference.pt)):
        assert np.array_equal(np.asanyarray(nib.load(mine.path).dataobj), np.asanyarray(nib.load(theirs.path).dataobj))


def test_a_malformed_series_number_never_stops_the_site(tmp_path: Path, small_phantom) -> None:
    drop = tmp_path / "drop"
    bad = write_study(small_phantom, drop, vendor="ge", seed=42, patient_id="LEI-0042", patient_name="LEI-0042",
                      decoys=False)
    good = write_study(small_phantom, drop, vendor="siemens", seed=43, patient_id="LEI-0043",
                       patient_name="LEI-0043", decoys=False)
    for path in bad.files["ct"]:
        ds = pydicom.dcmread(path)
        ds[0x00200011] = _raw(0x00200011, "IS", b"ab")  # as a site's file carries it: no validation
        ds.save_as(path)
    index = index_site("leipzig", drop)
    assert [s.StudyInstanceUID for s in index.studies] == sorted([bad.StudyInstanceUID, good.StudyInstanceUID])
    ct = next(s for st in index.studies for s in st.series if s.SeriesInstanceUID == bad.ct_series_uid)
    assert ct.SeriesNumber is None and len(ct.files) == len(bad.files["ct"])


def test_a_header_claiming_a_huge_image_is_skipped_before_any_pixel_is_read(tmp_path: Path, small_phantom) -> None:
    drop = tmp_path / "drop"
    study = write_study(small_phantom, drop, vendor="siemens", seed=44, patient_id="LEI-0044",
                        patient_name="LEI-0044", decoys=False)
    target = study.files["ct"][2]
    ds = pydicom.dcmread(target)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000  # 7.8 TiB at 16 bits
    ds.save_as(target)
    assert declared_image_bytes(pydicom.dcmread(target)) == 65535 * 65535 * 1000 * 2
    index = index_site("leipzig", drop)
    why = {Path(s.path): s.why for s in index.skipped}
    assert list(why) == [target]
    assert why[target].startswith("Rows 65535 x Columns 65535 x NumberOfFrames 1000 x BitsAllocated 16/8")
    assert why[target].endswith("more than the 4.0 GiB one file may hold")


def test_header_int_parses_whole_numbers_and_names_bad_values() -> None:
    ds = Dataset()
    ds.SeriesNumber = "7"
    ds.Rows = 512
    assert header_int(ds, "SeriesNumber") == 7 and header_int(ds, "Rows") == 512
    assert header_int(ds, "InstanceNumber", default=3) == 3
    ds[0x00200011] = _raw(0x00200011, "IS", b"ab")
    with pytest.raises(ValueError, match=r"^SeriesNumber 'ab' is not a whole number$"):
        header_int(ds, "SeriesNumber")


def test_memory_error_never_escapes_ingest_or_prepare(tmp_path: Path, small_study, small_phantom,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site(tmp_path, small_study.root)
    (record,) = [s for s in index_site(site.id, small_study.root).studies
                 if s.StudyInstanceUID == small_study.StudyInstanceUID]
    state = StatePaths(tmp_path / "state")
    case = ingest_study(record, site, state)
    assert isinstance(case, ConvertedCase)

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(ingest_module, "encode_series", exhausted)
    outcome = ingest_study(dataclasses.replace(record, fingerprint="changed"), site, state)
    assert isinstance(outcome, Rejection) and outcome.reason is RejectReason.UNREADABLE
    assert "ran out of memory" in outcome.message

    write_segmentations(small_phantom, site.segmentations_dir, case.StudyInstanceUID)
    monkeypatch.setattr(prepare_module, "load_category", exhausted)
    held = prepare_case(case, site, state, defacing=DefacingSettings(16, 5.0, True),
                        release_labels=load_release_labels("builtin:enhance-pet"), source_table=load_source_table())
    assert isinstance(held, Rejection) and held.reason is RejectReason.UNREADABLE and held.stage == "prepare"


def test_file_meta_of_a_plain_file_is_untouched(tmp_path: Path) -> None:
    """Reading through the bounded reader keeps the file's transfer syntax (no rewrite of plain files)."""
    from curation.dicomfile import read_dicom_file

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "2.25.1"
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    assert read_dicom_file(tmp_path / "a.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian
    )


def test_a_deflated_image_larger_than_the_header_allowance_is_read_when_its_header_declares_it(tmp_path: Path) -> None:
    """The inflation cap follows the image size the header declares (an enhanced object can be GBs)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.9101"
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "2.25.9101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "2.25.9102", "2.25.9103", "CT"
    ds.Rows = ds.Columns = 4096
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(4096 * 4096 * 2)  # 32 MiB, twice the header allowance
    (tmp_path / "drop").mkdir()
    ds.save_as(tmp_path / "drop" / "big.dcm", enforce_file_format=True)
    assert (tmp_path / "drop" / "big.dcm").stat().st_size < 1 << 20
    index = index_site("leipzig", tmp_path / "drop")
    assert index.skipped == ()
    assert [s.SeriesInstanceUID for st in index.studies for s in st.series] == ["2.25.9103"]


# ---------------------------------------------------------------------------
# read_dicom_header: the header whole, a plain slice's pixel data located


@pytest.fixture
def small_first_read(monkeypatch: pytest.MonkeyPatch) -> int:
    """A first read of 4 KiB, so that the small phantom's slices (32 KiB of pixels) are not read whole at once."""
    import curation.dicomfile as dicomfile

    monkeypatch.setattr(dicomfile, "HEADER_READ_BYTES", 4096)
    return 4096


def _elements(ds: Dataset) -> list[tuple[int, str, object]]:
    return [(int(e.tag), str(e.VR), e.value) for e in ds if e.tag != Tag(0x7FE0, 0x0010)]


@pytest.mark.parametrize("role", ["ct", "pt"])
@pytest.mark.parametrize("implicit", [False, True])
def test_a_plain_slice_has_its_whole_header_and_its_pixel_data_located(
    tmp_path: Path, small_study, small_first_read: int, role: str, implicit: bool
) -> None:
    from curation.dicomfile import read_dicom_file, read_dicom_header

    path = small_study.files[role][2]
    if implicit:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        path = tmp_path / "implicit.dcm"
        ds.save_as(path, implicit_vr=True, little_endian=True)
    header, location = read_dicom_header(path)
    whole = read_dicom_file(path, stop_before_pixels=False)
    assert "PixelData" not in header and location is not None
    assert _elements(header) == _elements(whole)
    assert header.file_meta == whole.file_meta
    buffer = bytearray(location.length)
    location.read_into(memoryview(buffer))
    assert bytes(buffer) == whole.PixelData and location.length == whole.Rows * whole.Columns * 2
    assert (location.signed, location.bits_stored) == (whole.PixelRepresentation == 1, whole.BitsStored)


def _variant(tmp_path: Path, source: Path, name: str, change) -> Path:
    ds = pydicom.dcmread(source)
    change(ds)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_anything_after_pixel_data_makes_the_file_read_whole_and_gated(
    tmp_path: Path, small_study, small_first_read: int
) -> None:
    """An element after PixelData (a private name here) is never left out of the header the gate checks."""
    from anonymization.gate import check_datasets
    from curation.dicomfile import read_dicom_header

    def trailing_name(ds: Dataset) -> None:
        block = ds.private_block(0x7FE1, "HOSTILE", create=True)  # group 7FE1 sorts after PixelData
        block.add_new(0x01, "PN", "Mueller^Hans")

    path = _variant(tmp_path, small_study.files["ct"][0], "trailing", trailing_name)
    header, location = read_dicom_header(path)
    assert location is None and "PixelData" in header
    findings = check_datasets([header]).findings
    assert [f.rule for f in findings] == ["private-person-name"]


@pytest.mark.parametrize("kind", ["8-bit", "rle", "deflated", "padding", "large-header"])
def test_other_files_are_read_whole(tmp_path: Path, small_study, small_first_read: int, kind: str) -> None:
    from curation.dicomfile import read_dicom_file, read_dicom_header

    source = small_study.files["ct"][0]

    def change(ds: Dataset) -> None:
        if kind == "8-bit":
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = bytes(ds.Rows * ds.Columns)
        elif kind == "rle":
            ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
        elif kind == "deflated":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif kind == "padding":
            ds.DataSetTrailingPadding = b"\0" * 8
        else:
            ds.ImageComments = "x" * small_first_read  # the header does not fit the first read

    path = _variant(tmp_path, source, kind, change)
    header, location = read_dicom_header(path)
    whole = read_dicom_file(path, stop_before_pixels=False)
    assert location is None
    assert _elements(header) == _elements(whole) and header.PixelData == whole.PixelData


def test_pixel_data_of_a_file_changed_since_its_header_was_read_is_refused(
    tmp_path: Path, small_study, small_first_read: int
) -> None:
    from curation.dicomfile import read_dicom_header

    path = tmp_path / "slice.dcm"
    path.write_bytes(small_study.files["ct"][0].read_bytes())
    _, location = read_dicom_header(path)
    assert location is not None
    replacement = tmp_path / "other.dcm"
    replacement.write_bytes(path.read_bytes())
    replacement.replace(path)  # another inode under the same name
    with pytest.raises(OSError, match="changed after its header was read"):
        location.read_into(memoryview(bytearray(location.length)))
