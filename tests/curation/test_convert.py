"""Conversion: our NIfTI against the dcm2niix wheel (the independent oracle), the phantom truth, and the header.

The oracle compares in world coordinates: both images are brought to the same
axis order (nibabel's closest canonical, RAS+) and then CT voxels must be
identical, PET voxels equal within 1e-5 relative, and the affines equal within
1e-3 mm, for the three vendor styles and a feet-first scan.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
import pytest

from curation.convert import convert_series
from curation.errors import ConversionFailedError, GantryTiltError
from curation.model import Modality
from curation.nifti import GZIP_LEVEL
from curation.phantom import write_study

CASES = [("siemens", False), ("philips", False), ("ge", False), ("siemens", True)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, small_phantom, small_phantom_ffs):
    """For each vendor style (and a feet-first scan): the study, our CT/PT files and dcm2niix's."""
    root = tmp_path_factory.mktemp("convert")
    results = {}
    for n, (vendor, feet_first) in enumerate(CASES):
        phantom = small_phantom_ffs if feet_first else small_phantom
        study = write_study(
            phantom, root / f"drop-{n}", vendor=vendor, seed=20 + n, patient_id=f"T{n}", patient_name=f"T{n}", decoys=False
        )
        entry = {"study": study}
        for role, modality in (("ct", Modality.CT), ("pt", Modality.PT)):
            datasets = [pydicom.dcmread(p) for p in study.files[role]]
            ours = convert_series(datasets, root / f"ours-{n}" / f"{role}.nii.gz", modality=modality)
            entry[role] = (ours, _dcm2niix(study.files[role], root / f"dcm2niix-{n}-{role}"))
        results[(vendor, feet_first)] = entry
    return results


def _dcm2niix(files: tuple[Path, ...], out: Path) -> Path:
    """Run the dcm2niix wheel's binary on a copy of one series; return its single NIfTI."""
    src = out / "src"
    src.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, src / f"{i:05d}.dcm")
    subprocess.run([dcm2niix.bin, "-z", "y", "-b", "n", "-f", "ref", "-o", str(out), str(src)], check=True, capture_output=True)
    (nifti,) = sorted(out.glob("ref*.nii.gz"))
    return nifti


@pytest.mark.parametrize(("vendor", "feet_first"), CASES)
def test_ct_matches_dcm2niix_voxel_for_voxel(converted, vendor, feet_first):
    ours, reference = converted[(vendor, feet_first)]["ct"]
    a = nib.as_closest_canonical(nib.load(ours.path))
    b = nib.as_closest_canonical(nib.load(reference))
    assert a.get_data_dtype() == np.int16
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
    ours_hu = np.asanyarray(a.dataobj)
    assert ours_hu.dtype == np.int16  # no scaling in our header: the stored values are HU
    np.testing.assert_array_equal(ours_hu, b.get_fdata())  # dcm2niix may store raw + scl_inter
    assert ours_hu.min() < -900 and ours_hu.max() > 500  # air and bone: the test sees real contrast


@pytest.mark.parametrize(("vendor", "feet_first"), CASES)
def test_pet_matches_dcm2niix_within_1e5_relative(converted, vendor, feet_first):
    ours, reference = converted[(vendor, feet_first)]["pt"]
    a = nib.as_closest_canonical(nib.load(ours.path))
    b = nib.as_closest_canonical(nib.load(reference))
    assert a.get_data_dtype() == np.float32
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3)
    np.testing.assert_allclose(np.asanyarray(a.dataobj), b.get_fdata(), rtol=1e-5, atol=0)


@pytest.mark.parametrize(("vendor", "feet_first"), CASES)
def test_every_pet_slice_uses_its_own_rescale_slope(converted, vendor, feet_first):
    study = converted[(vendor, feet_first)]["study"]
    ours, _ = converted[(vendor, feet_first)]["pt"]
    img = nib.load(ours.path)
    data = np.asanyarray(img.dataobj)
    inverse = np.linalg.inv(img.affine)
    slopes = set()
    for path in study.files["pt"]:
        ds = pydicom.dcmread(path)
        slopes.add(float(ds.RescaleSlope))
        # the voxel index of this slice's first pixel, from its position (LPS -> RAS)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        i, j, k = np.rint(inverse @ [-x, -y, z, 1.0])[:3].astype(int)
        assert (i, j) in ((0, 0), (0, data.shape[1] - 1), (data.shape[0] - 1, 0), (data.shape[0] - 1, data.shape[1] - 1))
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = data[:, :, k].T  # (row, column) as DICOM has it, possibly flipped in-plane
        if i != 0:
            stored = stored[:, ::-1]
        if j != 0:
            stored = stored[::-1, :]
        np.testing.assert_allclose(stored, expected, rtol=1e-6)
    assert len(slopes) > 10  # the phantom writes a different slope on (nearly) every slice


def test_ct_equals_the_phantom_truth_whatever_the_instance_number_order(converted, small_phantom):
    # GE style writes InstanceNumber shuffled, Philips reversed: the volume must still be the phantom's
    for vendor in ("siemens", "philips", "ge"):
        ours, _ = converted[(vendor, False)]["ct"]
        img = nib.load(ours.path)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), small_phantom.ct_hu)
    ge = converted[("ge", False)]["study"]
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in ge.files["ct"]]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)


@pytest.mark.parametrize(("vendor", "feet_first"), CASES)
def test_header_has_geometry_only(converted, vendor, feet_first):
    for role in ("ct", "pt"):
        ours, _ = converted[(vendor, feet_first)][role]
        img = nib.load(ours.path)
        hdr = img.header
        for field in ("descrip", "aux_file", "intent_name", "db_name"):
            assert hdr[field].item() == b"", field
        assert len(hdr.extensions) == 0
        assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        raw = Path(ours.path).read_bytes()
        assert raw[3] & 0x08 == 0  # gzip FLG.FNAME not set: no file name inside
        assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
        assert hashlib.sha256(raw).hexdigest() == ours.sha256
        assert ours.shape == img.shape and ours.dtype == str(img.get_data_dtype())
        np.testing.assert_allclose(np.array(ours.affine), img.affine)
        study = converted[(vendor, feet_first)]["study"]
        content = gzip.decompress(raw)
        for uid in (study.StudyInstanceUID, study.ct_series_uid, study.FrameOfReferenceUID):
            assert uid.encode() not in content
        assert study.PatientID.encode() not in content[:352]  # short: voxel bytes may hold it by chance


def test_output_bytes_are_deterministic(tmp_path, converted):
    study = converted[("philips", False)]["study"]
    datasets = [pydicom.dcmread(p) for p in study.files["pt"]]
    first = convert_series(datasets, tmp_path / "a.nii.gz", modality=Modality.PT)
    second = convert_series(list(reversed(datasets)), tmp_path / "b.nii.gz", modality=Modality.PT)
    assert first.sha256 == second.sha256
    assert GZIP_LEVEL == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no temp file left


def test_hu_outside_int16_is_conversion_failed(tmp_path, converted):
    study = converted[("siemens", False)]["study"]
    datasets = [pydicom.dcmread(p) for p in study.files["ct"]]
    datasets[7].RescaleIntercept = "40000"  # in memory only: the source file is untouched
    label = re.escape(f"CT series {study.ct_series_uid} ('{datasets[0].SeriesDescription}')")
    with pytest.raises(ConversionFailedError, match=rf"{label}: slice \d+: HU range \[4\d+, 4\d+\] does not fit int16"):
        convert_series(datasets, tmp_path / "ct.nii.gz", modality=Modality.CT)
    assert not (tmp_path / "ct.nii.gz").exists()
    assert list(tmp_path.iterdir()) == []


def test_undecodable_pixel_data_is_conversion_failed(tmp_path, converted):
    study = converted[("ge", False)]["study"]
    datasets = [pydicom.dcmread(p) for p in study.files["pt"]]
    datasets[3].PixelData = datasets[3].PixelData[:100]
    with pytest.raises(ConversionFailedError, match=r"PT series .*pixel data cannot be decoded"):
        convert_series(datasets, tmp_path / "pt.nii.gz", modality=Modality.PT)
    assert list(tmp_path.iterdir()) == []


def test_gantry_tilt_is_refused_not_sheared(tmp_path, small_phantom):
    study = write_study(small_phantom, tmp_path / "drop", vendor="siemens", seed=3, patient_id="T", patient_name="T",
                        decoys=False, defect="gantry-tilt")
    datasets = [pydicom.dcmread(p) for p in study.files["ct"]]
    with pytest.raises(GantryTiltError, match=r"gantry tilt about 7\.00 degrees"):
        convert_series(datasets, tmp_path / "ct.nii.gz", modality=Modality.CT)
    assert not (tmp_path / "ct.nii.gz").exists()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits_stored", [16, 12, 10])
def test_native_pixels_are_pydicoms_pixel_array(converted, signed, bits_stored):
    from curation.convert import native_pixels

    study = converted[("siemens", False)]["study"]
    ds = pydicom.dcmread(study.files["ct"][3])
    rng = np.random.default_rng(bits_stored + signed)
    ds.PixelData = rng.integers(0, 1 << 16, ds.Rows * ds.Columns, dtype=np.uint16).tobytes()  # high bits set too
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = int(signed), bits_stored, bits_stored - 1
    fast = native_pixels(ds, (ds.Rows, ds.Columns))
    assert fast is not None and fast.dtype == (np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(fast, ds.pixel_array)


def test_native_pixels_leave_other_encodings_to_pydicom(converted):
    from curation.convert import native_pixels

    study = converted[("siemens", False)]["study"]
    ds = pydicom.dcmread(study.files["ct"][3])
    shape = (ds.Rows, ds.Columns)
    ds.PixelData = ds.PixelData[:-2]  # a length that does not match Rows x Columns
    assert native_pixels(ds, shape) is None
    ds = pydicom.dcmread(study.files["ct"][3])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    assert native_pixels(ds, shape) is None


@pytest.mark.parametrize(
    ("modality", "signed", "bits_stored", "slope"),
    [(Modality.CT, False, 12, 1.0), (Modality.CT, True, 16, 1.0), (Modality.CT, True, 12, 1.0),
     (Modality.CT, False, 16, 0.5), (Modality.PT, False, 16, None), (Modality.PT, True, 10, None)],
)
def test_located_pixel_data_gives_the_bytes_of_the_whole_read(
    tmp_path, converted, monkeypatch, modality, signed, bits_stored, slope
):
    """Pixel data read straight into the volume (read_dicom_header) gives the same .nii.gz as datasets read whole."""
    import curation.dicomfile as dicomfile
    from curation.convert import encode_series

    monkeypatch.setattr(dicomfile, "HEADER_READ_BYTES", 4096)  # the small phantom's slices are not read at once
    study = converted[("siemens", False)]["study"]
    role = "ct" if modality is Modality.CT else "pt"
    rng = np.random.default_rng(bits_stored + 2 * signed)
    paths = []
    for n, source in enumerate(study.files[role]):
        ds = pydicom.dcmread(source)
        ds.PixelData = rng.integers(0, 1 << 16, ds.Rows * ds.Columns, dtype=np.uint16).tobytes()  # high bits too
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = int(signed), bits_stored, bits_stored - 1
        if modality is Modality.CT:
            # every stored value lands in int16's range
            ds.RescaleSlope, ds.RescaleIntercept = slope, (-1024 if bits_stored < 16 else 0) if signed else -4096
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    read = [dicomfile.read_dicom_header(p) for p in paths]
    assert all(location is not None for _, location in read)
    located = encode_series([ds for ds, _ in read], modality=modality, pixel_data=[loc for _, loc in read])
    whole = encode_series([pydicom.dcmread(p) for p in paths], modality=modality)
    assert located.sha256 == whole.sha256 and located.affine == whole.affine


def test_a_ct_slice_out_of_int16_is_refused_when_located(tmp_path, converted, monkeypatch):
    import curation.dicomfile as dicomfile
    from curation.convert import encode_series

    monkeypatch.setattr(dicomfile, "HEADER_READ_BYTES", 4096)
    study = converted[("siemens", False)]["study"]
    paths = []
    for n, source in enumerate(study.files["ct"]):
        ds = pydicom.dcmread(source)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 16, 15, 0, 0
        if n == 3:
            ds.PixelData = np.full(ds.Rows * ds.Columns, 40000, dtype=np.uint16).tobytes()
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    read = [dicomfile.read_dicom_header(p) for p in paths]
    with pytest.raises(ConversionFailedError, match=r"HU range \[.*40000\] does not fit int16"):
        encode_series([ds for ds, _ in read], modality=Modality.CT, pixel_data=[loc for _, loc in read])
