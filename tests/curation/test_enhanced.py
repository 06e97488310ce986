"""Enhanced and Legacy Converted Enhanced CT/PET: the same geometry QA, rescale and voxels as single-frame series.

Each phantom vendor style is written as one Legacy Converted Enhanced CT and
one PET object per series (highdicom), uncompressed and JPEG 2000 lossless.  A
slab of the small phantom (16 CT, 12 PET slices) keeps the test short; the
reference is the same slab as single-frame files.  dcm2niix reads the same
multi-frame files as the oracle.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from anonymization.gate import check_datasets
from curation.config import MissingHeadPolicy, SiteConfig
from curation.convert import convert_series
from curation.dicomindex import index_site
from curation.errors import (
    ConversionFailedError,
    InconsistentOrientationError,
    MissingSlicesError,
    NoCTError,
)
from curation.frames import (
    ENHANCED_PET_IMAGE_STORAGE,
    FrameView,
    expand_frames,
    first_frame_attributes,
)
from curation.ingest import ingest_study
from curation.model import ConvertedCase, Modality
from curation.phantom import write_study
from curation.phantom.encode import legacy_enhanced_study, recode_study
from curation.select import select_series
from curation.state import StatePaths

VENDORS = ("siemens", "philips", "ge")
SLABS = {"ct": slice(52, 68), "pt": slice(44, 56)}
MODALITY = {"ct": Modality.CT, "pt": Modality.PT}
LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"
LEGACY_PET = "1.2.840.10008.5.1.4.1.1.128.1"
SYNTAXES = {"explicit": "1.2.840.10008.1.2.1", "jpeg-2000": JPEG2000Lossless}
#: (vendor, syntax, role) whose frames dcm2niix v1.0.20260724 stacks in reverse while writing the
#: affine of the right order (measured; ours equals the single-frame conversion in every case)
DCM2NIIX_REVERSES = {("siemens", "jpeg-2000", "ct"), ("ge", "jpeg-2000", "ct"), ("siemens", "jpeg-2000", "pt"),
                     ("ge", "jpeg-2000", "pt")}
#: ... and which it stacks in neither order (its values oracle is the single-frame conversion only)
DCM2NIIX_SCRAMBLES = {("philips", "jpeg-2000", "pt")}


def _site(dicom_dir: Path) -> SiteConfig:
    return SiteConfig(
        id="enh", dicom_dir=dicom_dir, segmentations_dir=dicom_dir.parent / "seg", lesions_dir=None,
        license="CC-BY-4.0", deface=False, indication="", clinical_sheet=None, pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, small_phantom):
    """vendor -> {"single": drop, syntax: drop, "files": {syntax: {role: path}}, "ref": {role: ImageFile}}."""
    root = tmp_path_factory.mktemp("enhanced")
    out = {}
    for n, vendor in enumerate(VENDORS):
        study = write_study(small_phantom, root / vendor / "source", vendor=vendor, seed=60 + n,
                            patient_id=f"E{n}", patient_name=f"E{n}^", decoys=False)
        single = recode_study(study, root / vendor / "single", "explicit", slabs=SLABS)
        entry = {
            "study": study,
            "single": root / vendor / "single",
            "ref": {role: convert_series([pydicom.dcmread(p) for p in single[role]],
                                         root / vendor / f"single-{role}.nii.gz", modality=MODALITY[role])
                    for role in ("ct", "pt")},
            "files": {},
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom's notes on the phantom's optional attributes
            for name, syntax in SYNTAXES.items():
                entry["files"][name] = legacy_enhanced_study(study, root / vendor / name, transfer_syntax=syntax,
                                                             slabs=SLABS)
                entry[name] = root / vendor / name
        out[vendor] = entry
    return out


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("vendor", VENDORS)
def test_legacy_converted_enhanced_gives_the_single_frame_voxels(legacy, vendor, syntax, tmp_path):
    for role, sop_class in (("ct", LEGACY_CT), ("pt", LEGACY_PET)):
        ds = pydicom.dcmread(legacy[vendor]["files"][syntax][role])
        assert (ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID)) == (sop_class, SYNTAXES[syntax])
        assert int(ds.NumberOfFrames) == SLABS[role].stop - SLABS[role].start
        ours = convert_series([ds], tmp_path / f"{role}.nii.gz", modality=MODALITY[role])
        reference = legacy[vendor]["ref"][role]
        np.testing.assert_array_equal(np.asanyarray(nib.load(ours.path).dataobj),
                                      np.asanyarray(nib.load(reference.path).dataobj))
        assert ours.sha256 == reference.sha256


def _dcm2niix_on(files, out: Path) -> nib.Nifti1Image:
    src = out / "src"
    src.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, src / f"{i:05d}.dcm")
    run = subprocess.run([dcm2niix.bin, "-z", "y", "-b", "n", "-f", "ref", "-o", str(out), str(src)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    (reference,) = sorted(out.glob("ref*.nii.gz"))
    return nib.as_closest_canonical(nib.load(reference))


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("vendor", VENDORS)
def test_legacy_converted_enhanced_ct_matches_dcm2niix_on_the_same_file(legacy, vendor, syntax, tmp_path):
    ours = convert_series([pydicom.dcmread(legacy[vendor]["files"][syntax]["ct"])], tmp_path / "ct.nii.gz",
                          modality=Modality.CT)
    a = nib.as_closest_canonical(nib.load(ours.path))
    b = _dcm2niix_on([legacy[vendor]["files"][syntax]["ct"]], tmp_path / "d2n")
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
    hu = np.asanyarray(a.dataobj)
    if (vendor, syntax, "ct") not in DCM2NIIX_REVERSES:
        np.testing.assert_array_equal(hu, b.get_fdata())
    else:  # a dcm2niix defect: its voxels are ours flipped in z
        assert not np.array_equal(hu, b.get_fdata())
        np.testing.assert_array_equal(hu, b.get_fdata()[:, :, ::-1])


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("vendor", VENDORS)
def test_legacy_converted_enhanced_pet_matches_dcm2niix(legacy, vendor, syntax, tmp_path):
    # dcm2niix (v1.0.20260724) does not apply each frame's own RescaleSlope of a multi-frame PET
    # (each of its slices is ours times a factor that is not 1): the value oracle is dcm2niix on the
    # same slab as single-frame files; on the multi-frame file it must agree in geometry, and slice
    # by slice up to that one factor.
    ours = convert_series([pydicom.dcmread(legacy[vendor]["files"][syntax]["pt"])], tmp_path / "pt.nii.gz",
                          modality=Modality.PT)
    a = nib.as_closest_canonical(nib.load(ours.path))
    bq = np.asanyarray(a.dataobj).astype(np.float64)
    single = sorted(p for p in legacy[vendor]["single"].rglob("*") if p.is_file()
                    and pydicom.dcmread(p, stop_before_pixels=True).Modality == "PT")
    b = _dcm2niix_on(single, tmp_path / "single")
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
    np.testing.assert_allclose(bq, b.get_fdata(), rtol=1e-5, atol=0)
    c = _dcm2niix_on([legacy[vendor]["files"][syntax]["pt"]], tmp_path / "multi")
    np.testing.assert_allclose(a.affine, c.affine, rtol=0, atol=1e-3)
    theirs = c.get_fdata()
    if (vendor, syntax, "pt") in DCM2NIIX_REVERSES:
        theirs = theirs[:, :, ::-1]
    if (vendor, syntax, "pt") in DCM2NIIX_SCRAMBLES:
        assert not any(np.allclose(t, bq, rtol=1e-2) for t in (theirs, theirs[:, :, ::-1]))
        return
    for k in range(bq.shape[2]):
        factor = theirs[:, :, k].sum() / bq[:, :, k].sum()
        np.testing.assert_allclose(theirs[:, :, k], factor * bq[:, :, k], rtol=1e-4, atol=1e-3)


def test_every_frame_uses_its_own_rescale_slope(legacy):
    ds = pydicom.dcmread(legacy["philips"]["files"]["explicit"]["pt"])
    slopes = [float(item.PixelValueTransformationSequence[0].RescaleSlope)
              for item in ds.PerFrameFunctionalGroupsSequence]
    assert len(set(slopes)) == len(slopes)  # every frame has its own slope ...
    frames = expand_frames([ds], series_label="PT")
    assert [float(f.RescaleSlope) for f in frames] == slopes  # ... and its view carries it
    assert all(isinstance(f, FrameView) for f in frames)
    np.testing.assert_array_equal(frames[3].pixel_array, ds.pixel_array[3])


def test_frame_views_flatten_the_functional_groups(legacy):
    ds = pydicom.dcmread(legacy["ge"]["files"]["explicit"]["ct"])
    frames = expand_frames([ds], series_label="CT")
    positions = [[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                 for item in ds.PerFrameFunctionalGroupsSequence]
    assert [[float(v) for v in f.ImagePositionPatient] for f in frames] == positions
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert frames[0].PixelSpacing == shared.PixelMeasuresSequence[0].PixelSpacing
    assert frames[0].ImageOrientationPatient == shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert frames[0].KVP == shared.UnassignedSharedConvertedAttributesSequence[0].KVP  # legacy: unassigned attributes
    assert "PerFrameFunctionalGroupsSequence" not in frames[0] and "PixelData" not in frames[0]
    assert expand_frames(frames, series_label="CT") == frames  # views are single-frame already


def test_a_missing_frame_position_is_missing_slices(legacy, tmp_path):
    ds = pydicom.dcmread(legacy["siemens"]["files"]["explicit"]["ct"])
    items = ds.PerFrameFunctionalGroupsSequence
    by_z = sorted(range(len(items)), key=lambda k: float(items[k].PlanePositionSequence[0].ImagePositionPatient[2]))
    # a frame moved onto the position of its neighbour: two frames at one place, as a broken export leaves it
    items[by_z[5]].PlanePositionSequence[0].ImagePositionPatient = copy.deepcopy(
        items[by_z[6]].PlanePositionSequence[0].ImagePositionPatient)
    with pytest.raises(MissingSlicesError, match=r"two slices at the same position"):
        convert_series([ds], tmp_path / "ct.nii.gz", modality=Modality.CT)
    assert not (tmp_path / "ct.nii.gz").exists()


def test_a_frame_with_another_orientation_is_inconsistent_orientation(legacy, tmp_path):
    ds = pydicom.dcmread(legacy["siemens"]["files"]["explicit"]["pt"])
    tilted = pydicom.Dataset()
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.98480775, -0.17364818]
    ds.PerFrameFunctionalGroupsSequence[4].PlaneOrientationSequence = pydicom.Sequence([tilted])
    with pytest.raises(InconsistentOrientationError, match=r"more than one ImageOrientationPatient.*slice 4 "):
        convert_series([ds], tmp_path / "pt.nii.gz", modality=Modality.PT)


def test_number_of_frames_must_match_the_per_frame_groups(legacy, tmp_path):
    ds = pydicom.dcmread(legacy["ge"]["files"]["explicit"]["pt"])
    del ds.PerFrameFunctionalGroupsSequence[-1]
    with pytest.raises(ConversionFailedError, match=r"NumberOfFrames is 12 but PerFrameFunctionalGroupsSequence has 11 item"):
        convert_series([ds], tmp_path / "pt.nii.gz", modality=Modality.PT)


@pytest.mark.parametrize("vendor", VENDORS)
def test_ingest_of_a_legacy_converted_study_equals_the_single_frame_ingest(legacy, vendor, tmp_path):
    outcomes = {}
    for drop in ("single", "jpeg-2000"):
        index = index_site("enh", legacy[vendor][drop])
        assert index.skipped == ()
        (study,) = index.studies
        if drop != "single":
            classes = {s.Modality: (s.SOPClassUID, len(s.files), s.Units, s.CorrectedImage) for s in study.series}
            assert classes["CT"][:2] == (LEGACY_CT, 1)
            assert classes["PT"][:3] == (LEGACY_PET, 1, "BQML")  # Units from the shared functional groups
            assert "ATTN" in classes["PT"][3]
        outcomes[drop] = ingest_study(study, _site(legacy[vendor][drop]), StatePaths(tmp_path / drop))
    single, multi = outcomes["single"], outcomes["jpeg-2000"]
    assert isinstance(single, ConvertedCase) and isinstance(multi, ConvertedCase), (single, multi)
    assert (multi.ct.sha256, multi.pt.sha256) == (single.ct.sha256, single.pt.sha256)
    assert multi.ct_metadata == single.ct_metadata
    assert multi.pt_metadata == single.pt_metadata
    assert multi.pt_metadata["RescaleSlopeMin"] < multi.pt_metadata["RescaleSlopeMax"]


def test_an_enhanced_pet_states_corrections_as_flags_and_units_as_rescale_type(legacy):
    # Enhanced PET keeps no CorrectedImage or Units: AttenuationCorrected etc. and the frames' RescaleType
    ds = pydicom.dcmread(legacy["siemens"]["files"]["explicit"]["pt"])
    ds.SOPClassUID = ENHANCED_PET_IMAGE_STORAGE
    unassigned = ds.SharedFunctionalGroupsSequence[0].UnassignedSharedConvertedAttributesSequence[0]
    del unassigned.Units, unassigned.CorrectedImage
    ds.AttenuationCorrected, ds.DecayCorrected, ds.ScatterCorrected, ds.RandomsCorrected = "YES", "YES", "NO", "YES"
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelValueTransformationSequence[0].RescaleType = "BQML"
    first = first_frame_attributes(ds)
    assert list(first.CorrectedImage) == ["ATTN", "DECY", "RAN"]
    assert first.Units == "BQML"
    ds.AttenuationCorrected = "NO"
    assert "ATTN" not in first_frame_attributes(ds).CorrectedImage
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelValueTransformationSequence[0].RescaleType = "US"  # unspecified: no units
    assert "Units" not in first_frame_attributes(ds)


def test_the_gate_finds_an_identifier_inside_a_per_frame_functional_group(legacy):
    ds = pydicom.dcmread(legacy["philips"]["files"]["explicit"]["ct"])
    assert not check_datasets([ds]).findings
    planted = ds.PerFrameFunctionalGroupsSequence[7].UnassignedPerFrameConvertedAttributesSequence[0]
    planted.OperatorsName = "Muster^Erika"
    findings = check_datasets([ds]).findings
    assert [f.keyword for f in findings] == ["OperatorsName"]


# ---------------------------------------------------------------------------
# pydicom's multi-frame and deflated test files through the index and selection


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("examples_ybr_color.dcm", r"Modality 'US' is neither CT nor PT"),  # 30 frames, JPEG Baseline
        ("SC_rgb_rle_2frame.dcm", r"secondary capture"),  # 2 frames, RLE
        ("rtdose.dcm", r"Modality 'RTDOSE' is neither CT nor PT"),  # 15 frames, GridFrameOffsetVector
        ("image_dfl.dcm", r"secondary capture"),  # Deflated Explicit VR Little Endian
    ],
)
def test_pydicom_multi_frame_and_deflated_files_are_indexed_and_are_decoys(tmp_path, name, why):
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copyfile(get_testdata_file(name), drop / "object")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = index_site("pydicom", drop)
    assert index.skipped == ()  # not mistaken for a truncated or non-DICOM file
    (study,) = index.studies
    (series,) = study.series
    assert series.SOPClassUID == str(pydicom.dcmread(drop / "object", stop_before_pixels=True).SOPClassUID)
    with pytest.raises(NoCTError, match=rf"series {re.escape(series.SeriesInstanceUID)} .*: {why}"):
        select_series(study)


def test_a_truncated_deflated_file_is_skipped(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    (drop / "cut").write_bytes(data[: len(data) // 2])
    index = index_site("pydicom", drop)
    assert index.studies == ()
    (skipped,) = index.skipped
    assert "truncated" in skipped.why
