"""Ingest end to end on phantom studies: every reason code, decoys, metadata, state, re-runs, untouched sources."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from anonymization.dates import date_forms
from curation.config import IdentityFlagPolicy, MissingHeadPolicy, SiteConfig
from curation.dicomindex import index_site
from curation.errors import RejectReason
from curation.ingest import IngestStage, ingest_study
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import ConvertedCase, Rejection, from_jsonable
from curation.phantom import write_study
from curation.stage import read_record
from curation.state import StatePaths, load_sensitive_values
from tests.phantom_helpers import add_ingest_defect

#: defect -> (reason code, regex the message must match)
EXPECTED = {
    "missing-pet-slice": (RejectReason.MISSING_SLICES, r"PT series .*\('PET WB AC'\): gap of 12\.000 mm .*1 slice\(s\) missing"),
    "frame-of-reference-mismatch": (
        RejectReason.FRAME_OF_REFERENCE_MISMATCH,
        r"no CT and AC PET share a FrameOfReferenceUID: series .*\('CT WB.*FrameOfReferenceUID 2\.25\.\d+; series .*\('PET WB AC'\) FrameOfReferenceUID 2\.25\.\d+",
    ),
    "nac-only": (RejectReason.NO_AC_PET, r"no attenuation-corrected PET .*\('PET NAC'\): PET not attenuation-corrected \(CorrectedImage '[A-Z\\]+' has no ATTN\)"),
    "gantry-tilt": (RejectReason.GANTRY_TILT, r"CT series .*: slices are not perpendicular to ImageOrientationPatient \(gantry tilt about 7\.00 degrees\)"),
    "non-uniform-spacing": (RejectReason.NON_UNIFORM_SPACING, r"CT series .*: step of 6\.750 mm .*median spacing 5\.000 mm by more than 1%"),
    "inconsistent-orientation": (RejectReason.INCONSISTENT_ORIENTATION, r"CT series .*: more than one ImageOrientationPatient: slice 0 has \[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\], slice \d+ .* has \[0\.98480"),
    "second-ct-series": (RejectReason.AMBIGUOUS_SERIES, r"2 CT/PET pairs could be the case: (?=.*CT series 2\.25\.\d+ \('CT WB 2\.0 recon'\) \+ PET)(?=.*CT series 2\.25\.\d+ \('CT WB [^']*Br38f'\) \+ PET)"),
    "short-ct-pixel-data": (RejectReason.CONVERSION_FAILED, r"CT series .*: slice \d+ \(InstanceNumber \d+\): pixel data cannot be decoded"),
    "no-ct": (RejectReason.NO_CT, r"no diagnostic axial CT .*the study has no other series"),
    "plant-phi": (RejectReason.PHI_DETECTED, r"."),
}


def _ingest_site(site, state):
    """Index the site's drop and ingest every study, in index order (what the ingest flow does)."""
    return [ingest_study(study, site, state) for study in index_site(site.id, site.dicom_dir).studies]


def _site(dicom_dir: Path, site_id: str = "leipzig", pattern: str = "") -> SiteConfig:
    return SiteConfig(
        id=site_id,
        dicom_dir=dicom_dir,
        segmentations_dir=dicom_dir.parent / "seg",
        lesions_dir=None,
        license="CC-BY-4.0",
        deface=True,
        indication="lung cancer",
        clinical_sheet=None,
        pseudonym_pattern=pattern,
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def site_run(tmp_path_factory, small_phantom):
    """One site: a good study with every decoy and one study per rejection reason, ingested once."""
    root = tmp_path_factory.mktemp("ingest")
    drop = root / "drop"
    good = write_study(small_phantom, drop, vendor="philips", seed=1, patient_id="LEI-0001", patient_name="LEI-0001")
    studies = {}
    for n, defect in enumerate(EXPECTED):
        common = {"vendor": "siemens", "seed": 100 + n, "patient_id": f"LEI-{n + 10:04d}", "patient_name": f"LEI-{n + 10:04d}", "decoys": False}
        if defect in ("missing-pet-slice", "frame-of-reference-mismatch", "nac-only", "gantry-tilt", "non-uniform-spacing"):
            study = write_study(small_phantom, drop, defect=defect, **common)
        elif defect == "no-ct":
            study = write_study(small_phantom, drop, **common)
            for path in study.files["ct"]:
                path.unlink()
        elif defect == "plant-phi":
            study = write_study(small_phantom, drop, plant_phi=True, **common)
        else:
            study = add_ingest_defect(write_study(small_phantom, drop, **common), defect)
        studies[defect] = study
    before = _tree_digest(drop)
    state = StatePaths(root / "state")
    site = _site(drop, pattern=r"^LEI-\d{4}$")
    index = index_site(site.id, site.dicom_dir)
    outcomes = [ingest_study(study, site, state) for study in index.studies]
    return {"good": good, "studies": studies, "outcomes": outcomes, "state": state, "drop": drop, "before": before,
            "index": index}


@pytest.mark.parametrize("defect", list(EXPECTED))
def test_each_rejection_reason(site_run, defect):
    study = site_run["studies"][defect]
    (outcome,) = [o for o in site_run["outcomes"] if o.StudyInstanceUID == study.StudyInstanceUID]
    reason, pattern = EXPECTED[defect]
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is reason, outcome.message
    assert (outcome.phase, outcome.stage, outcome.site) == ("ingest", "ingest", "leipzig")
    assert re.search(pattern, outcome.message), outcome.message
    assert read_record(site_run["state"].study_outcome("leipzig", outcome.key), ConvertedCase) == outcome
    assert not (site_run["state"].case_dir(outcome.key) / "CT.nii.gz").exists()


def test_one_bad_study_never_stops_the_others_and_sources_are_untouched(site_run):
    outcomes = site_run["outcomes"]
    assert len(outcomes) == 1 + len(EXPECTED)
    assert [o.StudyInstanceUID for o in outcomes] == sorted(o.StudyInstanceUID for o in outcomes)
    converted = [o for o in outcomes if isinstance(o, ConvertedCase)]
    assert [c.StudyInstanceUID for c in converted] == [site_run["good"].StudyInstanceUID]
    assert _tree_digest(site_run["drop"]) == site_run["before"]
    index = site_run["index"]
    assert len(index.studies) == len(outcomes)
    assert {Path(s.path).name for s in index.skipped} >= {"export_notes.txt", "DICOMDIR"}


def test_converted_case_volumes_metadata_and_decoys(site_run, small_phantom):
    good = site_run["good"]
    state = site_run["state"]
    (case,) = [o for o in site_run["outcomes"] if isinstance(o, ConvertedCase)]
    assert case.ct_series == good.ct_series_uid and case.pt_series == good.pt_series_uid
    assert case.PatientID == "LEI-0001" and case.StudyDate == good.StudyDate

    ignored = {i.SeriesInstanceUID: i.why for i in case.ignored}
    assert ignored[good.pt_nac_series_uid].startswith("PET not attenuation-corrected")
    localiser = pydicom.dcmread(good.files["localizer"][0], stop_before_pixels=True)
    capture = pydicom.dcmread(good.files["secondary_capture"][0], stop_before_pixels=True)
    assert ignored[localiser.SeriesInstanceUID].startswith("localiser/topogram")
    assert ignored[capture.SeriesInstanceUID].startswith("secondary capture")
    assert len(ignored) == 3

    ct = nib.load(case.ct.path)
    assert Path(case.ct.path) == state.case_dir(case.key) / "CT.nii.gz"
    np.testing.assert_array_equal(np.asanyarray(ct.dataobj), small_phantom.ct_hu)  # Philips: reversed InstanceNumber
    pt = nib.load(case.pt.path)
    assert pt.get_data_dtype() == np.float32 and pt.shape == small_phantom.pt_bqml.shape
    np.testing.assert_allclose(np.asanyarray(pt.dataobj), small_phantom.pt_bqml, rtol=1e-3, atol=1.0)

    pm, cm = case.pt_metadata, case.ct_metadata
    assert list(pm) == [name for name, _ in PT_FIELDS] and list(cm) == [name for name, _ in CT_FIELDS]
    assert pm["RadionuclideTotalDose"] == pytest.approx(good.injected_activity_bq)
    assert pm["PatientWeight"] == pytest.approx(good.patient.weight_kg)
    assert pm["PatientSize"] == pytest.approx(good.patient.height_m)
    assert pm["PatientAge"] == good.patient.age_years and pm["PatientSex"] == good.patient.sex
    assert pm["Units"] == "BQML" and "ATTN" in pm["CorrectedImage"]
    assert pm["RadionuclideHalfLife"] == pytest.approx(6586.2)
    first_pt = pydicom.dcmread(good.files["pt"][0], stop_before_pixels=True)
    block = first_pt.private_block(0x7053, "Philips PET Private Group")
    assert pm["PhilipsSUVScaleFactor"] == pytest.approx(float(block[0x00].value))
    assert pm["PhilipsActivityConcentrationScaleFactor"] == pytest.approx(float(block[0x09].value))
    # the QIBA factor computed from the headers agrees with the vendor's (Philips style) within 1 %
    assert pm["SUVbwScaleFactorReason"] is None
    assert abs(pm["SUVbwScaleFactor"] / pm["PhilipsSUVScaleFactor"] - 1) < 0.01
    slopes = [float(pydicom.dcmread(p, stop_before_pixels=True).RescaleSlope) for p in good.files["pt"]]
    assert (pm["RescaleSlopeMin"], pm["RescaleSlopeMax"]) == (min(slopes), max(slopes))
    assert pm["RadiopharmaceuticalStartDateTime"].startswith(f"{good.StudyDate[:4]}-{good.StudyDate[4:6]}-")
    first_ct = pydicom.dcmread(good.files["ct"][0], stop_before_pixels=True)
    assert cm["KVP"] == float(first_ct.KVP) and cm["ConvolutionKernel"] == str(first_ct.ConvolutionKernel)
    assert cm["Manufacturer"] == "Philips" and cm["FilterType"] == str(first_ct.FilterType)
    assert cm["SpacingBetweenSlices"] == small_phantom.ct_geometry.slice_spacing
    assert cm["PixelSpacingRow"] == small_phantom.ct_geometry.pixel_spacing[0]
    assert cm["NumberOfSlices"] == len(good.files["ct"])
    text = json.dumps([pm, cm])  # JSON-serialisable, and nothing identifying inside
    for value in (good.StudyInstanceUID, good.PatientID, good.FrameOfReferenceUID, "2.25."):
        assert value not in text

    stored = from_jsonable(ConvertedCase, json.loads((state.case_dir(case.key) / "case.json").read_text()))
    assert stored == case
    assert case.private_review == tuple(case.private_review)

    sensitive = json.loads((state.sensitive_dir("leipzig") / f"{case.key}.json").read_text())["values"]
    for value in (good.StudyInstanceUID, good.PatientID, good.ct_series_uid, good.pt_nac_series_uid,
                  localiser.SOPInstanceUID, capture.SeriesInstanceUID, good.FrameOfReferenceUID):
        assert value in sensitive
    assert sensitive == sorted(sensitive)


def test_rerun_converts_only_what_is_new_or_changed(tmp_path, small_phantom):
    drop = tmp_path / "drop"
    a = write_study(small_phantom, drop, vendor="ge", seed=31, patient_id="A", patient_name="A", decoys=False)
    b = write_study(small_phantom, drop, vendor="siemens", seed=32, patient_id="B", patient_name="B", decoys=False)
    c = write_study(small_phantom, drop, vendor="siemens", seed=33, patient_id="C", patient_name="C", decoys=False, defect="nac-only")
    site, state = _site(drop), StatePaths(tmp_path / "state")
    first = {o.StudyInstanceUID: o for o in _ingest_site(site, state)}
    assert isinstance(first[a.StudyInstanceUID], ConvertedCase) and isinstance(first[b.StudyInstanceUID], ConvertedCase)
    assert first[c.StudyInstanceUID].reason is RejectReason.NO_AC_PET

    def stamps() -> dict[str, int]:
        # volumes and outcomes; the dot-named files beside them are the reuse checks' stat caches
        files = [*state.root.glob("cases/*/*"), *state.root.glob("sites/*/studies/*.json")]
        return {str(p): p.stat().st_mtime_ns for p in files if not p.name.startswith(".")}

    before = stamps()
    second = {o.StudyInstanceUID: o for o in _ingest_site(site, state)}
    assert second == first
    assert stamps() == before  # nothing rewritten: not a volume, not an outcome

    # one PET file of study A gets other content behind the same path
    victim = a.files["pt"][10]
    ds = pydicom.dcmread(victim)
    ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(victim, enforce_file_format=True)
    third = {o.StudyInstanceUID: o for o in _ingest_site(site, state)}
    after = stamps()
    changed = {p for p in after if after[p] != before.get(p)}
    key_a = first[a.StudyInstanceUID].key
    assert changed == {
        str(state.case_dir(key_a) / "CT.nii.gz"),
        str(state.case_dir(key_a) / "PT.nii.gz"),
        str(state.case_dir(key_a) / "case.json"),
        str(state.study_outcome("leipzig", key_a)),
    }
    assert third[a.StudyInstanceUID].fingerprint != first[a.StudyInstanceUID].fingerprint
    assert third[a.StudyInstanceUID].pt.sha256 != first[a.StudyInstanceUID].pt.sha256
    assert third[a.StudyInstanceUID].ct.sha256 == first[a.StudyInstanceUID].ct.sha256
    assert third[b.StudyInstanceUID] == first[b.StudyInstanceUID]


@pytest.mark.parametrize("damage", ["replaced-by-text", "deleted"])
def test_a_file_unreadable_at_ingest_rejects_the_study_naming_the_file(tmp_path, small_phantom, damage):
    drop = tmp_path / "drop"
    study = write_study(small_phantom, drop, vendor="siemens", seed=41, patient_id="U", patient_name="U", decoys=False)
    (record,) = index_site("leipzig", drop).studies
    broken = study.files["pt"][5]  # changed after indexing, as a transfer still running would
    if damage == "deleted":
        broken.unlink()
    else:
        broken.write_text("transfer in progress\n")
    outcome = ingest_study(record, _site(drop), StatePaths(tmp_path / "state"))
    assert isinstance(outcome, Rejection) and outcome.reason is RejectReason.UNREADABLE
    expected = "FileNotFoundError" if damage == "deleted" else "InvalidDicomError"
    assert outcome.message.startswith(f"{broken}: file of PT series {study.pt_series_uid} cannot be read ({expected}")


def test_demo_sites_become_what_their_manifest_says(demo_sites, tmp_path):
    from curation.config import load_config
    from tests.phantom_helpers import read_manifest

    config = load_config(demo_sites)
    manifest = read_manifest(demo_sites)
    state = StatePaths(tmp_path / "state")  # the shared tree stays read-only
    for site in config.sites:
        outcomes = {o.StudyInstanceUID: o for o in _ingest_site(site, state)}
        expected = {e["StudyInstanceUID"]: e["expected"] for e in manifest[site.id]}
        assert set(outcomes) == set(expected), site.id
        for uid, want in expected.items():
            got = outcomes[uid]
            assert (got.reason.value if isinstance(got, Rejection) else "case") == want, (site.id, uid, got)


def _one_converted_study(tmp_path: Path, phantom, seed: int, pseudonym: str):  # type: ignore[no-untyped-def]
    """Write, index and ingest one clean study for site leipzig: (drop, state, study record, case)."""
    drop = tmp_path / "drop"
    write_study(phantom, drop, vendor="siemens", seed=seed, patient_id=pseudonym, patient_name=pseudonym,
                decoys=False)
    state = StatePaths(tmp_path / "state")
    (study,) = index_site("leipzig", drop).studies
    case = ingest_study(study, _site(drop), state)
    assert isinstance(case, ConvertedCase)
    return drop, state, study, case


def test_a_tightened_gate_or_a_damaged_volume_redoes_the_study(tmp_path, small_phantom):
    drop, state, study, first = _one_converted_study(tmp_path, small_phantom, 43, "LEI-0043")

    # a damaged converted volume is not trusted: the study is converted again, to the same bytes
    Path(first.ct.path).write_bytes(b"not a volume")
    again = ingest_study(study, _site(drop), state)
    assert again == first
    assert hashlib.sha256(Path(first.ct.path).read_bytes()).hexdigest() == first.ct.sha256

    # the steward sets a pseudonym pattern the study does not match: re-checked, quarantined
    tightened = ingest_study(study, _site(drop, pattern=r"^VIE-\d{4}$"), state)
    assert isinstance(tightened, Rejection)
    assert tightened.reason is RejectReason.PHI_DETECTED
    assert "PatientName" in tightened.message and "LEI-0043" not in tightened.message
    assert not Path(first.ct.path).exists()  # the converted volumes of a quarantined study are removed


def test_a_study_delivered_by_two_sites_is_released_once(tmp_path, small_phantom):
    drop, state, _, first = _one_converted_study(tmp_path, small_phantom, 44, "LEI-0044")
    ct_bytes = Path(first.ct.path).read_bytes()

    (again,) = index_site("vienna", drop).studies
    second = ingest_study(again, _site(drop, site_id="vienna"), state)
    assert isinstance(second, Rejection)
    assert second.reason is RejectReason.AMBIGUOUS_SERIES
    assert "also delivered by site 'leipzig'" in second.message
    # the first site's case is untouched
    assert Path(first.ct.path).read_bytes() == ct_bytes
    assert read_record(state.study_outcome("leipzig", first.key), ConvertedCase) == first


def test_every_header_date_is_recorded_for_the_leak_scan_in_every_release_form(tmp_path, small_phantom):
    """DA values and the date part of DT values, of every series read (decoys too), nested sequences and
    private elements included, go to the study's sensitive record as a list of their own."""
    drop = tmp_path / "drop"
    study = write_study(small_phantom, drop, vendor="siemens", seed=45, patient_id="LEI-0045",
                        patient_name="LEI-0045", decoys=True)
    planted = {
        "DecayCorrectionDateTime": dt.date(2021, 3, 5),  # top level, DT
        "ContributionDateTime": dt.date(2019, 1, 1),  # in a sequence item, DT with an offset
        "private DA": dt.date(2018, 7, 7),  # a vendor's private date
        "decoy ContentDate": dt.date(2016, 5, 5),  # in a series that is not released
    }
    for path in study.files["pt"]:
        ds = pydicom.dcmread(path)
        ds.DecayCorrectionDateTime = "20210305080000"
        item = Dataset()
        item.Manufacturer = "ACME"
        item.ContributionDateTime = "20190101120000+0100"
        ds.ContributingEquipmentSequence = DicomSequence([item])
        ds.private_block(0x0041, "ACME DATES 1.0", create=True).add_new(0x01, "DA", "20180707")
        ds.save_as(path)
    localiser = pydicom.dcmread(study.files["localizer"][0])
    localiser.ContentDate = "20160505"
    localiser.save_as(study.files["localizer"][0])

    state = StatePaths(tmp_path / "state")
    (record,) = index_site("leipzig", drop).studies
    case = ingest_study(record, _site(drop), state)
    assert isinstance(case, ConvertedCase)  # dates are kept (full-dates option): the study passes

    stored = json.loads((state.sensitive_dir("leipzig") / f"{case.key}.json").read_text())
    study_date = dt.date(int(study.StudyDate[:4]), int(study.StudyDate[4:6]), int(study.StudyDate[6:]))
    for day in [study_date, *planted.values()]:
        compact, iso, serial = date_forms(day)
        assert {compact, iso, serial} <= set(stored["dates"]), day
    assert iso == "2016-05-05" and serial == str((day - dt.date(1899, 12, 30)).days)
    assert not set(stored["dates"]) & set(stored["values"])  # a kind of its own
    assert stored["dates"] == sorted(stored["dates"])

    # the leak scan's list holds them only when asked (the build asks unless dates are published as delivered)
    assert not {"20210305", "2019-01-01"} & load_sensitive_values(state.root)
    assert {"20210305", "2019-01-01", "43466"} <= load_sensitive_values(state.root, include_dates=True)


def test_optional_identity_flag_releases_a_study_without_it_and_is_audited(tmp_path, small_phantom):
    drop = tmp_path / "drop"
    write_study(small_phantom, drop, vendor="siemens", seed=45, patient_id="LEI-0045", patient_name="LEI-0045",
                decoys=False)
    for path in sorted(p for p in drop.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        del ds.PatientIdentityRemoved  # a de-identifier that does not set the flag
        ds.save_as(path)
    state = StatePaths(tmp_path / "state")
    (study,) = index_site("leipzig", drop).studies
    required = _site(drop)
    assert required.identity_removed_flag is IdentityFlagPolicy.REQUIRED  # the default
    refused = ingest_study(study, required, state)
    assert isinstance(refused, Rejection) and refused.reason is RejectReason.PHI_DETECTED
    assert "PatientIdentityRemoved" in refused.message

    optional = dataclasses.replace(required, identity_removed_flag=IdentityFlagPolicy.OPTIONAL)
    stage_required, stage_optional = IngestStage(site=required, state=state), IngestStage(site=optional, state=state)
    assert stage_required.fingerprint_parts((study,))["identity_removed_flag"] == "required"
    assert stage_optional.fingerprint_parts((study,))["identity_removed_flag"] == "optional"
    case = ingest_study(study, optional, state)  # the changed option re-checks the study
    assert isinstance(case, ConvertedCase), case
    assert stage_optional.parameters(case)["identity_removed_flag"] == "optional"
    assert stage_required.parameters(case)["identity_removed_flag"] == "required"

    # every other rule unchanged: a real PatientName still fails with the flag optional
    for path in sorted(p for p in drop.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.PatientName = "Mustermann^Erika"
        ds.save_as(path)
    (study,) = index_site("leipzig", drop).studies
    named = ingest_study(study, optional, state)
    assert isinstance(named, Rejection) and named.reason is RejectReason.PHI_DETECTED
    assert "PatientName" in named.message and "PatientIdentityRemoved" not in named.message
