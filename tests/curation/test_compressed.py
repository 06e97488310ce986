"""Compressed DICOM: every lossless transfer syntax gives the uncompressed voxels, dcm2niix agrees; lossy is caught.

Each vendor style of the phantom is re-encoded (curation.phantom.encode) to RLE,
JPEG-LS, JPEG 2000, HTJ2K, JPEG Lossless SV1 and Deflated.  A slab of the
small phantom's slices (16 CT, 12 PET) keeps the test short; the reference is
the same slab written uncompressed.  The NIfTI of every encoding must be
byte-identical to the reference's, and equal to what dcm2niix makes of the same
compressed files (world coordinates, as in test_convert.py).  dcm2niix (the
wheel's build) refuses Deflated Explicit VR Little Endian; that case is checked
against the uncompressed conversion only, and the refusal itself is asserted.
"""

from __future__ import annotations

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

from curation.compression import lossy_compression
from curation.config import LossyPolicy, MissingHeadPolicy, SiteConfig
from curation.convert import convert_series
from curation.dicomindex import index_site
from curation.errors import ConversionFailedError, RejectReason
from curation.ingest import ingest_study
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import ConvertedCase, Modality, Rejection
from curation.phantom import write_study
from curation.phantom.encode import ENCODINGS, LOSSLESS, recode_study
from curation.state import StatePaths

VENDORS = ("siemens", "philips", "ge")
SLABS = {"ct": slice(52, 68), "pt": slice(44, 56)}
MODALITY = {"ct": Modality.CT, "pt": Modality.PT}
#: what the dcm2niix wheel cannot read (it says so and writes nothing)
DCM2NIIX_CANNOT = {"deflated": "Unsupported transfer syntax '1.2.840.10008.1.2.1.99'"}


def _dcm2niix(files, out: Path) -> subprocess.CompletedProcess:
    src = out / "src"
    src.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, src / f"{i:05d}.dcm")
    return subprocess.run([dcm2niix.bin, "-z", "y", "-b", "n", "-f", "ref", "-o", str(out), str(src)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, small_phantom):
    """vendor -> {"study", "explicit": {role: ImageFile}, encoding: {role: (files, ImageFile)}}."""
    root = tmp_path_factory.mktemp("compressed")
    out = {}
    for n, vendor in enumerate(VENDORS):
        study = write_study(small_phantom, root / vendor / "source", vendor=vendor, seed=40 + n,
                            patient_id=f"C{n}", patient_name=f"C{n}", decoys=False)
        entry = {"study": study}
        for encoding in ("explicit", *LOSSLESS):
            files = recode_study(study, root / vendor / encoding, encoding, slabs=SLABS)
            entry[encoding] = {
                role: (files[role], convert_series([pydicom.dcmread(p) for p in files[role]],
                                                   root / vendor / f"{encoding}-{role}.nii.gz", modality=MODALITY[role]))
                for role in ("ct", "pt")
            }
        out[vendor] = entry
    return out


@pytest.mark.parametrize("encoding", LOSSLESS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_lossless_encoding_gives_the_uncompressed_voxels(encoded, vendor, encoding):
    syntax, _ = ENCODINGS[encoding]
    for role in ("ct", "pt"):
        files, ours = encoded[vendor][encoding][role]
        assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files} == {syntax}
        _, reference = encoded[vendor]["explicit"][role]
        assert ours.shape == reference.shape and ours.shape[2] == len(files)
        np.testing.assert_array_equal(np.asanyarray(nib.load(ours.path).dataobj),
                                      np.asanyarray(nib.load(reference.path).dataobj))
        assert ours.sha256 == reference.sha256  # same voxels, same affine, same bytes


@pytest.mark.parametrize("encoding", LOSSLESS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_lossless_encoding_matches_dcm2niix_on_the_same_files(encoded, vendor, encoding, tmp_path):
    for role in ("ct", "pt"):
        files, ours = encoded[vendor][encoding][role]
        run = _dcm2niix(files, tmp_path / role)
        if encoding in DCM2NIIX_CANNOT:
            assert DCM2NIIX_CANNOT[encoding] in run.stdout + run.stderr
            assert not list((tmp_path / role).glob("ref*.nii*"))
            continue
        assert run.returncode == 0, run.stdout + run.stderr
        (reference,) = sorted((tmp_path / role).glob("ref*.nii.gz"))
        a = nib.as_closest_canonical(nib.load(ours.path))
        b = nib.as_closest_canonical(nib.load(reference))
        assert a.shape == b.shape
        np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
        if role == "ct":
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), b.get_fdata())
        else:
            np.testing.assert_allclose(np.asanyarray(a.dataobj), b.get_fdata(), rtol=1e-5, atol=0)
    assert np.asanyarray(nib.load(encoded[vendor][encoding]["ct"][1].path).dataobj).max() > 500  # real contrast


def _site(dicom_dir: Path, lossy: LossyPolicy) -> SiteConfig:
    return SiteConfig(
        id="lossy", dicom_dir=dicom_dir, segmentations_dir=dicom_dir.parent / "seg", lesions_dir=None,
        license="CC-BY-4.0", deface=False, indication="", clinical_sheet=None, pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD, lossy=lossy,
    )


@pytest.fixture(scope="module")
def lossy_drops(tmp_path_factory, small_phantom):
    """A JPEG 2000 lossy drop (header says 01, ratio, method) and a JPEG-LS near-lossless one (header silent)."""
    root = tmp_path_factory.mktemp("lossy")
    study = write_study(small_phantom, root / "source", vendor="ge", seed=7, patient_id="L1", patient_name="L1",
                        decoys=False)
    drops = {}
    for encoding in ("jpeg-2000-lossy", "jpeg-ls-near-lossless"):
        recode_study(study, root / encoding, encoding, slabs=SLABS)
        (study_record,) = index_site("lossy", root / encoding).studies
        drops[encoding] = (root / encoding, study_record)
    return drops


@pytest.mark.parametrize(
    ("encoding", "evidence"),
    [
        ("jpeg-2000-lossy", r"has LossyImageCompression '01'"),
        ("jpeg-ls-near-lossless", r"is stored as JPEG-LS Lossy \(Near-Lossless\) Image Compression \(1\.2\.840\.10008\.1\.2\.4\.81\), a lossy coding"),
    ],
)
def test_a_lossy_series_is_rejected_by_default(lossy_drops, tmp_path, encoding, evidence):
    drop, study = lossy_drops[encoding]
    outcome = ingest_study(study, _site(drop, LossyPolicy.REJECT), StatePaths(tmp_path / "state"))
    assert isinstance(outcome, Rejection)
    assert outcome.reason == RejectReason.LOSSY_COMPRESSION
    assert outcome.message.startswith("CT series ")  # the CT is checked first
    assert re.search(rf"lossy-compressed: instance 0 \(InstanceNumber \d+\) {evidence}; site 'lossy' has lossy = 'reject'",
                     outcome.message), outcome.message
    assert not (StatePaths(tmp_path / "state").case_dir(study.key) / "CT.nii.gz").exists()


def test_a_lossy_series_is_converted_with_accept_and_its_metadata_records_the_compression(lossy_drops, tmp_path):
    drop, study = lossy_drops["jpeg-2000-lossy"]
    outcome = ingest_study(study, _site(drop, LossyPolicy.ACCEPT), StatePaths(tmp_path / "state"))
    assert isinstance(outcome, ConvertedCase), outcome
    assert [name for name, _ in CT_FIELDS][-3:] == ["LossyImageCompression", "LossyImageCompressionRatio",
                                                   "LossyImageCompressionMethod"]
    assert [name for name, _ in PT_FIELDS][-3:] == [name for name, _ in CT_FIELDS][-3:]
    for role, metadata in (("CT", outcome.ct_metadata), ("PT", outcome.pt_metadata)):
        series = next(s for s in study.series if s.Modality == role)
        ratios = [float(pydicom.dcmread(p, stop_before_pixels=True).LossyImageCompressionRatio) for p in series.files]
        assert metadata["LossyImageCompression"] == "01"
        assert metadata["LossyImageCompressionMethod"] == "ISO_15444_1"
        assert metadata["LossyImageCompressionRatio"] == pytest.approx(np.mean(ratios), abs=1e-3)
        assert 5 < metadata["LossyImageCompressionRatio"] < 20  # encoded at 10:1
    # the voxels are the decoded lossy pixels: close to, but not, the lossless ones
    assert outcome.ct.shape == (64, 64, 16)


def test_accept_records_a_header_silent_near_lossless_series_by_its_transfer_syntax(lossy_drops, tmp_path):
    drop, study = lossy_drops["jpeg-ls-near-lossless"]
    outcome = ingest_study(study, _site(drop, LossyPolicy.ACCEPT), StatePaths(tmp_path / "state"))
    assert isinstance(outcome, ConvertedCase), outcome
    assert outcome.ct_metadata["LossyImageCompression"] == "01"
    assert outcome.ct_metadata["LossyImageCompressionMethod"] == "ISO_14495_1"
    assert outcome.ct_metadata["LossyImageCompressionRatio"] is None  # never guessed


def test_changing_the_lossy_option_redoes_a_rejected_study(lossy_drops, tmp_path):
    drop, study = lossy_drops["jpeg-2000-lossy"]
    state = StatePaths(tmp_path / "state")
    assert isinstance(ingest_study(study, _site(drop, LossyPolicy.REJECT), state), Rejection)
    assert isinstance(ingest_study(study, _site(drop, LossyPolicy.ACCEPT), state), ConvertedCase)
    assert isinstance(ingest_study(study, _site(drop, LossyPolicy.REJECT), state), Rejection)


def test_lossless_series_are_recorded_as_not_lossy(encoded):
    for encoding in LOSSLESS:
        files, _ = encoded["ge"][encoding]["ct"]
        finding = lossy_compression([pydicom.dcmread(p, stop_before_pixels=True) for p in files])
        assert finding.fields() == {"LossyImageCompression": "00", "LossyImageCompressionRatio": None,
                                    "LossyImageCompressionMethod": None}


def test_a_once_lossy_image_stored_uncompressed_is_lossy(encoded):
    files, _ = encoded["siemens"]["explicit"]["pt"]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert not lossy_compression(datasets).lossy
    datasets[5].LossyImageCompression = "01"
    datasets[5].LossyImageCompressionRatio = ["4.5", "12"]  # two successive compressions
    finding = lossy_compression(datasets)
    assert finding.lossy and finding.ratio == 12.0 and finding.methods == ()
    assert finding.evidence.startswith("instance 5 (InstanceNumber ")


# ---------------------------------------------------------------------------
# pydicom's own compressed test files (those shipped in the wheel; the others are
# downloaded on demand, which this machine cannot)


def _series_of(name: str, count: int = 3) -> list[pydicom.Dataset]:
    """``count`` copies of one pydicom test file as slices 2.5 mm apart (headers only changed)."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not in the installed pydicom wheel"
    out = []
    for k in range(count):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = ds.get("PixelSpacing") or [1.0, 1.0]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_pydicom_compressed_files_convert_to_the_uncompressed_twin(tmp_path, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about these files' odd headers
        twin = convert_series(_series_of("MR_small.dcm"), tmp_path / "twin.nii.gz", modality=Modality.CT)
        ours = convert_series(_series_of(name), tmp_path / "ours.nii.gz", modality=Modality.CT)
    assert ours.sha256 == twin.sha256
    assert np.ptp(np.asanyarray(nib.load(ours.path).dataobj)) > 100


def test_pydicom_jpeg_2000_ct_whose_codestream_disagrees_on_the_sign_follows_pixel_representation(tmp_path):
    # The header says signed 13-bit (PixelRepresentation 1), the J2K codestream unsigned.  DICOM
    # says PixelRepresentation decides; pydicom follows it, dcm2niix follows the codestream, so the
    # two differ by exactly 2**13 where the stored value is negative and agree everywhere else.
    datasets = _series_of("J2K_pixelrep_mismatch.dcm")
    assert (datasets[0].PixelRepresentation, datasets[0].BitsStored) == (1, 13)
    assert not lossy_compression(datasets).lossy  # JPEG 2000 Lossless Only
    ours = convert_series(datasets, tmp_path / "ours.nii.gz", modality=Modality.CT)
    for k, ds in enumerate(datasets):
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    run = _dcm2niix([tmp_path / f"{k}.dcm" for k in range(3)], tmp_path / "d2n")
    assert run.returncode == 0, run.stdout
    (reference,) = sorted((tmp_path / "d2n").glob("ref*.nii.gz"))
    a = nib.as_closest_canonical(nib.load(ours.path))
    b = nib.as_closest_canonical(nib.load(reference))
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
    hu = np.asanyarray(a.dataobj).astype(np.int32)
    difference = b.get_fdata() - hu
    assert set(np.unique(difference)) == {0.0, 2.0**13}
    np.testing.assert_array_equal(difference != 0, hu < 0)  # RescaleIntercept 0: negative HU = negative stored
    assert hu.min() == -2000 and hu.max() < 2000  # padding and tissue, not 6192


def test_pydicom_lossy_jpeg_2000_ct_is_lossy_and_converts(tmp_path):
    datasets = _series_of("693_J2KI.dcm")
    finding = lossy_compression(datasets)
    assert finding.lossy and finding.evidence.endswith("has LossyImageCompression '01'")
    assert finding.fields()["LossyImageCompression"] == "01"
    ours = convert_series(datasets, tmp_path / "ours.nii.gz", modality=Modality.CT)
    assert ours.shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("name", "method"),
    [("JPEGLSNearLossless_16.dcm", "ISO_14495_1"), ("JPGExtended.dcm", "ISO_10918_1"), ("SC_rgb_jpeg_dcmtk.dcm", "ISO_10918_1")],
)
def test_pydicom_lossy_transfer_syntaxes_are_lossy(name, method):
    ds = pydicom.dcmread(get_testdata_file(name))
    finding = lossy_compression([ds])
    assert finding.lossy and method in finding.methods


def test_pydicom_jpeg_lossless_sv1_decodes_and_a_colour_image_is_conversion_failed(tmp_path):
    datasets = _series_of("SC_rgb_jpeg_gdcm.dcm")
    assert str(datasets[0].file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.70"
    assert datasets[0].pixel_array.shape == (100, 100, 3)  # GDCM decodes SV1
    with pytest.raises(ConversionFailedError, match=r"pixel array has shape \(100, 100, 3\), expected \(100, 100\)"):
        convert_series(datasets, tmp_path / "rgb.nii.gz", modality=Modality.CT)
