"""QC pictures of really prepared phantom cases, checked on their pixels."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from curation.errors import UnreadableError
from curation.model import (
    CATEGORIES,
    CaseQC,
    ConvertedCase,
    ImageFile,
    PreparedCase,
    QCImage,
    Rejection,
    from_jsonable,
    to_jsonable,
)
from curation.nifti import write_nifti
from curation.phantom import write_lesion, write_segmentations, write_study
from curation.qc import (
    FULL_SIZE,
    PALETTE,
    PICTURE_NAMES,
    THUMB_SIZE,
    QCStage,
    label_colours,
    qc_fingerprint,
    qc_outputs,
    render_case_qc,
)
from curation.stage import read_record
from curation.state import StatePaths
from tests.curation.conftest import MOOSE, RELEASE, ingest_one, make_site, prepare

AFTER = ("head-sagittal-after", "head-axial-after")
BEFORE = ("head-sagittal-before", "head-axial-before")
BODY = ("pet-mip-coronal", "fusion-coronal", "ct-labels-coronal", "ct-labels-sagittal")


@dataclasses.dataclass(frozen=True)
class Rendered:
    case: ConvertedCase
    prepared: PreparedCase
    qc: CaseQC

    def image(self, name: str) -> QCImage:
        (image,) = [i for i in self.qc.images if i.name == name]
        return image

    def pixels(self, name: str) -> np.ndarray:
        return np.asarray(Image.open(self.image(name).full.path).convert("RGB"))


def render(case: ConvertedCase, prepared: PreparedCase, out_dir: Path, **changes) -> CaseQC:
    return render_case_qc(case, prepared, out_dir, source_table=changes.get("source_table", MOOSE),
                          release_labels=RELEASE)


def prepared_and_rendered(phantom, case: ConvertedCase, root: Path, *, deface: bool) -> Rendered:
    site = make_site(root, deface=deface)
    write_segmentations(phantom, site.segmentations_dir, case.StudyInstanceUID)
    write_lesion(phantom, site.lesions_dir, case.StudyInstanceUID)
    prepared = prepare(case, site, root)
    assert isinstance(prepared, PreparedCase), prepared
    return Rendered(case, prepared, render(case, prepared, StatePaths(root / "state").qc_dir(case.key)))


@pytest.fixture(scope="module")
def defaced(small_phantom, ingested, tmp_path_factory) -> Rendered:
    return prepared_and_rendered(small_phantom, ingested, tmp_path_factory.mktemp("qc_defaced"), deface=True)


@pytest.fixture(scope="module")
def undefaced(small_phantom, ingested, tmp_path_factory) -> Rendered:
    return prepared_and_rendered(small_phantom, ingested, tmp_path_factory.mktemp("qc_undefaced"), deface=False)


@pytest.fixture(scope="module")
def feet_first(small_phantom_ffs, tmp_path_factory) -> Rendered:
    root = tmp_path_factory.mktemp("qc_ffs")
    study = write_study(small_phantom_ffs, root / "drop", vendor="ge", seed=3, patient_id="LEI-0003",
                        patient_name="LEI-0003", decoys=False)
    case = ingest_one(study.root, study.StudyInstanceUID, root)
    return prepared_and_rendered(small_phantom_ffs, case, root, deface=False)


def pixel_of(image: QCImage, world: tuple[float, float, float]) -> tuple[float, float]:
    """(column, row) where a picture shows a world (RAS+) point in its plane."""
    basis = np.array([image.right, image.down]).T
    (col, row), *_ = np.linalg.lstsq(basis, np.subtract(world, image.top_left), rcond=None)
    return float(col), float(row)


def cylinder_box(rendered: Rendered, image: QCImage, cylinder, margin_mm: float) -> tuple[slice, slice]:
    """Rows and columns of ``image`` well inside the cylinder: its cut shrunk by ``margin_mm``."""
    mm = float(np.linalg.norm(image.right))
    if image.name.startswith("head-sagittal"):
        corners = [(cylinder.axis_x, cylinder.axis_y + s * cylinder.radius, z)
                   for s, z in ((1, cylinder.z_hi), (-1, cylinder.z_lo))]
    else:  # the square inscribed in the axial circle
        half = cylinder.radius / np.sqrt(2)
        z = image.top_left[2]
        corners = [(cylinder.axis_x + s * half, cylinder.axis_y + s * half, z) for s in (1, -1)]
    (c0, r0), (c1, r1) = (pixel_of(image, c) for c in corners)
    inset = margin_mm / mm
    return slice(round(r0 + inset), round(r1 - inset)), slice(round(c0 + inset), round(c1 - inset))


# ---------------------------------------------------------------------------


def test_pictures_files_and_record(defaced: Rendered, undefaced: Rendered, tmp_path: Path) -> None:
    qc = defaced.qc
    assert [i.name for i in qc.images] == [*BODY, BEFORE[0], AFTER[0], BEFORE[1], AFTER[1]] == list(PICTURE_NAMES)
    assert [i.name for i in undefaced.qc.images] == [*BODY, *AFTER]
    folder = StatePaths(Path(qc.images[0].full.path).parents[3]).qc_dir(defaced.case.key)
    assert sorted(qc_outputs(qc)) == sorted(p.name for p in folder.iterdir())
    assert len(qc_outputs(qc)) == 2 * len(qc.images)
    for name, file in qc_outputs(qc).items():
        assert Path(file.path) == folder / name
        assert hashlib.sha256(Path(file.path).read_bytes()).hexdigest() == file.sha256
        with Image.open(file.path) as png:
            assert png.format == "PNG" and png.size == (file.width, file.height) and png.mode == "RGB"
            assert not png.info  # no text, time or dpi chunk: the bytes depend on the pixels only
    for image in qc.images:
        assert Path(image.full.path).name == f"{image.name}.png"
        assert max(image.thumbnail.width, image.thumbnail.height) == THUMB_SIZE
    # square pixels, longer side FULL_SIZE, the CT's extent: 64 x 7 mm wide, 120 x 5 mm high
    mip = defaced.image("pet-mip-coronal")
    assert (mip.full.width, mip.full.height) == (round(448 / 600 * FULL_SIZE), FULL_SIZE)
    assert np.linalg.norm(mip.right) == pytest.approx(600 / FULL_SIZE)
    assert np.linalg.norm(mip.down) == pytest.approx(600 / FULL_SIZE)

    # the numbers beside the pictures
    ct0 = np.asanyarray(nib.load(defaced.case.ct.path).dataobj)
    ct1 = np.asanyarray(nib.load(defaced.prepared.ct.path).dataobj)
    assert qc.face_voxels_blanked == int(np.count_nonzero(ct0 != ct1)) > 1000
    assert undefaced.qc.face_voxels_blanked == 0
    assert (qc.head_view, undefaced.qc.head_view) == ("cylinder", "brain-label")
    assert qc.colours == "recommendedDisplayRGBValue" and qc.defaced and not undefaced.qc.defaced
    assert qc.pet_inside_body > 0.9 and undefaced.qc.pet_inside_body > 0.9
    assert qc.pet_max == pytest.approx(float(np.asanyarray(nib.load(defaced.prepared.pt.path).dataobj).max()))
    assert qc.fingerprint == qc_fingerprint(defaced.case, defaced.prepared, source_table=MOOSE,
                                            release_labels=RELEASE)

    # the record round-trips through JSON
    assert from_jsonable(CaseQC, to_jsonable(qc)) == qc


def test_same_inputs_same_bytes_and_stale_pictures_go(defaced: Rendered, tmp_path: Path) -> None:
    again = render(defaced.case, defaced.prepared, tmp_path / "qc")
    assert [(i.full.sha256, i.thumbnail.sha256) for i in again.images] == [
        (i.full.sha256, i.thumbnail.sha256) for i in defaced.qc.images
    ]
    # the same folder, now for the case as not defaced: the "before" pictures are removed
    plain = dataclasses.replace(defaced.prepared, defaced=False, cylinder=None)
    render(defaced.case, plain, tmp_path / "qc")
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == sorted(
        f"{name}{suffix}" for name in (*BODY, *AFTER) for suffix in (".png", ".thumb.png")
    )


def test_defaced_region_is_empty_after_and_not_before_nor_when_not_defaced(
    defaced: Rendered, undefaced: Rendered
) -> None:
    cylinder = defaced.prepared.cylinder
    assert cylinder is not None
    # nearest-voxel sampling may show a voxel whose centre is up to a voxel away: stay that far inside
    spacing = float(max(np.linalg.norm(np.array(defaced.case.ct.affine)[:3, :3], axis=0)))
    for after_name, before_name in zip(AFTER, BEFORE, strict=True):
        after, before = defaced.pixels(after_name), defaced.pixels(before_name)
        rows, cols = cylinder_box(defaced, defaced.image(after_name), cylinder, margin_mm=spacing + 2)
        assert rows.stop - rows.start > 20 and cols.stop - cols.start > 20, (after_name, rows, cols)
        region = after[rows, cols]
        assert np.all(region == 0), f"{after_name}: the defaced region is not empty"
        # the same place before defacing: the face and the brain are there
        assert defaced.image(before_name).top_left == defaced.image(after_name).top_left
        assert np.count_nonzero(before[rows, cols].max(axis=2) > 40) > 0.3 * region.shape[0] * region.shape[1]
        # a case that is not defaced: the same world region, in its own head picture, is not empty
        plain = undefaced.image(after_name)
        rows2, cols2 = cylinder_box(undefaced, plain, cylinder, margin_mm=spacing + 2)
        shown = undefaced.pixels(after_name)[max(rows2.start, 0):rows2.stop, max(cols2.start, 0):cols2.stop]
        assert shown.size > 0.5 * region.size
        assert np.count_nonzero(shown.max(axis=2) > 40) > 0.3 * shown.shape[0] * shown.shape[1], after_name
        # and the cylinder is outlined in yellow on the defaced case's pictures only
        assert np.any(np.all(after == (255, 255, 0), axis=2))
        assert not np.any(np.all(undefaced.pixels(after_name) == (255, 255, 0), axis=2))


@pytest.mark.parametrize("which", ["head-first", "feet-first"])
def test_patient_orientation(which: str, undefaced: Rendered, feet_first: Rendered, small_phantom) -> None:
    rendered = undefaced if which == "head-first" else feet_first
    assert rendered.case.ct.affine != undefaced.case.ct.affine or which == "head-first"
    labels = rendered.pixels("ct-labels-coronal")
    height, width, _ = labels.shape

    def where(category: str, name: str) -> tuple[float, float]:
        colour = MOOSE.colour_of(category, name)
        hits = np.nonzero(np.all(labels == colour, axis=2))
        assert hits[0].size > 20, (category, name)
        return float(hits[0].mean()) / height, float(hits[1].mean()) / width

    brain_row, _ = where("Organs", "brain")
    liver_row, liver_col = where("Organs", "liver")
    _, spleen_col = where("Organs", "spleen")
    assert brain_row < 0.2 < liver_row  # head up
    assert liver_col < 0.5 < spleen_col  # the patient's right (liver) on the viewer's left

    # the hot lesion of the right lung on the MIP, at its world position; nothing at the mirror image
    mip = rendered.pixels("pet-mip-coronal")[:, :, 0].astype(int)
    x, y, z = small_phantom.lesion_centre  # DICOM LPS
    col, row = pixel_of(rendered.image("pet-mip-coronal"), (-x, -y, z))
    mirror, _ = pixel_of(rendered.image("pet-mip-coronal"), (x, -y, z))
    assert col < width / 2 < mirror
    assert mip[round(row), round(col)] < 40 < mip[round(row), round(mirror)] - 60


def reordered(image: ImageFile, path: Path, order: str) -> ImageFile:
    """The same volume written with its axes flipped or permuted (the same grid in world space)."""
    img = nib.load(image.path)
    data = np.asanyarray(img.dataobj)
    if order == "flipped":
        ornt = np.array([[0, -1], [1, 1], [2, -1]])
    else:
        ornt = np.array([[2, 1], [0, 1], [1, -1]])
    moved = img.as_reoriented(ornt)
    return write_nifti(np.asanyarray(moved.dataobj).astype(data.dtype), moved.affine, path, dtype=data.dtype.type)


@pytest.mark.parametrize("order", ["flipped", "permuted"])
def test_axis_order_does_not_change_the_pictures(order: str, defaced: Rendered, tmp_path: Path) -> None:
    prepared = dataclasses.replace(
        defaced.prepared,
        ct=reordered(defaced.prepared.ct, tmp_path / "CT.nii.gz", order),
        pt=reordered(defaced.prepared.pt, tmp_path / "PT.nii.gz", order),
        labels={c: reordered(f, tmp_path / f"{c}.nii.gz", order) for c, f in defaced.prepared.labels.items()},
    )
    prepared = dataclasses.replace(
        prepared, head_before=reordered(defaced.prepared.head_before, tmp_path / "CT-head-before.nii.gz", order))
    case = defaced.case
    assert prepared.ct.shape != defaced.prepared.ct.shape or order == "flipped"
    assert prepared.ct.sha256 != defaced.prepared.ct.sha256
    qc = render(case, prepared, tmp_path / "qc")
    assert [(i.name, i.full.sha256) for i in qc.images] == [(i.name, i.full.sha256) for i in defaced.qc.images]


def multi_member(image: ImageFile, path: Path, members: int) -> ImageFile:
    """The same NIfTI bytes written as ``members`` concatenated gzip members, cut at uneven offsets."""
    data = gzip.decompress(Path(image.path).read_bytes())
    cuts = [0, *(len(data) * k // members + 7 * k for k in range(1, members)), len(data)]
    raw = b"".join(gzip.compress(data[a:b], mtime=0) for a, b in itertools.pairwise(cuts))
    path.write_bytes(raw)
    return dataclasses.replace(image, path=str(path), sha256=hashlib.sha256(raw).hexdigest())


def test_multi_member_gzip_volumes_are_read_whole(defaced: Rendered, tmp_path: Path) -> None:
    # a .nii.gz may be written as concatenated gzip members (independent blocks): every member is voxels
    before = defaced.prepared.head_before
    prepared = dataclasses.replace(
        defaced.prepared,
        ct=multi_member(defaced.prepared.ct, tmp_path / "CT.nii.gz", 2),
        pt=multi_member(defaced.prepared.pt, tmp_path / "PT.nii.gz", 3),
        labels={c: multi_member(f, tmp_path / f"{c}.nii.gz", 2) for c, f in defaced.prepared.labels.items()},
        head_before=multi_member(before, tmp_path / "CT-head-before.nii.gz", 2),
    )
    assert gzip.decompress(Path(prepared.ct.path).read_bytes()) == gzip.decompress(
        Path(defaced.prepared.ct.path).read_bytes())
    qc = render(defaced.case, prepared, tmp_path / "qc")
    assert [(i.name, i.full.sha256) for i in qc.images] == [(i.name, i.full.sha256) for i in defaced.qc.images]
    assert qc.face_voxels_blanked == defaced.qc.face_voxels_blanked > 0

    # the first member alone is a short file, not a smaller volume
    ct = Path(prepared.ct.path)
    first = gzip.compress(gzip.decompress(Path(defaced.prepared.ct.path).read_bytes())[:4096], mtime=0)
    ct.write_bytes(first)
    short = dataclasses.replace(prepared, ct=dataclasses.replace(prepared.ct, sha256=hashlib.sha256(first).hexdigest()))
    with pytest.raises(UnreadableError, match=r"CT .*CT\.nii\.gz: the file ends in its voxel data"):
        render(defaced.case, short, tmp_path / "qc-short")


def test_the_public_gzip_reader_gives_the_same_pictures(defaced: Rendered, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # igzip's raw reader is not a public name: without it the public IGzipFile reads the same voxels
    from isal import igzip

    monkeypatch.delattr(igzip, "_IGzipReader")
    qc = render(defaced.case, defaced.prepared, tmp_path / "qc")
    assert [(i.name, i.full.sha256) for i in qc.images] == [(i.name, i.full.sha256) for i in defaced.qc.images]


def test_misregistered_pet_is_told(defaced: Rendered, tmp_path: Path) -> None:
    img = nib.load(defaced.prepared.pt.path)
    shifted = np.array(img.affine)
    shifted[0, 3] += 120.0  # the PET 12 cm to the patient's right (RAS +x) of the CT
    pt = write_nifti(np.asanyarray(img.dataobj), shifted, tmp_path / "PT.nii.gz", dtype=np.float32)
    qc = render(defaced.case, dataclasses.replace(defaced.prepared, pt=pt), tmp_path / "qc")
    assert qc.pet_inside_body < defaced.qc.pet_inside_body - 0.2
    # on the fusion picture the PET's colours move to the viewer's left, where the patient's right is
    fused = np.asarray(Image.open(next(i.full.path for i in qc.images if i.name == "fusion-coronal")).convert("RGB"))
    good = defaced.pixels("fusion-coronal")
    coloured = lambda rgb: (rgb[:, :, 0].astype(int) - rgb[:, :, 2]) > 60  # noqa: E731 (red-yellow hues)
    assert coloured(fused).sum() > 0 and coloured(good).sum() > 0
    mm = np.linalg.norm(defaced.image("fusion-coronal").right)
    moved = np.nonzero(coloured(good))[1].mean() - np.nonzero(coloured(fused))[1].mean()
    assert moved == pytest.approx(120 / mm, rel=0.25)


def test_changed_input_is_refused(defaced: Rendered, tmp_path: Path) -> None:
    organs = tmp_path / "Organs.nii.gz"
    organs.write_bytes(Path(defaced.prepared.labels["Organs"].path).read_bytes() + b"\0")
    prepared = dataclasses.replace(
        defaced.prepared, labels={**defaced.prepared.labels,
                                  "Organs": dataclasses.replace(defaced.prepared.labels["Organs"], path=str(organs))}
    )
    with pytest.raises(UnreadableError, match=r"Organs label map .*Organs\.nii\.gz has sha256 .* its record says"):
        render(defaced.case, prepared, tmp_path / "qc")
    with pytest.raises(ValueError, match="is not the preparation of case"):
        render(dataclasses.replace(defaced.case, StudyInstanceUID="1.2.3"), defaced.prepared, tmp_path / "qc")


def test_label_colours_by_name_or_palette() -> None:
    brain = RELEASE.values_by_name("Organs")["brain"]
    lut, from_table = label_colours("Organs", RELEASE, MOOSE)
    assert tuple(lut[brain]) == MOOSE.colour_of("Organs", "brain") and from_table == len(RELEASE.categories["Organs"])
    bare = dataclasses.replace(MOOSE, colours={})
    lut, from_table = label_colours("Organs", RELEASE, bare)
    assert tuple(lut[brain]) == PALETTE[brain % len(PALETTE)] and from_table == 0
    assert not lut[0].any()


def test_fingerprint_covers_what_is_drawn(defaced: Rendered, undefaced: Rendered) -> None:
    def fingerprint(r: Rendered, **changes) -> str:
        return qc_fingerprint(dataclasses.replace(r.case, **changes), r.prepared, source_table=MOOSE,
                              release_labels=RELEASE)

    other_ct = dataclasses.replace(defaced.case.ct, sha256="0" * 64)
    # the converted CT is not drawn: its head cube before defacing is, for a defaced case
    assert fingerprint(defaced, ct=other_ct) == defaced.qc.fingerprint
    assert fingerprint(undefaced, ct=other_ct) == undefaced.qc.fingerprint
    other_cube = dataclasses.replace(defaced.prepared.head_before, sha256="0" * 64)
    assert qc_fingerprint(defaced.case, dataclasses.replace(defaced.prepared, head_before=other_cube),
                          source_table=MOOSE, release_labels=RELEASE) != defaced.qc.fingerprint
    assert defaced.qc.fingerprint != undefaced.qc.fingerprint
    for category in CATEGORIES:
        changed = dataclasses.replace(undefaced.prepared, labels={
            **undefaced.prepared.labels, category: dataclasses.replace(undefaced.prepared.labels[category],
                                                                     sha256="1" * 64)})
        assert qc_fingerprint(undefaced.case, changed, source_table=MOOSE,
                              release_labels=RELEASE) != undefaced.qc.fingerprint
    other_table = dataclasses.replace(MOOSE, digest="2" * 64)
    assert qc_fingerprint(undefaced.case, undefaced.prepared, source_table=other_table,
                          release_labels=RELEASE) != undefaced.qc.fingerprint


def test_the_qc_stage_records_reuses_and_redoes(defaced: Rendered, tmp_path: Path) -> None:
    state = StatePaths(tmp_path / "state")
    stage = QCStage(state=state, release_labels=RELEASE, source_table=MOOSE)
    upstream = (defaced.case, defaced.prepared)
    first = stage.run(upstream)
    assert first.fresh and isinstance(first.outcome, CaseQC)
    qc = first.outcome
    # the stage's fingerprint is qc_fingerprint; pictures in the report folder, record beside it
    assert qc.fingerprint == stage.fingerprint(upstream) == defaced.qc.fingerprint
    assert read_record(state.qc_record(defaced.case.key), CaseQC) == qc
    assert {Path(f.path).parent for f in qc_outputs(qc).values()} == {state.qc_dir(defaced.case.key)}
    assert [(i.name, i.full.sha256) for i in qc.images] == [(i.name, i.full.sha256) for i in defaced.qc.images]
    assert stage.parameters(qc)["face_voxels_blanked"] == defaced.qc.face_voxels_blanked > 0

    again = stage.run(upstream)
    assert not again.fresh and again.outcome == qc
    # a damaged picture: drawn again
    victim = Path(qc.images[0].thumbnail.path)
    victim.write_bytes(b"not a png")
    redone = stage.run(upstream)
    assert redone.fresh and redone.outcome == qc
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == qc.images[0].thumbnail.sha256
    # a volume that is not what its record says: the case is held back (unreadable)
    bad = dataclasses.replace(defaced.prepared, pt=dataclasses.replace(defaced.prepared.pt, sha256="0" * 64))
    held = stage.run((defaced.case, bad))
    assert isinstance(held.outcome, Rejection) and held.outcome.reason.value == "unreadable"
    assert held.outcome.stage == "qc" and held.outcome.phase.value == "build"
