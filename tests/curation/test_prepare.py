"""prepare_case on a really ingested phantom study: labels, lesions, defacing, idempotency."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from anonymization.deface import cylinder_mask, review_box
from curation.config import MissingHeadPolicy, SiteConfig
from curation.model import CATEGORIES, CATEGORY_ALIASES, ConvertedCase, PreparedCase, Rejection
from curation.phantom import write_lesion, write_segmentations
from curation.stage import read_record
from curation.state import StatePaths
from curation.threads import ENVIRONMENT
from tests.curation.conftest import DEFACING, RELEASE, ingest_one, make_site, prepare

CATEGORY_ALIASES_BY_CATEGORY = {category: alias for alias, category in CATEGORY_ALIASES.items()
                                if alias.startswith("clin_ct_")}


def data(path: str) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def expected_labels(phantom, category: str, *, lesion: bool) -> np.ndarray:
    """The phantom's own release map, with the lesion cut out when the site delivers one."""
    out = phantom.labels[category].copy()
    if lesion:
        out[phantom.lesion] = 0
    return out


def test_defaced_site(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    site = make_site(tmp_path, deface=True)
    write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID)
    write_lesion(small_phantom, site.lesions_dir, ingested.StudyInstanceUID)
    prepared = prepare(ingested, site, tmp_path)
    assert isinstance(prepared, PreparedCase), prepared

    # the cylinder is recorded, in the returned record and in prepared.json
    cyl = prepared.cylinder
    assert prepared.defaced and cyl is not None and cyl.landmarks == "segmentation"
    assert not prepared.head_missing_released
    record = StatePaths(tmp_path / "state").prepared_record(ingested.key)
    assert read_record(record, PreparedCase) == prepared

    # CT and PET: inside the cylinder -1000 HU / 0, outside bit-identical to the converted volumes
    ct_in = cylinder_mask(cyl, ingested.ct.shape, np.array(ingested.ct.affine))
    pt_in = cylinder_mask(cyl, ingested.pt.shape, np.array(ingested.pt.affine))
    assert ct_in.sum() > 1000 and pt_in.sum() > 100
    ct, ct0 = data(prepared.ct.path), data(ingested.ct.path)
    pt, pt0 = data(prepared.pt.path), data(ingested.pt.path)
    assert ct.dtype == np.int16 and pt.dtype == np.float32
    assert np.all(ct[ct_in] == -1000) and np.array_equal(ct[~ct_in], ct0[~ct_in])
    assert np.all(pt[pt_in] == 0) and np.array_equal(pt[~pt_in], pt0[~pt_in])
    assert np.any(ct0[ct_in] != -1000) and np.any(pt0[pt_in] != 0)  # something really was removed
    # the head cube before defacing: the converted CT's voxels of review_box, holding every changed voxel
    box = review_box(cyl, ingested.ct.shape, np.array(ingested.ct.affine))
    cube = nib.load(prepared.head_before.path)
    np.testing.assert_array_equal(np.asanyarray(cube.dataobj), ct0[box])
    assert cube.get_data_dtype() == np.int16 and cube.shape != ct0.shape
    np.testing.assert_allclose(cube.affine[:3, 3], apply_affine(np.array(ingested.ct.affine), [b.start for b in box]))
    outside = np.ones(ct0.shape, dtype=bool)
    outside[box] = False
    assert np.count_nonzero(ct != ct0) > 1000 and not np.any((ct != ct0) & outside)
    assert prepared.head_before.sha256 == hashlib.sha256(Path(prepared.head_before.path).read_bytes()).hexdigest()
    # the face landmarks of the phantom are gone
    assert np.all(ct[small_phantom.landmarks["nose"]] == -1000)
    assert np.all(ct[small_phantom.landmarks["eyes"]] == -1000)

    # labels: the phantom's maps minus the lesion, cleared inside the cylinder
    removed = 0
    for category in CATEGORIES:
        got = data(prepared.labels[category].path)
        want = expected_labels(small_phantom, category, lesion=True)
        want[ct_in] = 0
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=category)
        removed += int(np.count_nonzero(small_phantom.labels[category][small_phantom.lesion]))
    assert removed > 0 and prepared.lesion_voxels_removed == removed
    brain = RELEASE.values_by_name("Organs")["brain"]
    assert np.any(small_phantom.labels["Organs"][ct_in] == brain)  # the brain in the slab was cleared
    assert prepared.dropped_labels == {} and prepared.dropped_voxels == {}

    # clean, identical headers; every map carries the CT's affine
    for image in (prepared.ct, prepared.pt, *prepared.labels.values()):
        hdr = nib.load(image.path).header
        for field in ("descrip", "aux_file", "intent_name", "db_name"):
            assert hdr[field].item() == b"", (image.path, field)
        assert len(hdr.extensions) == 0
        assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (1, 1)
    for image in prepared.labels.values():
        np.testing.assert_array_equal(nib.load(image.path).affine, nib.load(prepared.ct.path).affine)
    np.testing.assert_allclose(nib.load(prepared.ct.path).affine, np.array(ingested.ct.affine), atol=1e-4)
    # built exactly like the converted volumes' headers
    assert nib.load(prepared.ct.path).header.binaryblock == nib.load(ingested.ct.path).header.binaryblock
    assert nib.load(prepared.pt.path).header.binaryblock == nib.load(ingested.pt.path).header.binaryblock

    # the same inputs elsewhere give the same bytes
    again = prepare(ingested, site, tmp_path / "other")
    assert isinstance(again, PreparedCase)
    assert again.ct.sha256 == prepared.ct.sha256 and again.pt.sha256 == prepared.pt.sha256
    assert again.head_before.sha256 == prepared.head_before.sha256
    assert {c: f.sha256 for c, f in again.labels.items()} == {c: f.sha256 for c, f in prepared.labels.items()}


def test_converted_volumes_in_one_gzip_stream_are_defaced_to_the_same_bytes(
    small_phantom, ingested: ConvertedCase, tmp_path: Path,
) -> None:
    """Only a slab's members are inflated and compressed again: the files are those of the whole volume.

    A state converted before the member layout holds the volumes as one gzip
    stream (here nibabel's): they are read whole, and give the same bytes.
    """
    site = make_site(tmp_path, deface=True)
    write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID)
    write_lesion(small_phantom, site.lesions_dir, ingested.StudyInstanceUID)
    members = prepare(ingested, site, tmp_path / "members")
    images = {}
    for name, image in (("ct", ingested.ct), ("pt", ingested.pt)):
        path = tmp_path / f"one-stream-{name}.nii.gz"
        loaded = nib.load(image.path)
        nib.save(nib.Nifti1Image(np.asanyarray(loaded.dataobj), loaded.affine, loaded.header), path)
        images[name] = dataclasses.replace(image, path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    whole = prepare(dataclasses.replace(ingested, **images), site, tmp_path / "whole")
    assert isinstance(members, PreparedCase) and isinstance(whole, PreparedCase)
    assert members.cylinder == whole.cylinder
    assert (members.ct.sha256, members.pt.sha256) == (whole.ct.sha256, whole.pt.sha256)
    assert members.head_before is not None and whole.head_before is not None
    assert members.head_before.sha256 == whole.head_before.sha256


def test_a_case_s_files_do_not_depend_on_the_stage_threads(
    small_phantom, small_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingest and prepare on one thread (a worker beside another on 2 cores) write what two threads write."""
    files = []
    for threads in ("1", "2"):
        monkeypatch.setenv(ENVIRONMENT, threads)
        root = tmp_path / threads
        case = ingest_one(small_study.root, small_study.StudyInstanceUID, root)
        site = make_site(root, deface=True)
        write_segmentations(small_phantom, site.segmentations_dir, case.StudyInstanceUID)
        write_lesion(small_phantom, site.lesions_dir, case.StudyInstanceUID)
        prepared = prepare(case, site, root)
        assert isinstance(prepared, PreparedCase), prepared
        out = Path(prepared.ct.path).parent
        files.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.nii.gz"))}
                     | {"converted-" + name: image.sha256 for name, image in (("ct", case.ct), ("pt", case.pt))})
    assert len(files[0]) >= 2 + 2 + len(CATEGORIES)
    assert files[0] == files[1]


def test_undefaced_site_moose_names_permuted(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    site = make_site(tmp_path, deface=False, lesions=False, label_table="builtin:moose")
    write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID,
                        axis_order="permuted", moose_names=True)
    prepared = prepare(ingested, site, tmp_path)
    assert isinstance(prepared, PreparedCase), prepared
    # images are not rewritten: the converted files are referenced
    assert prepared.ct == ingested.ct and prepared.pt == ingested.pt
    assert not prepared.defaced and prepared.cylinder is None
    out_dir = StatePaths(tmp_path / "state").prepared_dir(ingested.key)
    assert not (out_dir / "CT.nii.gz").exists() and not (out_dir / "PT.nii.gz").exists()
    assert prepared.head_before is None and not (out_dir / "CT-head-before.nii.gz").exists()
    # MOOSE values mapped back by name, axes put back in the CT's order, trachea dropped and counted
    for category in CATEGORIES:
        np.testing.assert_array_equal(
            data(prepared.labels[category].path), expected_labels(small_phantom, category, lesion=False),
            err_msg=category,
        )
    trachea = int(small_phantom.extra_labels["trachea"].sum())
    assert trachea > 0
    assert prepared.dropped_labels == {"Organs": ["trachea"]}
    assert prepared.dropped_voxels == {"Organs": trachea}
    assert prepared.lesion_voxels_removed == 0


def test_flipped_maps_give_the_native_bytes(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    results = {}
    for order in ("native", "flipped"):
        site = make_site(tmp_path / order, deface=False)
        write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID, axis_order=order)
        write_lesion(small_phantom, site.lesions_dir, ingested.StudyInstanceUID, axis_order=order)
        prepared = prepare(ingested, site, tmp_path / order)
        assert isinstance(prepared, PreparedCase), prepared
        results[order] = {c: f.sha256 for c, f in prepared.labels.items()}
        assert prepared.lesion_voxels_removed > 0
    assert results["native"] == results["flipped"]


def mtimes(folder: Path) -> dict[str, int]:
    """The record and the outputs (not the reuse check's stat cache beside them)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.name != ".prepared.output-stats.json"}


def test_idempotent_and_redone_when_a_segmentation_changes(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    site = make_site(tmp_path, deface=True)
    files = write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID)
    write_lesion(small_phantom, site.lesions_dir, ingested.StudyInstanceUID)
    first = prepare(ingested, site, tmp_path)
    assert isinstance(first, PreparedCase)
    out_dir = StatePaths(tmp_path / "state").prepared_dir(ingested.key)
    before = mtimes(out_dir)
    assert set(before) == {"prepared.json", "CT.nii.gz", "PT.nii.gz", "CT-head-before.nii.gz",
                           *(f"{c}.nii.gz" for c in CATEGORIES)}

    second = prepare(ingested, site, tmp_path)
    assert second == first
    assert mtimes(out_dir) == before  # no file was written again
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == [".prepared.output-stats.json"]

    # a damaged output is not trusted: prepared again, to the same bytes
    ribs = out_dir / "Ribs.nii.gz"
    good = ribs.read_bytes()
    ribs.write_bytes(good[:-10])
    repaired = prepare(ingested, site, tmp_path)
    assert repaired == first and ribs.read_bytes() == good
    before = mtimes(out_dir)

    # new content in one segmentation file (the liver relabelled as spleen): everything is redone
    organs = next(p for p in files if p.name == "Organs.nii.gz")
    img = nib.load(organs)
    arr = np.asanyarray(img.dataobj).copy()
    liver, spleen = RELEASE.values_by_name("Organs")["liver"], RELEASE.values_by_name("Organs")["spleen"]
    assert np.any(arr == liver)
    arr[arr == liver] = spleen
    nib.save(nib.Nifti1Image(arr, img.affine), organs)
    third = prepare(ingested, site, tmp_path)
    assert isinstance(third, PreparedCase)
    assert third.fingerprint != first.fingerprint
    assert third.labels["Organs"].sha256 != first.labels["Organs"].sha256
    assert not np.any(data(third.labels["Organs"].path) == liver)
    after = mtimes(out_dir)
    assert all(after[name] != before[name] for name in before)

    # other defacing settings change the fingerprint too; an undefaced site ignores them
    wider = dataclasses.replace(DEFACING, margin_mm=9.0)
    fourth = prepare(ingested, site, tmp_path, defacing=wider)
    assert isinstance(fourth, PreparedCase) and fourth.cylinder.radius == pytest.approx(third.cylinder.radius + 4.0)


def test_segmentation_problems_are_rejections(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    site = make_site(tmp_path, deface=True)
    files = write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID)
    assert isinstance(prepare(ingested, site, tmp_path), PreparedCase)
    record = StatePaths(tmp_path / "state").prepared_record(ingested.key)
    assert record.is_file()

    # half a voxel off the CT grid
    ribs = next(p for p in files if p.name == "Ribs.nii.gz")
    img = nib.load(ribs)
    shifted = img.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), ribs)
    got = prepare(ingested, site, tmp_path)
    assert isinstance(got, Rejection)
    assert (got.reason.value, got.phase, got.stage, got.StudyInstanceUID) == (
        "segmentation-grid-mismatch", "build", "prepare", ingested.StudyInstanceUID,
    )
    half_voxel = 0.5 * float(np.linalg.norm(img.affine[:3, 0]))
    assert "Ribs.nii.gz" in got.message and f"{half_voxel:.4g} mm" in got.message
    assert read_record(record, PreparedCase) == got  # the record of the earlier inputs is replaced by the hold-back

    ribs.unlink()
    got = prepare(ingested, site, tmp_path)
    assert isinstance(got, Rejection) and got.reason.value == "segmentation-missing"
    assert "missing segmentation categories Ribs" in got.message


def test_case_of_another_site_is_a_caller_error(ingested: ConvertedCase, tmp_path: Path) -> None:
    site = dataclasses.replace(make_site(tmp_path, deface=False), id="vienna")
    with pytest.raises(ValueError, match="belongs to site 'leipzig', not 'vienna'"):
        prepare(ingested, site, tmp_path)


def _write_segmentations_without_a_head(small_phantom, site: SiteConfig, ingested: ConvertedCase) -> None:
    """The phantom's maps, but a skull that ends below the brain: no head the cylinder could cover."""
    write_segmentations(small_phantom, site.segmentations_dir, ingested.StudyInstanceUID)
    path = site.segmentations_dir / ingested.StudyInstanceUID / "Peripheral-Bones.nii.gz"
    img = nib.load(path)
    bones = np.asanyarray(img.dataobj).copy()
    skull = RELEASE.values_by_name("Peripheral-Bones")["skull"]
    bones[bones == skull] = 0
    bones[30:34, 30:34, 5:8] = skull  # a few voxels far below the head
    nib.save(nib.Nifti1Image(bones, img.affine), path)


@pytest.mark.parametrize("policy", [MissingHeadPolicy.HOLD, MissingHeadPolicy.RELEASE])
def test_head_not_found(small_phantom, ingested: ConvertedCase, tmp_path: Path, policy: MissingHeadPolicy) -> None:
    site = make_site(tmp_path, deface=True, lesions=False, missing_head=policy)
    _write_segmentations_without_a_head(small_phantom, site, ingested)
    got = prepare(ingested, site, tmp_path)
    if policy is MissingHeadPolicy.HOLD:
        assert isinstance(got, Rejection)
        assert (got.reason.value, got.phase, got.stage) == ("head-not-found", "build", "prepare")
    else:
        assert isinstance(got, PreparedCase)
        assert got.head_missing_released and not got.defaced and got.cylinder is None
        assert got.ct == ingested.ct and got.pt == ingested.pt


def test_a_bad_lesion_mask_is_reported_before_a_missing_head(
    small_phantom, ingested: ConvertedCase, tmp_path: Path
) -> None:
    # the cylinder is planned while the lesion mask is read; the reporting order stays
    # landmarks, lesion mask, head
    site = make_site(tmp_path, deface=True)
    _write_segmentations_without_a_head(small_phantom, site, ingested)
    lesion = write_lesion(small_phantom, site.lesions_dir, ingested.StudyInstanceUID)
    mask = nib.load(lesion)
    good = np.asanyarray(mask.dataobj).astype(np.uint8)
    values = good.copy()
    values[0, 0, 0] = 7  # not a binary mask
    nib.save(nib.Nifti1Image(values, mask.affine), lesion)
    got = prepare(ingested, site, tmp_path)
    assert isinstance(got, Rejection)
    assert got.reason.value == "segmentation-invalid", got
    assert "lesion mask holds only 0 and 1" in got.message

    nib.save(nib.Nifti1Image(good, mask.affine), lesion)  # the mask mended
    got = prepare(ingested, site, tmp_path)
    assert isinstance(got, Rejection) and got.reason.value == "head-not-found", got


def _release_named_moose_values(small_phantom, site, uid: str) -> None:
    """MOOSE's files renamed to the release categories, MOOSE values inside (trachea 19 in Organs)."""
    for path in write_segmentations(small_phantom, site.segmentations_dir, uid, moose_names=True):
        category = next(c for c in CATEGORIES if path.name == f"{CATEGORY_ALIASES_BY_CATEGORY[c]}.nii.gz")
        path.rename(path.with_name(f"{category}.nii.gz"))


def test_release_named_moose_values_read_through_the_moose_table(
    small_phantom, ingested: ConvertedCase, tmp_path: Path
) -> None:
    site = make_site(tmp_path, deface=False, lesions=False, label_table="builtin:moose")
    _release_named_moose_values(small_phantom, site, ingested.StudyInstanceUID)
    assert (site.segmentations_dir / ingested.StudyInstanceUID / "Organs.nii.gz").is_file()
    prepared = prepare(ingested, site, tmp_path)
    assert isinstance(prepared, PreparedCase), prepared
    for category in CATEGORIES:
        np.testing.assert_array_equal(
            data(prepared.labels[category].path), expected_labels(small_phantom, category, lesion=False),
            err_msg=category,
        )
    trachea = int(small_phantom.extra_labels["trachea"].sum())
    assert prepared.dropped_labels == {"Organs": ["trachea"]}
    assert prepared.dropped_voxels == {"Organs": trachea} and trachea > 0


def test_release_named_moose_values_with_the_release_table_are_invalid(
    small_phantom, ingested: ConvertedCase, tmp_path: Path
) -> None:
    site = make_site(tmp_path, deface=False, lesions=False, label_table="builtin:release")
    _release_named_moose_values(small_phantom, site, ingested.StudyInstanceUID)
    got = prepare(ingested, site, tmp_path)
    assert isinstance(got, Rejection) and got.reason.value == "segmentation-invalid", got
    assert "values [19] are not defined for Organs in the source label table (builtin:release)" in got.message


def test_changing_the_site_table_prepares_again(small_phantom, ingested: ConvertedCase, tmp_path: Path) -> None:
    site = make_site(tmp_path, deface=False, lesions=False, label_table="builtin:release")
    _release_named_moose_values(small_phantom, site, ingested.StudyInstanceUID)
    assert isinstance(prepare(ingested, site, tmp_path), Rejection)
    got = prepare(ingested, dataclasses.replace(site, label_table="builtin:moose"), tmp_path)
    assert isinstance(got, PreparedCase), got
