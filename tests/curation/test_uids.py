"""UIDs: the identifying ones (every UID outside the DICOM root), and UIDs from headers as names:
invalid UIDs, path traversal, symbolic links, key collisions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
from curation.dicomindex import index_site
from curation.errors import InvalidUIDError, RejectReason
from curation.ingest import ingest_study
from curation.labels import load_release_labels, load_source_table
from curation.model import ConvertedCase, PreparedCase, Rejection, study_key
from curation.phantom import write_lesion, write_segmentations, write_study
from curation.prepare import prepare_case
from curation.state import StatePaths, load_sensitive_values
from curation.uids import (
    DICOM_UID_ROOT,
    check_uid,
    is_conforming_uid,
    is_dicom_defined,
    iter_uids,
    uid_strings,
)


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage  # DICOM-defined: never collected
    ds.SOPInstanceUID = "2.25.1001"
    ds.StudyInstanceUID = "2.25.1002"
    ds.ReferencedSOPClassUID = CTImageStorage
    ds.FailedSOPInstanceUIDList = ["2.25.1003", "2.25.1004"]
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = "2.25.1005"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "2.25.1006"
    reference.ReferencedImageSequence = [inner]
    ds.SourceImageSequence = [reference]
    ds.PatientName = "2.25.9999"  # not a UI element: not a UID, even if it looks like one
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "UI", "2.25.1007")
    return ds


EXPECTED = {f"2.25.100{k}" for k in range(1, 8)}


def test_the_root_is_the_dicom_standards():
    assert DICOM_UID_ROOT == "1.2.840.10008."
    assert is_dicom_defined(CTImageStorage)
    assert not is_dicom_defined("2.25.1")
    assert not is_dicom_defined("1.2.840.100081.5")  # a different root that starts alike


def test_uid_strings_reads_raw_bytes_and_values():
    assert list(uid_strings(b"2.25.1\\1.2.840.10008.1.2\\2.25.2\x00")) == ["2.25.1", "2.25.2"]
    assert list(uid_strings(pydicom.multival.MultiValue(str, ["2.25.3", " "]))) == ["2.25.3"]
    assert list(uid_strings(None)) == []
    assert list(uid_strings("")) == []


def test_iter_uids_walks_sequences_and_private_elements():
    assert set(iter_uids(_dataset())) == EXPECTED


def test_iter_uids_passes_over_the_top_level_tags_it_is_told_to_skip_and_only_those():
    ds = _dataset()
    # SOPInstanceUID, and the sequence holding 2.25.1005 and 2.25.1006; ReferencedSOPInstanceUID inside it is not
    # a top-level tag of ds: skipping that tag passes over nothing
    skip = frozenset({0x00080018, 0x00082112, 0x00081155})
    assert set(iter_uids(ds, skip=skip)) == EXPECTED - {"2.25.1001", "2.25.1005", "2.25.1006"}
    assert set(iter_uids(ds, skip=frozenset({0x00081155}))) == EXPECTED


def _reread(ds: Dataset, transfer_syntax: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, force=True)


def test_iter_uids_reads_undecoded_files_of_either_vr_encoding():
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        read = _reread(_dataset(), syntax)
        found = set(iter_uids(read))
        public = EXPECTED - {"2.25.1007"}
        assert public <= found, syntax
        if syntax == ExplicitVRLittleEndian:  # implicit VR: an unknown private creator's VR is unknown
            assert found == EXPECTED


# ---------------------------------------------------------------------------
# UIDs from headers as names (issue 9)

RELEASE = load_release_labels("builtin:enhance-pet")
MOOSE = load_source_table()
DEFACING = DefacingSettings(height_voxels=16, margin_mm=5.0, clear_labels=True)


def _site(root: Path, *, dicom_dir: Path | None = None, lesions: bool = True, deface: bool = False) -> SiteConfig:
    return SiteConfig(
        id="leipzig",
        dicom_dir=dicom_dir or root / "drop",
        segmentations_dir=root / "seg" / "leipzig",
        lesions_dir=root / "lesions" / "leipzig" if lesions else None,
        license="CC-BY-4.0",
        deface=deface,
        indication="lung cancer",
        clinical_sheet=None,
        pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


# ---------------------------------------------------------------------------
# the rule


@pytest.mark.parametrize("uid", ["0", "1.2.3", "2.25.0.1", "1.2.840.10008.1.2.1", "9" * 64, "1.0.0.10"])
def test_conforming_uids(uid: str) -> None:
    assert is_conforming_uid(uid)
    assert check_uid(uid, keyword="StudyInstanceUID", where="x") == uid


@pytest.mark.parametrize(
    "uid",
    ["", "9" * 65, "../siteB/1.2.3", "1.2.3/", "1.2..3", ".1.2", "1.2.", "1.02.3", "01.2", "1.2.3\x00", "1.2.3 ",
     "1.2.3\n", "1.2.3ä", "١.٢", "1,2,3", "ab", "1.2.3e4"],
)
def test_non_conforming_uids_are_refused_with_the_rule(uid: str) -> None:
    assert not is_conforming_uid(uid)
    with pytest.raises(InvalidUIDError, match=r"^file a\.dcm: SOPInstanceUID .* is not a DICOM UID \(PS3\.5 9\.1") as err:
        check_uid(uid, keyword="SOPInstanceUID", where="file a.dcm")
    assert err.value.reason is RejectReason.INVALID_UID


def test_study_key_hashes_the_exact_bytes_and_keeps_ascii_keys() -> None:
    # conforming (ASCII) UIDs keep the key they always had: state folders and everything released stay
    assert study_key("1.2.3") == hashlib.sha256(b"1.2.3").hexdigest()[:24] == "c47f5b18b8a430e698b9fe15"
    # values that differ only in non-ASCII characters (encoded as "?" before) get their own keys
    keys = {study_key(v) for v in ("1.2.3\u00e4", "1.2.3\u00f6", "1.2.3?", "1.2.3\udcff")}
    assert len(keys) == 4


# ---------------------------------------------------------------------------
# ingest


def _rewrite(paths, **values: str) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory, small_phantom):
    """Studies whose headers carry non-conforming UIDs, ingested once."""
    root = tmp_path_factory.mktemp("hostile_uids")
    drop = root / "drop"
    common = {"vendor": "siemens", "decoys": False}
    studies = {
        "traversal": write_study(small_phantom, drop, seed=301, patient_id="LEI-0301", patient_name="LEI-0301",
                                 study_uid="../siteB/2.25.3010", **common),
        "sop": write_study(small_phantom, drop, seed=302, patient_id="LEI-0302", patient_name="LEI-0302", **common),
        "frame": write_study(small_phantom, drop, seed=303, patient_id="LEI-0303", patient_name="LEI-0303", **common),
        "series": write_study(small_phantom, drop, seed=304, patient_id="LEI-0304", patient_name="LEI-0304", **common),
    }
    _rewrite(studies["sop"].files["ct"][3:4], SOPInstanceUID="2.25.0304.1")
    _rewrite(studies["frame"].files["ct"] + studies["frame"].files["pt"], FrameOfReferenceUID="2.25.3.")
    _rewrite(studies["series"].files["pt"], SeriesInstanceUID="2.25.3040/..")
    state = StatePaths(root / "state")
    site = _site(root, dicom_dir=drop)
    outcomes = {o.StudyInstanceUID: o for o in (ingest_study(s, site, state) for s in index_site(site.id, drop).studies)}
    return studies, outcomes, state


@pytest.mark.parametrize(
    ("which", "pattern"),
    [
        ("traversal", r"^study '\.\./siteB/2\.25\.3010': StudyInstanceUID '\.\./siteB/2\.25\.3010' is not a DICOM UID"),
        ("sop", r"^/\S+ \(CT series 2\.25\.\d+\): SOPInstanceUID '2\.25\.0304\.1' is not a DICOM UID"),
        ("frame", r"^CT series '2\.25\.\d+' of study 2\.25\.\d+: FrameOfReferenceUID '2\.25\.3\.' is not a DICOM UID"),
        ("series", r"^PT series '2\.25\.3040/\.\.' of study 2\.25\.\d+: SeriesInstanceUID '2\.25\.3040/\.\.' is not"),
    ],
)
def test_a_study_with_a_non_conforming_uid_is_rejected_invalid_uid(hostile_site, which: str, pattern: str) -> None:
    studies, outcomes, state = hostile_site
    outcome = outcomes[studies[which].StudyInstanceUID]
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is RejectReason.INVALID_UID
    assert outcome.stage == "ingest"
    assert re.search(pattern, outcome.message), outcome.message
    assert not (state.case_dir(outcome.key) / "CT.nii.gz").exists()
    if which == "sop":
        assert str(studies["sop"].files["ct"][3]) in outcome.message  # names the file


def test_non_ascii_uids_keep_their_own_state_and_leak_scan_values(small_study, tmp_path: Path) -> None:
    """Two StudyInstanceUIDs that differ only in a non-ASCII character do not share a state file."""
    site = _site(tmp_path, dicom_dir=small_study.root)
    (record,) = [s for s in index_site(site.id, small_study.root).studies
                 if s.StudyInstanceUID == small_study.StudyInstanceUID]
    state = StatePaths(tmp_path / "state")
    outcomes = [ingest_study(dataclasses.replace(record, StudyInstanceUID=f"2.25.77{c}"), site, state)
                for c in ("\u00e4", "\u00f6")]
    assert [o.reason for o in outcomes] == [RejectReason.INVALID_UID] * 2  # type: ignore[union-attr]
    assert outcomes[0].key != outcomes[1].key
    for outcome in outcomes:
        record_file = state.study_outcome("leipzig", outcome.key)
        assert json.loads(record_file.read_text())["record"]["StudyInstanceUID"] == outcome.StudyInstanceUID
    assert {"2.25.77\u00e4", "2.25.77\u00f6"} <= load_sensitive_values(state.root)


# ---------------------------------------------------------------------------
# prepare: paths under segmentations_dir and lesions_dir


@pytest.fixture(scope="module")
def converted(small_study, tmp_path_factory) -> ConvertedCase:
    root = tmp_path_factory.mktemp("uids_ingest")
    site = _site(root, dicom_dir=small_study.root)
    (record,) = [s for s in index_site(site.id, small_study.root).studies
                 if s.StudyInstanceUID == small_study.StudyInstanceUID]
    case = ingest_study(record, site, StatePaths(root / "state"))
    assert isinstance(case, ConvertedCase), case
    return case


def _prepare(case: ConvertedCase, site: SiteConfig, root: Path) -> PreparedCase | Rejection:
    return prepare_case(case, site, StatePaths(root / "state"), defacing=DEFACING, release_labels=RELEASE,
                        source_table=MOOSE)


def test_a_uid_with_a_path_never_reads_another_sites_segmentations(converted, small_phantom, tmp_path: Path) -> None:
    site = _site(tmp_path)
    uid = converted.StudyInstanceUID
    # another site's delivery for the same study, one folder up from this site's segmentations_dir
    write_segmentations(small_phantom, tmp_path / "seg" / "siteB", uid)
    write_lesion(small_phantom, tmp_path / "lesions" / "siteB", uid)
    hostile = dataclasses.replace(converted, StudyInstanceUID=f"../siteB/{uid}")
    outcome = _prepare(hostile, site, tmp_path)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is RejectReason.INVALID_UID and outcome.stage == "prepare"
    assert "StudyInstanceUID '../siteB/" in outcome.message


@pytest.mark.parametrize("link", ["folder", "category-file", "lesion-file"])
def test_a_symlink_leaving_its_configured_folder_is_refused(
    converted, small_phantom, tmp_path: Path, link: str
) -> None:
    site = _site(tmp_path)
    uid = converted.StudyInstanceUID
    outside = tmp_path / "elsewhere"
    write_segmentations(small_phantom, site.segmentations_dir, uid)
    write_lesion(small_phantom, site.lesions_dir, uid)
    write_segmentations(small_phantom, outside, uid)
    write_lesion(small_phantom, outside, uid)
    if link == "folder":
        named = site.segmentations_dir / uid
        shutil.rmtree(named)
        named.symlink_to(outside / uid, target_is_directory=True)
    elif link == "category-file":
        named = site.segmentations_dir / uid / "Organs.nii.gz"
        named.unlink()
        named.symlink_to(outside / uid / "Organs.nii.gz")
    else:
        named = site.lesions_dir / f"{uid}.nii.gz"
        named.unlink()
        named.symlink_to(outside / f"{uid}.nii.gz")
    outcome = _prepare(converted, site, tmp_path)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is RejectReason.SEGMENTATION_INVALID
    assert outcome.message.startswith(f"{named}: leads to {outside.resolve()}/"), outcome.message
    assert "outside its configured folder" in outcome.message
    if link == "folder":  # a link that stays inside the configured folder is followed
        store = site.segmentations_dir / "store"
        shutil.move(outside / uid, store / uid)
        named.unlink()
        named.symlink_to(store / uid, target_is_directory=True)
        assert isinstance(_prepare(converted, site, tmp_path), PreparedCase)


def test_an_element_is_seen_before_only_with_the_same_bytes_encoding_and_character_set() -> None:
    from pydicom.dataelem import DataElement, RawDataElement

    from curation.uids import seen_before

    def raw(value: bytes, implicit: bool = False) -> RawDataElement:
        return RawDataElement(0x00100010, "PN", len(value), value, 0, implicit, True)

    seen: set = set()
    assert not seen_before(raw(b"Doe^J"), "ISO_IR 100", seen)
    assert seen_before(raw(b"Doe^J"), "ISO_IR 100", seen)
    assert not seen_before(raw(b"Doe^J"), "ISO_IR 192", seen)  # other text from the same bytes
    assert not seen_before(raw(b"Doe^K"), "ISO_IR 100", seen)
    assert not seen_before(raw(b"Doe^J", implicit=True), "ISO_IR 100", seen)
    assert not seen_before(raw(b"Doe^J"), None, seen)  # a dataset not read from bytes
    decoded = DataElement(0x00100010, "PN", "Doe^J")
    assert not seen_before(decoded, "ISO_IR 100", seen) and not seen_before(decoded, "ISO_IR 100", seen)
