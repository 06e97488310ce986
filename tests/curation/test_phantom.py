"""The phantom sites: truthful DICOM geometry, exact pixel values, decoys, defects, anatomy."""

from __future__ import annotations

import filecmp
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from scipy import ndimage

from curation.config import load_config
from curation.phantom import (
    DEFECTS,
    EXPECTED_REASON,
    PLANTED_PHI,
    Phantom,
    make_phantom,
    moose_label_table,
    release_label_table,
    write_lesion,
    write_segmentations,
    write_study,
)
from tests.phantom_helpers import read_manifest


def _read(paths) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _by_position(datasets: list[pydicom.Dataset], normal: np.ndarray) -> list[pydicom.Dataset]:
    return sorted(datasets, key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))


def _world_z(phantom: Phantom) -> np.ndarray:
    """LPS z of every CT slice (the grids are axial)."""
    geo = phantom.ct_geometry
    return np.array([geo.position(k)[2] for k in range(geo.slices)])


# ---------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("feet_first", [False, True])
def test_affines_map_indices_to_the_dicom_positions(feet_first: bool) -> None:
    phantom = make_phantom(size="small", feet_first=feet_first)
    for geo in (phantom.ct_geometry, phantom.pt_geometry):
        lps = geo.affine_lps()
        for k in (0, 7, geo.slices - 1):
            np.testing.assert_allclose(lps @ [0, 0, k, 1], [*geo.position(k), 1.0])
        # column index runs along the row direction by the column spacing
        np.testing.assert_allclose(lps @ [1, 0, 0, 1] - lps @ [0, 0, 0, 1],
                                   [*(geo.row_direction * geo.pixel_spacing[1]), 0.0])
        np.testing.assert_allclose(geo.affine_ras(), np.diag([-1, -1, 1, 1]) @ lps)
    expected_normal_z = -1.0 if feet_first else 1.0
    assert phantom.ct_geometry.normal[2] == expected_normal_z
    assert phantom.ct_geometry.row_direction[0] == expected_normal_z  # FFS: columns run to patient right
    # the two grids differ in spacing, slice spacing and origin
    ct, pt = phantom.ct_geometry, phantom.pt_geometry
    assert pt.slice_spacing != ct.slice_spacing
    assert pt.pixel_spacing[0] > ct.pixel_spacing[0]
    assert not np.allclose(pt.origin, ct.origin)
    assert phantom.ct_hu.shape == ct.shape and phantom.ct_hu.dtype == np.int16
    assert phantom.pt_bqml.shape == pt.shape and phantom.pt_bqml.dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        phantom.ct_hu[0, 0, 0] = 0  # shared between tests: nobody may change it in place


def test_feet_first_puts_the_anatomy_at_the_same_patient_coordinates(small_phantom, small_phantom_ffs) -> None:
    def world(phantom: Phantom, mask: np.ndarray) -> set[tuple[float, float, float]]:
        pts = phantom.ct_geometry.world_points()[mask]
        return {tuple(p) for p in np.round(pts, 3)}

    for name in ("brain", "eyes", "nose", "skull", "arms"):
        hfs = world(small_phantom, small_phantom.landmarks[name])
        ffs = world(small_phantom_ffs, small_phantom_ffs.landmarks[name])
        assert hfs == ffs, name
    # the eyes are anterior (-y) and the left eye is on the patient's left (+x) in both
    for phantom in (small_phantom, small_phantom_ffs):
        pts = phantom.ct_geometry.world_points()[phantom.landmarks["eyes"]]
        assert pts[:, 1].max() < phantom.ct_geometry.world_points()[phantom.landmarks["brain"]][:, 1].mean()
        assert (pts[:, 0] > 0).sum() == (pts[:, 0] < 0).sum() > 0
    # FFS: the first slice in spatial order is the most superior one (the head end)
    assert small_phantom_ffs.landmarks["brain"][:, :, :5].any() and not small_phantom_ffs.landmarks["brain"][:, :, -5:].any()
    assert small_phantom.landmarks["brain"][:, :, -5:].any() and not small_phantom.landmarks["brain"][:, :, :5].any()
    assert small_phantom_ffs.ct_geometry.position(0)[2] == max(_world_z(small_phantom_ffs))


# ---------------------------------------------------------------------------
# anatomy invariants the defacing tests rely on


@pytest.mark.parametrize("size", ["small", "demo", "large"])
@pytest.mark.parametrize("feet_first", [False, True])
def test_eyes_and_whole_nose_lie_in_the_defacing_slab_and_brain_reaches_above(size: str, feet_first: bool) -> None:
    phantom = make_phantom(size=size, feet_first=feet_first)
    pts = phantom.ct_geometry.world_points()
    lm = phantom.landmarks
    z = pts[..., 2]
    z_lo = z[lm["brain"]].min()
    z_hi = min(z_lo + 16 * phantom.pt_geometry.slice_spacing, z[lm["skull"]].max())
    for name in ("eyes", "nose"):
        assert lm[name].sum() > 0, name
        assert z[lm[name]].min() >= z_lo and z[lm[name]].max() <= z_hi, name
    assert z[lm["brain"]].max() > z_hi + phantom.ct_geometry.slice_spacing
    # the nose tip is in front of (anterior to) the skull, the eyes do not touch the skull
    assert pts[..., 1][lm["nose"]].min() < pts[..., 1][lm["skull"]].min() - 15
    assert not (lm["eyes"] & lm["skull"]).any()
    # the labels agree with the landmarks
    table = release_label_table()
    assert np.array_equal(phantom.labels["Organs"] == table["Organs"]["brain"], lm["brain"])
    assert np.array_equal(phantom.labels["Peripheral-Bones"] == table["Peripheral-Bones"]["skull"], lm["skull"])


@pytest.mark.parametrize("size", ["small", "demo", "large"])
def test_the_design_cylinder_covers_eyes_and_nose_and_misses_the_arms(size: str) -> None:
    """The README's defacing cylinder computed on the phantom's own landmarks (16 PET slices, 5 mm margin)."""
    phantom = make_phantom(size=size)
    pts = phantom.ct_geometry.world_points()
    lm = phantom.landmarks
    z = pts[..., 2]
    z_lo = z[lm["brain"]].min()
    z_hi = min(z_lo + 16 * phantom.pt_geometry.slice_spacing, z[lm["skull"]].max())
    slab = (z >= z_lo) & (z <= z_hi)
    axis = pts[..., :2][lm["skull"] & slab].mean(axis=0)
    body = phantom.ct_hu > -500
    head = np.zeros_like(body)
    for k in np.nonzero(slab[0, 0, :])[0]:
        pieces, _ = ndimage.label(body[:, :, k])
        touching = set(np.unique(pieces[lm["skull"][:, :, k]])) - {0}
        head[:, :, k] = np.isin(pieces, sorted(touching))
    dist = np.linalg.norm(pts[..., :2] - axis, axis=-1)
    radius = dist[head].max() + 5.0
    inside = slab & (dist <= radius)
    assert inside[lm["eyes"]].all() and inside[lm["nose"]].all()
    arms_in_slab = lm["arms"] & slab
    assert arms_in_slab.sum() > 20  # the forearms and hands really are at the slab's levels
    # the nearest arm voxel is more than two CT voxels outside the cylinder
    assert dist[arms_in_slab].min() > radius + 2 * phantom.ct_geometry.pixel_spacing[0]


def test_skull_is_one_connected_shell_around_the_brain(small_phantom) -> None:
    lm = small_phantom.landmarks
    _, n = ndimage.label(lm["skull"], structure=np.ones((3, 3, 3)))
    assert n == 1
    # the brain does not touch the outside: filling the skull's holes covers it
    assert (ndimage.binary_fill_holes(lm["skull"] | lm["brain"]) & lm["brain"]).sum() == lm["brain"].sum()
    hu = small_phantom.ct_hu
    assert hu[lm["skull"]].min() > 600 and hu[lm["brain"]].max() < 100
    assert np.abs(hu[lm["brain"]].astype(float).mean() - 30) < 3


@pytest.mark.parametrize("feet_first", [False, True])
def test_raised_arms_are_separate_from_the_head_by_air(feet_first: bool, small_phantom, small_phantom_ffs) -> None:
    phantom = small_phantom_ffs if feet_first else small_phantom
    lm = phantom.landmarks
    body = phantom.ct_hu > -500
    head_slices = [k for k in range(phantom.ct_geometry.slices) if lm["head_outline"][:, :, k].any()]
    arm_head_slices = [k for k in head_slices if lm["arms"][:, :, k].any()]
    assert len(arm_head_slices) >= 10  # the hands and forearms really are beside the head
    for k in head_slices:
        grown = ndimage.binary_dilation(lm["head_outline"][:, :, k], structure=np.ones((3, 3)), iterations=2)
        assert not (grown & lm["arms"][:, :, k]).any(), k
        pieces, _ = ndimage.label(body[:, :, k])
        head_pieces = set(np.unique(pieces[lm["head_outline"][:, :, k] & body[:, :, k]])) - {0}
        arm_pieces = set(np.unique(pieces[lm["arms"][:, :, k]])) - {0}
        assert not head_pieces & arm_pieces, k


def test_values_are_noisy_but_thresholds_stay_clean(small_phantom) -> None:
    hu, pt, lm = small_phantom.ct_hu, small_phantom.pt_bqml, small_phantom.landmarks
    air = ~ndimage.binary_dilation(hu > -990)
    assert hu[air].min() >= -1024 and hu[air].max() <= -990
    assert hu[lm["brain"]].std() > 2  # deterministic noise, not a constant
    bone = hu > 300
    assert bone[lm["skull"]].all()
    assert not bone[lm["brain"] | lm["eyes"] | lm["nose"]].any()
    world = small_phantom.pt_geometry.world_points()
    brain_pt = pt[(np.linalg.norm(world - np.array([0.0, 10.0, -62.0]), axis=-1) < 30)]
    assert 15000 < brain_pt.mean() < 25000
    lesion_pt = pt[np.linalg.norm(world - np.array(small_phantom.lesion_centre), axis=-1) < 8]
    assert lesion_pt.size > 0 and lesion_pt.mean() > 2 * brain_pt.mean()
    assert small_phantom.lesion.sum() > 0
    # lesion voxels keep their lung label (removing them is the segmentation stage's job)
    lung_values = {v for k, v in release_label_table()["Organs"].items() if k.startswith("lung")}
    assert set(np.unique(small_phantom.labels["Organs"][small_phantom.lesion])) <= lung_values


def test_every_category_has_labels(small_phantom) -> None:
    table = release_label_table()
    for category, arr in small_phantom.labels.items():
        present = set(np.unique(arr)) - {0}
        assert present, category
        assert present <= set(table[category].values()), category
        assert arr.dtype == np.uint8
    assert small_phantom.extra_labels["trachea"].sum() > 0


# ---------------------------------------------------------------------------
# DICOM


@pytest.mark.parametrize(("vendor", "feet_first"), [("siemens", False), ("philips", False), ("ge", True)])
def test_ct_and_pet_read_back_to_the_phantom(tmp_path: Path, vendor: str, feet_first: bool) -> None:
    phantom = make_phantom(size="small", seed=3, feet_first=feet_first)
    files = write_study(phantom, tmp_path / "drop", vendor=vendor, seed=3, patient_id="P-0001",
                        patient_name="P-0001", decoys=False)
    assert set(files.files) == {"ct", "pt"}
    for role, geo, truth in (("ct", phantom.ct_geometry, phantom.ct_hu), ("pt", phantom.pt_geometry,
                                                                           phantom.pt_bqml)):
        datasets = _by_position(_read(files.files[role]), geo.normal)
        assert len(datasets) == geo.slices
        slopes = set()
        for k, ds in enumerate(datasets):
            np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), geo.position(k), atol=1e-4)
            np.testing.assert_allclose(np.asarray(ds.ImageOrientationPatient, float), geo.orientation)
            values = ds.pixel_array.T.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            if role == "ct":
                assert np.array_equal(values, truth[:, :, k])
            else:
                np.testing.assert_allclose(values, truth[:, :, k], rtol=0, atol=float(ds.RescaleSlope) / 2 + 1e-3)
                slopes.add(ds.RescaleSlope)
            assert ds.FrameOfReferenceUID == files.FrameOfReferenceUID
            assert ds.PatientPosition == ("FFS" if feet_first else "HFS")
        if role == "pt":
            assert len(slopes) > geo.slices // 2  # a different RescaleSlope on (almost) every slice
        numbers = [int(ds.InstanceNumber) for ds in datasets]
        assert sorted(numbers) == list(range(1, geo.slices + 1))
        if vendor == "ge":
            assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
        elif not feet_first:
            # Siemens: acquisition order head to feet; Philips: reversed
            assert numbers == (sorted(numbers, reverse=True) if vendor == "siemens" else sorted(numbers))


def test_headers_are_realistic_and_anonymised(small_study) -> None:
    ct = pydicom.dcmread(small_study.files["ct"][0])
    pt = pydicom.dcmread(small_study.files["pt"][0])
    for ds in (ct, pt):
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.PatientName == "LEI-0001" and ds.PatientID == "LEI-0001"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        for keyword in PLANTED_PHI:
            assert not ds.get(keyword), keyword
        assert ds.StudyInstanceUID == small_study.StudyInstanceUID
        assert ds.Manufacturer == "SIEMENS"
    with open(small_study.files["ct"][0], "rb") as fh:
        assert fh.read(132)[128:] == b"DICM"
    assert ct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(ct.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(ct.RescaleIntercept) == -1024 and float(ct.RescaleSlope) == 1
    for keyword in ("KVP", "ConvolutionKernel", "FilterType", "FocalSpots", "SliceThickness", "XRayTubeCurrent",
                    "Exposure"):
        assert keyword in ct, keyword
    assert pt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128"
    assert pt.Units == "BQML" and "ATTN" in pt.CorrectedImage and pt.DecayCorrection == "START"
    assert list(pt.SeriesType) == ["WHOLE BODY", "IMAGE"]
    assert pt.NumberOfSlices == len(small_study.files["pt"])
    radio = pt.RadiopharmaceuticalInformationSequence[0]
    assert radio.Radiopharmaceutical == "Fluorodeoxyglucose"
    assert float(radio.RadionuclideHalfLife) == 6586.2
    assert float(radio.RadionuclideTotalDose) == small_study.injected_activity_bq > 1e8
    assert radio.RadiopharmaceuticalStartDateTime.startswith(pt.StudyDate)
    assert radio.RadiopharmaceuticalStartTime < pt.AcquisitionTime
    assert pt.PatientSex in ("M", "F") and float(pt.PatientWeight) > 30 and 1.3 < float(pt.PatientSize) < 2.2
    assert pt.PatientAge.endswith("Y")


def test_fast_series_encoding_equals_pydicom_dcmwrite(small_study) -> None:
    """Slices are encoded from cached constant elements; the bytes must be what dcmwrite gives."""
    import io

    from pydicom.filewriter import dcmwrite

    for role in ("ct", "pt"):
        for path in small_study.files[role][:3]:
            ds = pydicom.dcmread(path)
            buf = io.BytesIO()
            dcmwrite(buf, ds, enforce_file_format=True)
            assert buf.getvalue() == path.read_bytes(), path


def test_vendor_private_groups(tmp_path: Path, small_phantom) -> None:
    philips = write_study(small_phantom, tmp_path / "p", vendor="philips", seed=5, patient_id="VIE-0001",
                          patient_name="VIE-0001", decoys=False)
    ds = pydicom.dcmread(philips.files["pt"][0])
    block = ds.private_block(0x7053, "Philips PET Private Group")
    suv = float(block[0x00].value)
    # SUV factor = weight [g] / decay-corrected dose [Bq]
    expected = philips.patient.weight_kg * 1000 / (philips.injected_activity_bq / float(ds.DecayFactor))
    assert suv == pytest.approx(expected, rel=1e-6)
    assert float(block[0x09].value) == 1.0
    ge = write_study(small_phantom, tmp_path / "g", vendor="ge", seed=5, patient_id="BOS0001",
                     patient_name="BOS0001", decoys=False)
    ds = pydicom.dcmread(ge.files["pt"][0])
    assert ds.private_block(0x0009, "GEMS_PETD_01")[0x01].value == "GE_PET_RECON"
    assert all(p.suffix == ".dcm" for p in ge.files["ct"])
    assert len({p.parent for p in ge.all_files}) == 1  # GE: every series in one folder
    assert all(p.suffix == "" for p in philips.files["ct"])
    with pytest.raises(ValueError, match="vendor 'toshiba' is not one of"):
        write_study(small_phantom, tmp_path / "t", vendor="toshiba", seed=5, patient_id="X", patient_name="X")
    with pytest.raises(ValueError, match="defect 'bent' is not one of"):
        write_study(small_phantom, tmp_path / "t", vendor="ge", seed=5, patient_id="X", patient_name="X",
                    defect="bent")


def test_writing_is_deterministic(tmp_path: Path, small_phantom) -> None:
    def write(root: Path, seed: int):
        return write_study(small_phantom, root, vendor="philips", seed=seed, patient_id="VIE-0002",
                           patient_name="VIE-0002")

    a, b = write(tmp_path / "a", 7), write(tmp_path / "b", 7)
    rel_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    rel_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert rel_a == rel_b and len(rel_a) == len(a.all_files)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(p) for p in rel_a], shallow=False)
    assert mismatch == [] and errors == []
    assert a.StudyInstanceUID == b.StudyInstanceUID
    c = write(tmp_path / "c", 8)
    assert c.StudyInstanceUID != a.StudyInstanceUID and c.StudyDate != a.StudyDate
    assert make_phantom(seed=8).lesion_centre != small_phantom.lesion_centre
    assert np.array_equal(make_phantom(seed=0).ct_hu, small_phantom.ct_hu)


def test_decoys(small_study) -> None:
    files = small_study.files
    assert set(files) == {"ct", "pt", "pt_nac", "localizer", "secondary_capture", "text", "truncated"}
    loc = _read(files["localizer"])
    assert all("LOCALIZER" in ds.ImageType and ds.Modality == "CT" for ds in loc)
    assert all(ds.SeriesInstanceUID != small_study.ct_series_uid for ds in loc)
    nac = _read(files["pt_nac"])
    assert len(nac) == len(files["pt"])
    assert all("ATTN" not in ds.CorrectedImage and ds.SeriesDescription == "PET NAC" for ds in nac)
    assert {ds.SeriesInstanceUID for ds in nac} == {small_study.pt_nac_series_uid}
    sc = pydicom.dcmread(files["secondary_capture"][0])
    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.Modality == "OT"
    text = files["text"][0].read_bytes()
    assert text[128:132] != b"DICM" and b"PACS" in text
    truncated = files["truncated"][0]
    full = files["ct"][len(files["ct"]) // 2]
    assert 0 < truncated.stat().st_size < full.stat().st_size
    header = pydicom.dcmread(truncated, stop_before_pixels=True)
    assert header.SeriesInstanceUID == small_study.ct_series_uid
    assert header.ImagePositionPatient == pydicom.dcmread(full).ImagePositionPatient
    ds = pydicom.dcmread(truncated)
    assert len(ds.PixelData) < ds.Rows * ds.Columns * 2  # the pixel data really is cut
    # nested, opaque names: no .dcm for Siemens, several folder levels
    depths = {len(p.relative_to(small_study.root).parts) for p in files["ct"]}
    assert depths == {4} and all(p.suffix == "" for p in files["ct"])


def test_philips_study_has_a_dicomdir(tmp_path: Path, small_phantom) -> None:
    files = write_study(small_phantom, tmp_path, vendor="philips", seed=2, patient_id="VIE-0003",
                        patient_name="VIE-0003")
    ds = pydicom.dcmread(files.files["dicomdir"][0])
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert "SeriesInstanceUID" not in ds


@pytest.mark.parametrize("defect", DEFECTS)
def test_defects(tmp_path: Path, small_phantom, defect: str) -> None:
    files = write_study(small_phantom, tmp_path, vendor="siemens", seed=4, patient_id="LEI-0009",
                        patient_name="LEI-0009", decoys=False, defect=defect)
    ct_geo, pt_geo = small_phantom.ct_geometry, small_phantom.pt_geometry
    if defect == "nac-only":
        assert "pt" not in files.files and files.pt_series_uid is None
        assert all("ATTN" not in ds.CorrectedImage for ds in _read(files.files["pt_nac"]))
        return
    pt = _by_position(_read(files.files["pt"]), pt_geo.normal)
    ct = _by_position(_read(files.files["ct"]), ct_geo.normal)
    if defect == "missing-pet-slice":
        assert len(pt) == pt_geo.slices - 1 and int(pt[0].NumberOfSlices) == pt_geo.slices
        z = sorted(float(ds.ImagePositionPatient[2]) for ds in pt)
        gaps = np.diff(z)
        assert np.isclose(gaps.max(), 2 * pt_geo.slice_spacing) and (gaps > 1.5 * pt_geo.slice_spacing).sum() == 1
    elif defect == "frame-of-reference-mismatch":
        assert {ds.FrameOfReferenceUID for ds in pt} != {ds.FrameOfReferenceUID for ds in ct}
        assert len({ds.FrameOfReferenceUID for ds in ct}) == 1
    elif defect == "gantry-tilt":
        iop = np.asarray(ct[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        step = np.asarray(ct[1].ImagePositionPatient, float) - np.asarray(ct[0].ImagePositionPatient, float)
        # the table moves straight along z, the image plane is tilted: steps are not along the normal
        assert np.allclose(step[:2], 0) and abs(np.dot(step / np.linalg.norm(step), normal)) < 0.999
        assert float(ct[0].GantryDetectorTilt) != 0
    elif defect == "non-uniform-spacing":
        gaps = np.diff([float(ds.ImagePositionPatient[2]) for ds in ct])
        assert gaps.min() == pytest.approx(ct_geo.slice_spacing, abs=1e-3)
        assert gaps.max() > 1.2 * ct_geo.slice_spacing
        # not a multiple of the spacing: this is not a missing slice
        assert not np.isclose(gaps.max() / ct_geo.slice_spacing, round(gaps.max() / ct_geo.slice_spacing))


def test_planted_phi(tmp_path: Path, small_phantom) -> None:
    files = write_study(small_phantom, tmp_path, vendor="ge", seed=6, patient_id="BOS0006",
                        patient_name="BOS0006", decoys=False, plant_phi=True)
    assert files.planted_phi == PLANTED_PHI
    for path in (files.files["ct"][0], files.files["pt"][-1]):
        ds = pydicom.dcmread(path)
        for keyword, value in PLANTED_PHI.items():
            assert str(ds.data_element(keyword).value) == value, keyword


# ---------------------------------------------------------------------------
# segmentations


def _world_of_value(path: Path, value: int) -> set[tuple[float, ...]]:
    img = nib.load(path)
    idx = np.argwhere(np.asarray(img.dataobj) == value)
    pts = nib.affines.apply_affine(img.affine, idx)
    return {tuple(p) for p in np.round(pts, 3)}


@pytest.mark.parametrize("axis_order", ["flipped", "permuted"])
def test_segmentations_in_any_axis_order_are_the_same_grid(tmp_path: Path, small_phantom, axis_order: str) -> None:
    native = write_segmentations(small_phantom, tmp_path / "a", "1.2.3", categories=["Organs", "Vertebrae"])
    other = write_segmentations(small_phantom, tmp_path / "b", "1.2.3", axis_order=axis_order,
                                categories=["Organs", "Vertebrae"])
    assert [p.name for p in native] == ["Organs.nii.gz", "Vertebrae.nii.gz"]
    assert native[0] == tmp_path / "a" / "1.2.3" / "Organs.nii.gz"
    img = nib.load(native[0])
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, small_phantom.ct_geometry.affine_ras())
    assert np.array_equal(np.asarray(img.dataobj), small_phantom.labels["Organs"])
    assert nib.load(other[0]).shape != img.shape or axis_order == "flipped"
    assert not np.array_equal(np.asarray(nib.load(other[0]).dataobj), np.asarray(img.dataobj))
    for value in (4, 8):  # brain, liver
        assert _world_of_value(native[0], value) == _world_of_value(other[0], value)
        assert _world_of_value(native[0], value)
    again = write_segmentations(small_phantom, tmp_path / "c", "1.2.3", axis_order=axis_order,
                                categories=["Organs", "Vertebrae"])
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in other]  # deterministic bytes
    assert img.header["descrip"].item() == b"" and not img.header.extensions
    lesion_a = write_lesion(small_phantom, tmp_path / "la", "1.2.3")
    lesion_b = write_lesion(small_phantom, tmp_path / "lb", "1.2.3", axis_order=axis_order)
    assert lesion_a.name == "1.2.3.nii.gz"
    assert _world_of_value(lesion_a, 1) == _world_of_value(lesion_b, 1) and _world_of_value(lesion_a, 1)


def test_moose_names_and_values(tmp_path: Path, small_phantom) -> None:
    paths = write_segmentations(small_phantom, tmp_path, "9.8.7", moose_names=True)
    assert sorted(p.name for p in paths) == sorted(f"{m}.nii.gz" for m in (
        "clin_ct_body_composition", "clin_ct_cardiac", "clin_ct_muscles", "clin_ct_organs",
        "clin_ct_peripheral_bones", "clin_ct_ribs", "clin_ct_vertebrae"))
    moose, release = moose_label_table(), release_label_table()
    organs = np.asarray(nib.load(tmp_path / "9.8.7" / "clin_ct_organs.nii.gz").dataobj)
    assert np.array_equal(organs == moose["Organs"]["trachea"], small_phantom.extra_labels["trachea"])
    for name in ("brain", "liver", "kidney_left"):
        expected = small_phantom.labels["Organs"] == release["Organs"][name]
        assert expected.any() and np.array_equal(organs == moose["Organs"][name], expected), name
    bones = np.asarray(nib.load(tmp_path / "9.8.7" / "clin_ct_peripheral_bones.nii.gz").dataobj)
    skull = small_phantom.labels["Peripheral-Bones"] == release["Peripheral-Bones"]["skull"]
    assert np.array_equal(bones == moose["Peripheral-Bones"]["skull"], skull)


# ---------------------------------------------------------------------------
# demo sites


def test_demo_sites_give_a_valid_config_and_every_kind_of_study(demo_sites: Path) -> None:
    config = load_config(demo_sites)
    assert [s.id for s in config.sites] == ["leipzig", "vienna", "boston"]
    assert config.release.state_dir == (demo_sites.parent / ".petct").resolve()
    assert config.release.output_dir == (demo_sites.parent / "dist").resolve()
    assert config.execution.workers == 2 and config.execution.runner.value == "threads"
    leipzig, vienna, boston = config.sites
    assert (leipzig.deface, vienna.deface, boston.deface) == (True, True, False)
    assert (leipzig.license, vienna.license, boston.license) == ("CC-BY-4.0", "CC-BY-NC-4.0", "CC-BY-4.0")
    assert boston.lesions_dir is None and leipzig.lesions_dir is not None
    manifest = read_manifest(demo_sites)
    expected = [e["expected"] for site in manifest.values() for e in site]
    assert sorted(set(expected)) == sorted({"case", *EXPECTED_REASON.values()} - {"non-uniform-spacing"})
    assert sum(e["feet_first"] for site in manifest.values() for e in site) == 1
    sheet_lines = vienna.clinical_sheet.read_text().splitlines()
    assert sheet_lines[0] == "StudyInstanceUID,indication"
    assert sheet_lines[1].split(",")[0] == manifest["vienna"][0]["StudyInstanceUID"]
    import re

    for site in config.sites:
        uids_on_disk = set()
        for path in site.dicom_dir.rglob("*"):
            if path.is_file() and path.name not in ("DICOMDIR", "export_notes.txt"):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                uids_on_disk.add(ds.StudyInstanceUID)
                if site.pseudonym_pattern:
                    assert re.match(site.pseudonym_pattern, str(ds.PatientID))
        assert uids_on_disk == {e["StudyInstanceUID"] for e in manifest[site.id]}
        for entry in manifest[site.id]:
            seg = site.segmentations_dir / entry["StudyInstanceUID"]
            names = sorted(p.name for p in seg.iterdir())
            assert len(names) == 7
            assert all(n.startswith("clin_ct_") for n in names) == (site.id == "vienna")
            if site.lesions_dir is not None:
                assert (site.lesions_dir / f"{entry['StudyInstanceUID']}.nii.gz").is_file()
