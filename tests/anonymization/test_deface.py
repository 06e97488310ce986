"""Defacing (README, section "Defacing") on the phantom of :mod:`curation.phantom`.

The phantom's landmark masks (eyes, nose, brain, arms) are the ground truth: the
tests check, voxel by voxel, what the defaced CT and PET hold there, on the CT
grid and on the PET grid (a PET voxel belongs to a structure when its centre's
nearest CT voxel does).
"""

from __future__ import annotations

import json
from importlib import resources

import nibabel as nib
import numpy as np
import pytest

from anonymization.deface import (
    CT_FILL_HU,
    TOLERANCE_MM,
    apply_cylinder,
    cylinder_mask,
    cylinder_planes,
    deface_array,
    deface_planes,
    landmark_masks,
    pet_slice_spacing,
    plan_cylinder,
)
from curation.errors import HeadNotFoundError
from curation.model import DefaceCylinder, from_jsonable, to_jsonable

RELEASE_LABELS = json.loads(
    resources.files("curation").joinpath("data/enhance_pet_labels.json").read_text("utf-8")
)


# ---------------------------------------------------------------------------
# helpers


def _images(phantom) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    ct = nib.Nifti1Image(phantom.ct_hu, phantom.ct_geometry.affine_ras())
    pt = nib.Nifti1Image(phantom.pt_bqml, phantom.pt_geometry.affine_ras())
    return ct, pt


def _landmarks(phantom) -> tuple[np.ndarray, np.ndarray]:
    """Brain and skull from the phantom's release label maps, by label name (as prepare does)."""
    brain, skull = landmark_masks(phantom.labels, RELEASE_LABELS)
    assert brain is not None and skull is not None
    return brain, skull


def _world_z(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.indices(shape, dtype=float)
    return np.einsum("b,bijk->ijk", affine[2, :3], idx) + affine[2, 3]


def _on_pet_grid(mask: np.ndarray, ct_affine: np.ndarray, pt_img: nib.Nifti1Image) -> np.ndarray:
    """Nearest-neighbour resampling of a CT-grid mask onto the PET grid (world coordinates)."""
    idx = np.indices(pt_img.shape, dtype=float).reshape(3, -1)
    to_ct = np.linalg.inv(ct_affine) @ pt_img.affine
    ijk = np.rint(to_ct[:3, :3] @ idx + to_ct[:3, 3:4]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(mask.shape)[:, None]), axis=0)
    out = np.zeros(idx.shape[1], dtype=bool)
    out[inside] = mask[tuple(ijk[:, inside])]
    return out.reshape(pt_img.shape)


def _reorient(
    arr: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]
):
    """The same grid with its axes permuted and flipped: new array and the affine that keeps the world."""
    new = np.flip(arr.transpose(perm), axis=flips).copy()
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    for a, old in enumerate(perm):
        if a in flips:
            to_old[old, a] = -1.0
            to_old[old, 3] = new.shape[a] - 1
        else:
            to_old[old, a] = 1.0
    return new, affine @ to_old


def _bits(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.uint32) if arr.dtype == np.float32 else arr


@pytest.fixture(scope="module")
def planned(small_phantom):
    ct, pt = _images(small_phantom)
    brain, skull = _landmarks(small_phantom)
    cylinder = plan_cylinder(ct, pt, brain, skull)
    defaced = apply_cylinder(cylinder, ct, pt, small_phantom.labels)
    return ct, pt, cylinder, defaced


# ---------------------------------------------------------------------------
# the cylinder follows the specification


def test_cylinder_geometry_follows_the_landmarks(small_phantom, planned) -> None:
    ct, pt, cylinder, _ = planned
    brain, skull = _landmarks(small_phantom)
    z = _world_z(ct.affine, ct.shape)
    assert cylinder.landmarks == "segmentation"
    assert cylinder.z_lo == pytest.approx(z[brain].min())
    # 16 PET slices of 6 mm above the brain's bottom, below the skull's top
    assert pet_slice_spacing(pt.affine) == pytest.approx(6.0)
    assert cylinder.z_hi == pytest.approx(cylinder.z_lo + 16 * 6.0)
    assert cylinder.z_hi < z[skull].max()
    slab = (z >= cylinder.z_lo) & (z <= cylinder.z_hi)
    xy = [
        np.einsum("b,bijk->ijk", ct.affine[a, :3], np.indices(ct.shape, dtype=float))
        + ct.affine[a, 3]
        for a in (0, 1)
    ]
    assert cylinder.axis_x == pytest.approx(xy[0][skull & slab].mean())
    assert cylinder.axis_y == pytest.approx(xy[1][skull & slab].mean())
    # the radius reaches the head's farthest voxel (the nose tip) plus the margin, not the arms
    head = small_phantom.landmarks["head_outline"] & slab
    dist = np.hypot(xy[0] - cylinder.axis_x, xy[1] - cylinder.axis_y)
    assert cylinder.radius == pytest.approx(dist[head].max() + 5.0)
    assert dist[small_phantom.landmarks["nose"]].max() + 5.0 == pytest.approx(cylinder.radius)
    arms = small_phantom.landmarks["arms"] & slab
    assert dist[arms].max() > cylinder.radius + 20.0  # counting the arms would have grown it
    assert from_jsonable(DefaceCylinder, json.loads(json.dumps(to_jsonable(cylinder)))) == cylinder


def test_z_hi_is_capped_at_the_top_of_the_skull(small_phantom) -> None:
    ct, pt = _images(small_phantom)
    brain, skull = _landmarks(small_phantom)
    cylinder = plan_cylinder(ct, pt, brain, skull, height_voxels=100, margin_mm=0.0)
    assert cylinder.z_hi == pytest.approx(_world_z(ct.affine, ct.shape)[skull].max())
    assert cylinder.z_lo < cylinder.z_hi


def test_bounds_are_inclusive_within_the_tolerance() -> None:
    # 1 mm grid, world = index; cylinder axis on a voxel centre
    affine = np.eye(4)
    cylinder = DefaceCylinder(
        z_lo=2.0, z_hi=5.0, axis_x=10.0, axis_y=10.0, radius=3.0, landmarks="segmentation"
    )
    mask = cylinder_mask(cylinder, (21, 21, 9), affine)
    assert mask[13, 10, 2] and mask[10, 7, 5]  # exactly on the radius, at z_lo and at z_hi
    assert not mask[10, 10, 1] and not mask[10, 10, 6]  # one slice beyond each end
    assert not mask[13, 11, 3]  # sqrt(10) > 3
    nudged = DefaceCylinder(2.0, 5.0, 10.0, 10.0, 3.0 - 10 * TOLERANCE_MM, "segmentation")
    assert not cylinder_mask(nudged, (21, 21, 9), affine)[13, 10, 2]
    # 29 voxels in each of the 4 slices: the lattice points of a disc of radius 3
    assert mask.sum() == 4 * 29


def test_cylinder_mask_matches_world_coordinates_on_a_tilted_grid() -> None:
    # a grid rotated 30 degrees about z and tilted 8 degrees against it, anisotropic, off origin
    def rotation(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        return r

    affine = np.eye(4)
    affine[:3, :3] = rotation(2, 30.0) @ rotation(0, 8.0) @ np.diag([1.5, 2.0, 2.5])
    affine[:3, 3] = (-30.0, 12.0, -40.0)
    shape = (40, 36, 30)
    cylinder = DefaceCylinder(
        z_lo=-20.0, z_hi=-2.0, axis_x=-5.0, axis_y=25.0, radius=13.0, landmarks="segmentation"
    )
    xyz = (
        np.einsum("ab,bijk->aijk", affine[:3, :3], np.indices(shape, dtype=float))
        + affine[:3, 3, None, None, None]
    )
    expected = (
        (xyz[2] >= cylinder.z_lo)
        & (xyz[2] <= cylinder.z_hi)
        & (np.hypot(xyz[0] - cylinder.axis_x, xyz[1] - cylinder.axis_y) <= cylinder.radius)
    )
    assert expected.sum() > 500
    assert np.array_equal(cylinder_mask(cylinder, shape, affine), expected)


# ---------------------------------------------------------------------------
# what the defaced volumes hold


@pytest.mark.parametrize("feet_first", [False, True])
def test_eyes_nose_and_slab_brain_are_blanked(
    feet_first: bool, small_phantom, small_phantom_ffs
) -> None:
    phantom = small_phantom_ffs if feet_first else small_phantom
    ct, pt = _images(phantom)
    cylinder = plan_cylinder(ct, pt, *_landmarks(phantom))
    defaced = apply_cylinder(cylinder, ct, pt)
    lm = phantom.landmarks
    z = _world_z(ct.affine, ct.shape)
    in_slab = (z >= cylinder.z_lo) & (z <= cylinder.z_hi)
    pt_z = _world_z(pt.affine, pt.shape)
    pt_in_slab = (pt_z >= cylinder.z_lo) & (pt_z <= cylinder.z_hi)
    structures = {"eyes": lm["eyes"], "nose": lm["nose"], "slab brain": lm["brain"] & in_slab}
    for name, mask in structures.items():
        on_pet = _on_pet_grid(mask, ct.affine, pt)
        if name == "slab brain":
            on_pet &= pt_in_slab
        assert mask.sum() >= 20 and on_pet.sum() >= 4, name
        # they held something before, so a missed voxel would show (the PET is sampled on its
        # own coarse grid: a PET voxel at the nose's edge can be air)
        assert (phantom.ct_hu[mask] > -500).all(), name
        assert (phantom.pt_bqml[on_pet] > 0).mean() > 0.75, name
        assert (defaced.ct[mask] == CT_FILL_HU).all(), name
        assert (defaced.pt[on_pet] == 0).all(), name
    # the nose's tip (its most anterior voxel: RAS +y is anterior) is covered
    y = (
        np.einsum("b,bijk->ijk", ct.affine[1, :3], np.indices(ct.shape, dtype=float))
        + ct.affine[1, 3]
    )
    tip = np.unravel_index(np.argmax(np.where(lm["nose"], y, -np.inf)), ct.shape)
    assert defaced.ct[tip] == CT_FILL_HU


def test_brain_above_the_slab_is_unchanged(small_phantom, planned) -> None:
    ct, pt, cylinder, defaced = planned
    above = small_phantom.landmarks["brain"] & (
        _world_z(ct.affine, ct.shape) > cylinder.z_hi + TOLERANCE_MM
    )
    pt_above = _on_pet_grid(small_phantom.landmarks["brain"], ct.affine, pt)
    pt_above &= _world_z(pt.affine, pt.shape) > cylinder.z_hi
    assert above.sum() > 500 and pt_above.sum() > 50
    assert np.array_equal(defaced.ct[above], small_phantom.ct_hu[above])
    assert np.array_equal(_bits(defaced.pt[pt_above]), _bits(small_phantom.pt_bqml[pt_above]))


def test_radius_comes_from_the_head_not_the_arms(small_phantom, planned) -> None:
    ct, pt, cylinder, _ = planned
    # the arms beside the head are in the slab's z range, and nearer than they would be counted
    arms = small_phantom.landmarks["arms"]
    z = _world_z(ct.affine, ct.shape)
    arms_in_slab = arms & (z >= cylinder.z_lo) & (z <= cylinder.z_hi)
    assert arms_in_slab.sum() > 50
    # planning with the arms painted away gives the same cylinder: they never counted
    armless = small_phantom.ct_hu.copy()
    armless[arms] = -1000
    again = plan_cylinder(nib.Nifti1Image(armless, ct.affine), pt, *_landmarks(small_phantom))
    assert again == cylinder


def test_raised_arms_and_hands_are_unchanged(small_phantom, planned) -> None:
    ct, pt, _, defaced = planned
    arms = small_phantom.landmarks["arms"]
    pt_arms = _on_pet_grid(arms, ct.affine, pt)
    assert arms.sum() > 500 and pt_arms.sum() > 50
    assert np.array_equal(defaced.ct[arms], small_phantom.ct_hu[arms])
    assert np.array_equal(_bits(defaced.pt[pt_arms]), _bits(small_phantom.pt_bqml[pt_arms]))


def test_outside_the_cylinder_is_bit_identical_and_inputs_untouched(small_phantom, planned) -> None:
    ct, pt, cylinder, defaced = planned
    ct_in = cylinder_mask(cylinder, ct.shape, ct.affine)
    pt_in = cylinder_mask(cylinder, pt.shape, pt.affine)
    assert defaced.ct_voxels == ct_in.sum() > 1000 and defaced.pt_voxels == pt_in.sum() > 100
    assert defaced.ct.dtype == np.int16 and defaced.pt.dtype == np.float32
    assert np.array_equal(defaced.ct[~ct_in], small_phantom.ct_hu[~ct_in])
    assert np.array_equal(_bits(defaced.pt[~pt_in]), _bits(small_phantom.pt_bqml[~pt_in]))
    assert (defaced.ct[ct_in] == CT_FILL_HU).all() and (defaced.pt[pt_in] == 0).all()
    # the inputs still hold the face
    assert (np.asanyarray(ct.dataobj)[small_phantom.landmarks["nose"]] > -500).all()
    assert (small_phantom.ct_hu[ct_in] != CT_FILL_HU).sum() > 1000
    assert (small_phantom.pt_bqml[pt_in] > 0).sum() > 100


def test_labels_inside_are_cleared_and_outside_unchanged(small_phantom, planned) -> None:
    ct, _, cylinder, defaced = planned
    inside = cylinder_mask(cylinder, ct.shape, ct.affine)
    assert set(defaced.labels) == set(small_phantom.labels)
    for category, before in small_phantom.labels.items():
        after = defaced.labels[category]
        assert after.dtype == np.uint8
        assert np.array_equal(after[~inside], before[~inside]), category
        assert not after[inside].any(), category
        assert defaced.label_voxels_cleared[category] == np.count_nonzero(before[inside]), category
    assert defaced.label_voxels_cleared["Organs"] > 100  # the brain in the slab
    assert small_phantom.labels["Organs"][inside].any()  # the input maps keep them


def test_labels_kept_without_clear_labels(small_phantom, planned) -> None:
    ct, pt, cylinder, _ = planned
    kept = apply_cylinder(cylinder, ct, pt, small_phantom.labels, clear_labels=False)
    for category, before in small_phantom.labels.items():
        assert np.array_equal(kept.labels[category], before)
        assert kept.labels[category] is not before
    assert kept.label_voxels_cleared == dict.fromkeys(small_phantom.labels, 0)
    assert (kept.ct[small_phantom.landmarks["nose"]] == CT_FILL_HU).all()


# ---------------------------------------------------------------------------
# independence from the grid: feet first, reoriented


def test_feet_first_is_defaced_at_the_same_anatomy(
    small_phantom, small_phantom_ffs, planned
) -> None:
    ct, _, cylinder, _ = planned
    ct_ff, pt_ff = _images(small_phantom_ffs)
    assert not np.allclose(ct_ff.affine, ct.affine)  # really another grid
    ff = plan_cylinder(ct_ff, pt_ff, *_landmarks(small_phantom_ffs))
    voxel = float(np.linalg.norm(ct.affine[:3, :3], axis=0).min())
    for field in ("z_lo", "z_hi", "axis_x", "axis_y", "radius"):
        assert getattr(ff, field) == pytest.approx(getattr(cylinder, field), abs=voxel), field

    def defaced_points(img: nib.Nifti1Image, cyl: DefaceCylinder) -> np.ndarray:
        idx = np.vstack(np.nonzero(cylinder_mask(cyl, img.shape, img.affine))).astype(float)
        xyz = img.affine[:3, :3] @ idx + img.affine[:3, 3:4]
        return np.unique(np.round(xyz.T, 2), axis=0)

    assert np.array_equal(defaced_points(ct, cylinder), defaced_points(ct_ff, ff))


def test_reoriented_grids_give_the_same_result(small_phantom, planned) -> None:
    ct, pt, cylinder, defaced = planned
    brain, skull = _landmarks(small_phantom)
    ct_perm, ct_flips = (2, 0, 1), (0, 2)
    pt_perm, pt_flips = (1, 2, 0), (1,)

    def ct_grid(arr: np.ndarray) -> np.ndarray:
        return _reorient(arr, ct.affine, ct_perm, ct_flips)[0]

    ct_arr, ct_affine = _reorient(small_phantom.ct_hu, ct.affine, ct_perm, ct_flips)
    pt_arr, pt_affine = _reorient(small_phantom.pt_bqml, pt.affine, pt_perm, pt_flips)
    assert np.argmax(np.abs(ct_affine[2, :3])) != 2  # world z no longer runs along the third axis
    ct2, pt2 = nib.Nifti1Image(ct_arr, ct_affine), nib.Nifti1Image(pt_arr, pt_affine)
    again = plan_cylinder(ct2, pt2, ct_grid(brain), ct_grid(skull))
    for field in ("z_lo", "z_hi", "axis_x", "axis_y", "radius"):
        assert getattr(again, field) == pytest.approx(getattr(cylinder, field), abs=1e-6), field
    labels2 = {c: ct_grid(a) for c, a in small_phantom.labels.items()}
    defaced2 = apply_cylinder(again, ct2, pt2, labels2)
    assert np.array_equal(defaced2.ct, ct_grid(defaced.ct))
    assert np.array_equal(defaced2.pt, _reorient(defaced.pt, pt.affine, pt_perm, pt_flips)[0])
    for category, arr in defaced.labels.items():
        assert np.array_equal(defaced2.labels[category], ct_grid(arr)), category


# ---------------------------------------------------------------------------
# CT-only fallback and the missing head


def test_ct_fallback_finds_nearly_the_same_cylinder(small_phantom, planned) -> None:
    ct, pt, cylinder, _ = planned
    for brain, skull in ((None, None), (np.zeros(ct.shape, bool), _landmarks(small_phantom)[1])):
        fallback = plan_cylinder(ct, pt, brain, skull)
        assert fallback.landmarks == "ct-fallback"
        # tolerance: one PET slice (6 mm) along z, one CT pixel (6.5 mm) in-plane; the fallback's
        # brain (soft tissue enclosed by bone, slice by slice) starts one CT slice lower here
        assert fallback.z_lo == pytest.approx(cylinder.z_lo, abs=6.0)
        assert fallback.z_hi == pytest.approx(cylinder.z_hi, abs=6.0)
        assert fallback.axis_x == pytest.approx(cylinder.axis_x, abs=6.5)
        assert fallback.axis_y == pytest.approx(cylinder.axis_y, abs=6.5)
        assert fallback.radius == pytest.approx(cylinder.radius, abs=6.5)
    # and it blanks the face just the same
    defaced = apply_cylinder(fallback, ct, pt)
    for name in ("eyes", "nose"):
        assert (defaced.ct[small_phantom.landmarks[name]] == CT_FILL_HU).all(), name


def test_scan_without_a_head_raises_head_not_found(small_phantom) -> None:
    ct, pt = _images(small_phantom)
    z = _world_z(ct.affine, ct.shape)[0, 0]
    torso = np.flatnonzero(z <= -200.0)  # from the neck down: rib cage, spine, upper arms
    crop = small_phantom.ct_hu[:, :, torso.min() : torso.max() + 1]
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ [0, 0, torso.min()] + ct.affine[:3, 3]
    assert (crop >= 300).sum() > 1000  # plenty of bone for the fallback to consider
    cropped = nib.Nifti1Image(crop, affine)
    with pytest.raises(HeadNotFoundError, match="no skull enclosing a brain") as info:
        plan_cylinder(cropped, pt, None, None)
    assert info.value.reason.value == "head-not-found"
    # labels cropped the same way have no brain either: the fallback runs and fails the same way
    brain, skull = _landmarks(small_phantom)
    with pytest.raises(HeadNotFoundError, match="no skull enclosing a brain"):
        plan_cylinder(
            cropped,
            pt,
            brain[:, :, torso.min() : torso.max() + 1],
            skull[:, :, torso.min() : torso.max() + 1],
        )


def test_wrong_inputs_are_refused(small_phantom, planned) -> None:
    ct, pt, cylinder, _ = planned
    brain, skull = _landmarks(small_phantom)
    with pytest.raises(ValueError, match=r"brain mask has shape \(64, 64, 119\)"):
        plan_cylinder(ct, pt, brain[:, :, 1:], skull)
    with pytest.raises(ValueError, match="height_voxels must be a positive integer"):
        plan_cylinder(ct, pt, brain, skull, height_voxels=0)
    with pytest.raises(ValueError, match="label map 'Organs' has shape"):
        apply_cylinder(cylinder, ct, pt, {"Organs": small_phantom.labels["Organs"][:, :, :-1]})


def test_deface_array_fills_in_place_what_cylinder_mask_says(small_phantom) -> None:
    ct, _ = _images(small_phantom)
    cylinder = plan_cylinder(ct, _images(small_phantom)[1], *_landmarks(small_phantom))
    volume = np.array(small_phantom.ct_hu, order="F")
    inside = cylinder_mask(cylinder, volume.shape, ct.affine)
    before = volume.copy()
    voxels, nonzero = deface_array(cylinder, volume, ct.affine, CT_FILL_HU)
    assert voxels == int(inside.sum()) > 0 and nonzero == int(np.count_nonzero(before[inside]))
    assert (volume[inside] == CT_FILL_HU).all()
    np.testing.assert_array_equal(volume[~inside], before[~inside])


def test_deface_array_touches_only_the_cylinders_box(tmp_path) -> None:
    # a 1 GB sparse file: the pages the defacing writes are the only ones the file gets
    shape = (512, 512, 2000)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    path = tmp_path / "sparse.raw"
    volume = np.memmap(path, dtype=np.int16, mode="w+", shape=shape, order="F")
    cylinder = DefaceCylinder(z_lo=1900.0, z_hi=1916.0, axis_x=256.0, axis_y=256.0, radius=90.0, landmarks="segmentation")
    voxels, _ = deface_array(cylinder, volume, affine, CT_FILL_HU)
    volume.flush()
    assert voxels > 300_000
    written = path.stat().st_blocks * 512
    assert written < 40 << 20, f"{written / 1e6:.0f} MB of the 1 GB volume were written"
    assert volume[256, 256, 1908] == CT_FILL_HU and volume[256, 256, 1000] == 0


def test_deface_planes_changes_a_slab_as_deface_array_changes_the_whole(small_phantom) -> None:
    """Prepare defaces only the planes it inflated: the same voxels as on the whole volume, by the whole grid."""
    ct, pt = _images(small_phantom)
    cylinder = plan_cylinder(ct, pt, *_landmarks(small_phantom))
    whole = np.array(small_phantom.ct_hu, order="F")
    shape = whole.shape
    start, stop = cylinder_planes(cylinder, shape, ct.affine)
    assert 0 < start < stop < shape[2]
    first = start - 3
    slab = np.array(whole[:, :, first : stop + 2], order="F")
    expected = deface_array(cylinder, whole, ct.affine, CT_FILL_HU)
    assert deface_planes(cylinder, slab, ct.affine, shape, first, CT_FILL_HU) == expected
    np.testing.assert_array_equal(slab, whole[:, :, first : stop + 2])
    np.testing.assert_array_equal(whole[:, :, :start], np.asarray(small_phantom.ct_hu)[:, :, :start])
    with pytest.raises(ValueError, match="do not hold the cylinder's planes"):
        deface_planes(cylinder, slab[:, :, 4:], ct.affine, shape, first + 4, CT_FILL_HU)


@pytest.mark.parametrize("layout", ["fortran", "c", "flipped", "permuted"])
@pytest.mark.parametrize("values", [[3], [3, 9], [3, 9, 200]])
def test_landmark_masks_match_a_comparison_of_every_voxel(layout: str, values: list[int]) -> None:
    # the masks are written a block of planes at a time, only where the label is; every memory
    # order of the map (NIfTI's Fortran order, C order, flipped and permuted views) gives the same mask
    rng = np.random.default_rng(7)
    base = np.zeros((23, 19, 37), dtype=np.uint8)
    base[4:9, 2:15, 3:6] = 3
    base[10:20, 5:9, 17:29] = 9
    base[rng.random(base.shape) < 0.01] = 200
    base[0, 0, 36] = 3  # in the last, partial block of planes
    arrays = {
        "fortran": np.asfortranarray(base),
        "c": np.ascontiguousarray(base),
        "flipped": np.asfortranarray(base)[::-1, :, ::-1],
        "permuted": np.asfortranarray(base).transpose(2, 0, 1),
    }
    labels = arrays[layout]
    names = {str(v): "brain" for v in values}
    brain, skull = landmark_masks({"Organs": labels}, {"Organs": names, "Peripheral-Bones": {}})
    assert skull is None
    assert brain is not None and brain.dtype == bool and brain.shape == labels.shape
    np.testing.assert_array_equal(brain, np.isin(labels, values))
