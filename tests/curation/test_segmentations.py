"""Segmentations onto the CT grid: lossless reorientation, grid checks, mapping by name, lesions."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from curation.errors import (
    SegmentationGridMismatchError,
    SegmentationInvalidError,
    SegmentationMissingError,
)
from curation.labels import load_release_labels, load_source_table, release_source_table
from curation.model import CATEGORIES, CATEGORY_ALIASES
from curation.segmentations import (
    find_category_files,
    load_category,
    load_lesion_mask,
)

SHAPE = (12, 10, 7)
# a dicom2nifti-like CT affine: x and y reversed (LPS data in RAS+ world), odd origin
CT_AFFINE = np.array(
    [[-1.5, 0.0, 0.0, 91.25], [0.0, -1.25, 0.0, 40.5], [0.0, 0.0, 3.0, -700.0], [0, 0, 0, 1]]
)
RELEASE = load_release_labels("builtin:enhance-pet")
MOOSE = load_source_table()
RELEASE_TABLE = release_source_table(RELEASE)


@pytest.fixture
def ct() -> nib.Nifti1Image:
    data = np.full(SHAPE, -1000, dtype=np.int16)
    return nib.Nifti1Image(data, CT_AFFINE)


def organs_moose(seed: int = 0) -> np.ndarray:
    """A MOOSE Organs map with brain (4), liver (8), trachea (19) and background."""
    rng = np.random.default_rng(seed)
    data = rng.choice(np.array([0, 4, 8, 19, 15], dtype=np.uint8), size=SHAPE)
    data[0, 0, 0] = 19  # a corner voxel, so flips and permutations move it
    return data


def flipped(data: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The same grid with one voxel axis reversed (built by hand, not with nibabel)."""
    out = affine.copy()
    out[:3, axis] = -affine[:3, axis]
    out[:3, 3] = affine[:3, 3] + (data.shape[axis] - 1) * affine[:3, axis]
    return np.flip(data, axis=axis).copy(), out


def permuted(data: np.ndarray, affine: np.ndarray, order: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same grid with voxel axes in another order: new axis k is old axis order[k]."""
    out = affine.copy()
    for k, old in enumerate(order):
        out[:3, k] = affine[:3, old]
    return np.transpose(data, order).copy(), out


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_moose_organs_mapped_by_name_and_trachea_dropped(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    src = organs_moose()
    path = save(tmp_path / "clin_ct_organs.nii.gz", src, CT_AFFINE)
    got = load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)
    assert got.array.dtype == np.uint8 and got.array.shape == SHAPE
    assert got.dropped == ("trachea",)
    assert got.dropped_voxels == int(np.count_nonzero(src == 19)) > 0
    expected = np.where(src == 19, 0, src)  # MOOSE and ENHANCE.PET number these organs alike
    np.testing.assert_array_equal(got.array, expected)


def test_values_follow_names_not_numbers(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    doc = json.loads((Path(__file__).resolve().parents[2] / "curation" / "data" / "enhance_pet_labels.json").read_text())
    doc["Organs"] = {"1": "liver", "2": "brain", "3": "spleen"}
    labels_path = tmp_path / "labels.json"
    labels_path.write_text(json.dumps(doc))
    release = load_release_labels(str(labels_path))
    src = organs_moose()
    path = save(tmp_path / "clin_ct_organs.nii.gz", src, CT_AFFINE)
    got = load_category(path, ct, "Organs", source=MOOSE, release=release)
    expected = np.zeros(SHAPE, np.uint8)
    expected[src == 8] = 1  # liver: MOOSE 8 -> 1
    expected[src == 4] = 2  # brain: MOOSE 4 -> 2
    expected[src == 15] = 3  # spleen: MOOSE 15 -> 3
    np.testing.assert_array_equal(got.array, expected)
    assert got.dropped == ("trachea",)


def test_release_named_file_keeps_release_values_and_refuses_others(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    data = np.zeros(SHAPE, np.int16)
    data[2:5, 3:6, 1:3] = 23  # skull
    data[6:8, 1:3, 4:6] = 31  # ulna_right
    path = save(tmp_path / "Peripheral-Bones.nii.gz", data, CT_AFFINE)
    got = load_category(path, ct, "Peripheral-Bones", source=RELEASE_TABLE, release=RELEASE)
    np.testing.assert_array_equal(got.array, data.astype(np.uint8))
    assert got.dropped == () and got.dropped_voxels == 0
    organs = save(tmp_path / "Organs.nii.gz", organs_moose(), CT_AFFINE)  # holds 19, not a release Organs value
    with pytest.raises(SegmentationInvalidError, match=r"Organs\.nii\.gz: values \[19\] are not defined for Organs in the source label table \(builtin:release\)"):
        load_category(organs, ct, "Organs", source=RELEASE_TABLE, release=RELEASE)


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [(77, np.uint8, r"\[77\]"), (-3, np.int16, r"\[-3\]"), (300, np.int16, r"\[300\]")],
)
def test_unknown_value_names_file_and_value(tmp_path: Path, ct: nib.Nifti1Image, value: int, dtype, shown: str) -> None:
    data = organs_moose().astype(dtype)
    data[3, 3, 3] = value
    path = save(tmp_path / "clin_ct_organs.nii.gz", data, CT_AFFINE)
    with pytest.raises(SegmentationInvalidError, match=rf"clin_ct_organs\.nii\.gz: values {shown} are not defined for Organs in the source label table"):
        load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)


def test_float_and_scaled_maps(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    src = organs_moose()
    path = save(tmp_path / "f.nii.gz", src.astype(np.float32), CT_AFFINE)
    got = load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)
    np.testing.assert_array_equal(got.array, np.where(src == 19, 0, src))
    # stored as value/2 with scl_slope 2: the scaled values are the labels
    img = nib.Nifti1Image((src // 2).astype(np.int16), CT_AFFINE)
    img.header.set_slope_inter(2.0, 0.0)
    nib.save(img, tmp_path / "s.nii.gz")
    got = load_category(tmp_path / "s.nii.gz", ct, "Organs", source=MOOSE, release=RELEASE)
    np.testing.assert_array_equal(got.array, (src // 2) * 2)  # 19 -> 18, 15 -> 14: nothing dropped
    assert got.dropped == ()
    frac = src.astype(np.float32)
    frac[1, 2, 3] = 4.5
    save(tmp_path / "x.nii.gz", frac, CT_AFFINE)
    with pytest.raises(SegmentationInvalidError, match=r"x\.nii\.gz: 1 voxels are not whole numbers \(e\.g\. 4\.5\)"):
        load_category(tmp_path / "x.nii.gz", ct, "Organs", source=MOOSE, release=RELEASE)


@pytest.mark.parametrize(
    "make",
    [
        lambda d, a: flipped(d, a, 0),
        lambda d, a: flipped(d, a, 2),
        lambda d, a: permuted(d, a, (2, 0, 1)),
        lambda d, a: permuted(d, a, (1, 0, 2)),
        lambda d, a: flipped(*permuted(d, a, (2, 1, 0)), 1),
    ],
    ids=["flip-x", "flip-z", "permute-zxy", "permute-yxz", "permute-and-flip"],
)
def test_reoriented_copy_equals_native_voxel_for_voxel(tmp_path: Path, ct: nib.Nifti1Image, make) -> None:
    src = organs_moose()
    native = load_category(
        save(tmp_path / "n" / "clin_ct_organs.nii.gz", src, CT_AFFINE), ct, "Organs",
        source=MOOSE, release=RELEASE,
    )
    data, affine = make(src, CT_AFFINE)
    assert data.shape != SHAPE or not np.array_equal(data, src)  # really another axis order
    other = load_category(
        save(tmp_path / "o" / "clin_ct_organs.nii.gz", data, affine), ct, "Organs",
        source=MOOSE, release=RELEASE,
    )
    np.testing.assert_array_equal(other.array, native.array)
    assert (other.dropped, other.dropped_voxels) == (native.dropped, native.dropped_voxels)


def _shifted(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[:3, 3] += 0.5 * a[:3, 0]  # half a voxel along the first axis
    return out


def _spacing(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[:3, 2] *= 1.01  # 3.03 mm slices instead of 3.0
    return out


def _rotated(a: np.ndarray) -> np.ndarray:
    t = np.deg2rad(3.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rot @ a


@pytest.mark.parametrize(
    ("change", "evidence"),
    [
        (_shifted, r"differ by up to 0\.75 mm"),
        (_spacing, r"spacing \[1\.5, 1\.25, 3\.03\] vs the CT's \[1\.5, 1\.25, 3\.0\]"),
        (_rotated, r"differ by up to \d"),
    ],
    ids=["half-voxel-shift", "other-spacing", "rotated"],
)
def test_genuine_grid_mismatch_is_rejected(tmp_path: Path, ct: nib.Nifti1Image, change, evidence: str) -> None:
    path = save(tmp_path / "clin_ct_organs.nii.gz", organs_moose(), change(CT_AFFINE))
    with pytest.raises(SegmentationGridMismatchError, match=rf"clin_ct_organs\.nii\.gz: not on the CT grid.*{evidence}") as info:
        load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)
    assert info.value.reason.value == "segmentation-grid-mismatch"


def test_other_shape_is_rejected(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    path = save(tmp_path / "Ribs.nii.gz", np.zeros((12, 10, 6), np.uint8), CT_AFFINE)
    with pytest.raises(SegmentationGridMismatchError, match=r"Ribs\.nii\.gz: shape \(12, 10, 6\).*not the CT's \(12, 10, 7\)"):
        load_category(path, ct, "Ribs", source=RELEASE_TABLE, release=RELEASE)


def test_unreadable_file_is_invalid(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    path = tmp_path / "Ribs.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(SegmentationInvalidError, match=r"Ribs\.nii\.gz: not a readable NIfTI"):
        load_category(path, ct, "Ribs", source=RELEASE_TABLE, release=RELEASE)


def test_find_category_files_accepts_release_and_moose_names(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    folder = tmp_path / uid
    folder.mkdir()
    aliases = {c: a for a, c in CATEGORY_ALIASES.items()}
    for i, category in enumerate(CATEGORIES):
        name = category if i % 2 else aliases[category]
        (folder / f"{name}.nii.gz").write_bytes(b"x")
    (folder / "notes.txt").write_text("ignored")
    found = find_category_files(tmp_path, uid)
    assert list(found) == list(CATEGORIES)
    assert found["Body-Composition"].name == "clin_ct_body_composition.nii.gz"
    assert found["Cardiac"].name == "Cardiac.nii.gz"

    (folder / "Body-Composition.nii.gz").write_bytes(b"x")
    with pytest.raises(SegmentationInvalidError, match=r"category Body-Composition is delivered twice"):
        find_category_files(tmp_path, uid)

    (folder / "Body-Composition.nii.gz").unlink()
    (folder / "Ribs.nii.gz").unlink()
    (folder / "Organs.nii.gz").unlink()
    with pytest.raises(SegmentationMissingError, match=rf"study {uid}: missing segmentation categories Organs, Ribs .*notes\.txt") as info:
        find_category_files(tmp_path, uid)
    assert info.value.reason.value == "segmentation-missing"
    with pytest.raises(SegmentationMissingError, match=r"study 9\.9: no segmentation folder"):
        find_category_files(tmp_path, "9.9")


def test_lesion_mask(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    assert load_lesion_mask(None, ct) is None
    assert load_lesion_mask(tmp_path / "absent.nii.gz", ct) is None
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:7, 2:4, 1:3] = 1
    data, affine = permuted(*flipped(mask, CT_AFFINE, 1), (2, 0, 1))
    got = load_lesion_mask(save(tmp_path / "l.nii.gz", data, affine), ct)
    assert got is not None and got.dtype == bool
    np.testing.assert_array_equal(got, mask.astype(bool))
    mask[0, 0, 0] = 2
    with pytest.raises(SegmentationInvalidError, match=r"l2\.nii\.gz: a lesion mask holds only 0 and 1; found values \[2\]"):
        load_lesion_mask(save(tmp_path / "l2.nii.gz", mask, CT_AFFINE), ct)
    with pytest.raises(SegmentationGridMismatchError, match=r"l3\.nii\.gz: not on the CT grid"):
        load_lesion_mask(save(tmp_path / "l3.nii.gz", (mask == 1).astype(np.uint8), _shifted(CT_AFFINE)), ct)


def test_release_named_file_in_moose_values_is_read_through_the_moose_table(
    tmp_path: Path, ct: nib.Nifti1Image
) -> None:
    # a site that renames MOOSE's files: Organs.nii.gz holding MOOSE values (trachea 19)
    src = organs_moose()
    path = save(tmp_path / "Organs.nii.gz", src, CT_AFFINE)
    got = load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)
    assert got.dropped == ("trachea",)
    assert got.dropped_voxels == int(np.count_nonzero(src == 19)) > 0
    np.testing.assert_array_equal(got.array, np.where(src == 19, 0, src))


def test_custom_csv_table_maps_values_by_name(tmp_path: Path, ct: nib.Nifti1Image) -> None:
    moose_csv = (Path(__file__).resolve().parents[2] / "curation" / "data" / "moose_label_codes.csv").read_text()
    lines = moose_csv.splitlines()
    # the site's own numbering of Organs: liver 1, brain 2, spleen 3, trachea 4; other models as MOOSE's
    others = [line for line in lines[1:] if not line.startswith("organs,")]
    table_csv = tmp_path / "site_labels.csv"
    table_csv.write_text("\n".join([
        "model,label_name,label_id", "organs,liver,1", "organs,brain,2", "organs,spleen,3", "organs,trachea,4",
        *(",".join(line.split(",")[:3]) for line in others),
    ]) + "\n")
    table = load_source_table(table_csv)
    src = np.zeros(SHAPE, np.uint8)
    src[1:3, 1:3, 1:3] = 1
    src[4:6, 4:6, 4:6] = 2
    src[7:9, 1:3, 2:4] = 3
    src[0, 0, 0] = 4
    path = save(tmp_path / "Organs.nii.gz", src, CT_AFFINE)
    got = load_category(path, ct, "Organs", source=table, release=RELEASE)
    wanted = RELEASE.values_by_name("Organs")
    expected = np.zeros(SHAPE, np.uint8)
    expected[src == 1] = wanted["liver"]
    expected[src == 2] = wanted["brain"]
    expected[src == 3] = wanted["spleen"]
    np.testing.assert_array_equal(got.array, expected)
    assert got.dropped == ("trachea",) and got.dropped_voxels == 1
    src[0, 0, 1] = 5  # not in the site's table
    path = save(tmp_path / "bad" / "Organs.nii.gz", src, CT_AFFINE)
    with pytest.raises(SegmentationInvalidError, match=r"values \[5\] are not defined for Organs in the source label table"):
        load_category(path, ct, "Organs", source=table, release=RELEASE)


@pytest.mark.parametrize("reader", ["category", "lesion"])
def test_a_header_claiming_a_huge_map_is_refused_before_any_voxel_is_read(
    tmp_path: Path, ct: nib.Nifti1Image, reader: str
) -> None:
    """A 2048^3 float64 header (64 GiB) in a file of a few KB: refused from the header, nothing decompressed."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float64)
    header.set_sform(CT_AFFINE, code=1)
    header["vox_offset"] = 352
    path = tmp_path / "Organs.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + bytes(1 << 20)))
    assert path.stat().st_size < 10_000
    with pytest.raises(SegmentationGridMismatchError,
                       match=r"Organs\.nii\.gz: shape \(2048, 2048, 2048\) \(from the header\) is not the CT's "
                             r"\(12, 10, 7\) in any axis order;.* its voxels were not read"):
        if reader == "category":
            load_category(path, ct, "Organs", source=MOOSE, release=RELEASE)
        else:
            load_lesion_mask(path, ct)


def test_remap_does_only_the_work_the_table_needs() -> None:
    from curation.segmentations import _remap

    data = np.asfortranarray(np.random.default_rng(0).integers(0, 6, SHAPE, dtype=np.uint8))
    identity = np.arange(256, dtype=np.uint8)
    assert _remap(data, identity, 5) is data  # release values already
    dropped = identity.copy()
    dropped[3] = 0
    expected = dropped[data]
    got = _remap(data.copy(order="F"), dropped, 5)
    np.testing.assert_array_equal(got, expected)
    swapped = identity.copy()
    swapped[[2, 4]] = [4, 2]  # a swap cannot be done value by value in place
    np.testing.assert_array_equal(_remap(data.copy(order="F"), swapped, 5), swapped[data])
    shifted = identity.copy()
    shifted[1:6] += 10
    remapped = _remap(data, shifted, 5)
    np.testing.assert_array_equal(remapped, shifted[data])
    assert remapped.flags.f_contiguous
