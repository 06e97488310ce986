"""Preparing a converted case for release: label maps, lesion subtraction, defacing.

:func:`prepare_case` turns a :class:`~curation.model.ConvertedCase` into a
:class:`~curation.model.PreparedCase` under ``state.prepared_dir(key)``:

1. for sites with ``deface = true``, read the two landmark categories (Organs
   ``brain``, Peripheral-Bones ``skull``) onto the CT grid in release values
   (:mod:`curation.segmentations`) and plan the cylinder
   (:mod:`anonymization.deface`) from them *before* the lesion is subtracted: a
   lesion inside the head is still head; a scan that does not reach the head is
   held back (``head-not-found``) unless the site says
   ``deface_missing_head = "release"``;
2. deface the converted CT and PET in place, only the voxels of the cylinder's
   box, and write ``CT.nii.gz`` (int16) and ``PT.nii.gz`` (float32);
3. one category at a time (the stage's threads at once): read the map, remap
   it to release values, subtract the lesion mask (the released labels describe
   healthy tissue only), clear the cylinder (with ``clear_labels``), write
   ``<Category>.nii.gz`` (uint8) and let it go, so memory holds the CT, the PET
   and a few label maps, never all seven;
4. write ``prepared.json`` (:class:`PrepareStage`).

A problem is reported in that order: the landmark maps, the lesion mask, the
head, then the other categories in release order.

Images of cases that are not defaced are not rewritten: the prepared case
refers to the converted files.

The step is the :class:`PrepareStage` (see :mod:`curation.stage` for reuse and
records): its fingerprint covers every input (the converted volumes' sha256,
the content of every segmentation and lesion file, the defacing settings and
site switches, both label tables), and a case whose record carries the same
fingerprint and whose outputs are intact is returned without any work.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from anonymization.deface import (
    CT_FILL_HU,
    PET_FILL,
    cylinder_planes,
    deface_array,
    deface_planes,
    landmark_masks,
    plan_cylinder,
    review_box,
)
from curation.atomic import sha256_file
from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
from curation.errors import CurationError, HeadNotFoundError, UnreadableError
from curation.labels import ReleaseLabels, SourceLabelTable, labels_json_bytes
from curation.model import (
    CATEGORIES,
    ConvertedCase,
    DefaceCylinder,
    ImageFile,
    Phase,
    PreparedCase,
    Rejection,
    to_jsonable,
)
from curation.nifti import (
    NIFTI_READ_ERRORS,
    IndexedNifti,
    load_nifti,
    write_compressed,
    write_nifti,
)
from curation.segmentations import (
    CategoryMap,
    category_files_in,
    find_category_files,
    lesion_file,
    load_category,
    load_lesion_mask,
)
from curation.stage import CaseStage, StudySubject
from curation.state import StatePaths
from curation.threads import stage_threads

logger = logging.getLogger(__name__)

def _input_files(case: ConvertedCase, site: SiteConfig) -> tuple[list[Path], Path | None]:
    """Every segmentation file of the study's folder, and the lesion file if there is one.

    Paths are built from the StudyInstanceUID only through the checks of
    :mod:`curation.uids` (a conforming UID; nothing outside the configured folders).
    """
    segs = category_files_in(site.segmentations_dir, case.StudyInstanceUID)
    lesion = lesion_file(site.lesions_dir, case.StudyInstanceUID)
    return segs, lesion if lesion is not None and lesion.is_file() else None


# ---------------------------------------------------------------------------
# the step


def _mapped(path: str) -> mmap.mmap | bytes:
    """A file's bytes, mapped read-only rather than copied into fresh memory.

    A converted volume is only ever replaced by a rename, never changed in
    place, so the mapping keeps the bytes that were hashed; the members
    defacing does not change are written from it as they are.
    """
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""  # an empty file cannot be mapped; it is refused as unreadable below
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _load_converted(image: ImageFile, what: str, *, voxels: bool) -> tuple[nib.Nifti1Image, IndexedNifti | None]:
    """Read a converted volume (one read), checking it is still the file ingest recorded.

    With ``voxels`` the voxels are wanted (defacing): a file in
    :mod:`curation.nifti`'s member layout is kept compressed (its image reads a
    slab of planes alone, and :class:`~curation.nifti.IndexedNifti` rewrites only
    the members defacing changes); any other is inflated into memory (writable:
    defacing changes it in place).  Without, only the header is read (the grid
    of an undefaced case).
    """
    try:
        raw = _mapped(image.path) if voxels else None
        indexed = IndexedNifti.from_bytes(raw, image.path) if raw is not None else None
        if indexed is not None:
            img, digest = indexed.image, hashlib.sha256(raw).hexdigest()  # type: ignore[arg-type]
        else:
            loaded = load_nifti(image.path, voxels=voxels)
            img, digest = loaded.image, loaded.sha256
    except NIFTI_READ_ERRORS as exc:
        raise UnreadableError(f"converted {what} {image.path} cannot be read ({exc}); run ingest again") from None
    if digest != image.sha256:
        raise UnreadableError(
            f"converted {what} {image.path} has sha256 {digest[:12]}..., ingest recorded "
            f"{image.sha256[:12]}...; run ingest again"
        )
    if tuple(img.shape) != tuple(image.shape):
        raise UnreadableError(
            f"converted {what} {image.path} has shape {img.shape}, its record says {image.shape}; run ingest again"
        )
    return img, indexed


def _typed(data: np.ndarray, dtype: type, what: str) -> np.ndarray:
    """``data`` as ``dtype``, refusing values the type cannot hold exactly."""
    array = np.asanyarray(data)
    if array.dtype == np.dtype(dtype):
        return array
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        if not (np.all(np.isfinite(array)) and np.all(np.rint(array) == array)
                and array.min() >= info.min and array.max() <= info.max):
            raise UnreadableError(f"{what}: values do not fit {np.dtype(dtype)} exactly")
    return array.astype(dtype)


#: A defaced case's head cube of the converted CT before defacing (state only, never released).
HEAD_BEFORE = "CT-head-before.nii.gz"
#: The categories holding the defacing landmarks (Organs ``brain``, Peripheral-Bones ``skull``).
LANDMARK_CATEGORIES = ("Organs", "Peripheral-Bones")


@dataclass(frozen=True)
class _Written:
    """One category map as written: its file, dropped labels and lesion voxels removed."""

    image: ImageFile
    dropped: tuple[str, ...]
    dropped_voxels: int
    lesion_voxels: int


def _lesion_index(mask: np.ndarray | None) -> np.ndarray | None:
    """Flat indices (Fortran order) of a lesion mask's voxels: lesions are small, 7 maps use them."""
    if mask is None:
        return None
    return np.flatnonzero(mask.ravel(order="F"))


def _finish_category(
    loaded: CategoryMap,
    path: Path,
    *,
    affine: np.ndarray,
    lesion: np.ndarray | None,
    cylinder: DefaceCylinder | None,
    clear_labels: bool,
) -> _Written:
    """Lesion out, the cylinder cleared, written: one category, in place in its own array."""
    array = np.asfortranarray(loaded.array)  # a copy only for a map delivered in another axis order
    removed = 0
    if lesion is not None and lesion.size:
        flat = array.reshape(-1, order="F")  # a view: the array is Fortran-ordered
        removed = int(np.count_nonzero(flat[lesion]))
        flat[lesion] = 0
    if cylinder is not None and clear_labels:
        deface_array(cylinder, array, affine, 0)
    image = write_nifti(array, affine, path, dtype=np.uint8)
    return _Written(image, loaded.dropped, loaded.dropped_voxels, removed)


class _PlanningFailed(RuntimeError):
    """A category map left unfinished because the cylinder's planning failed (that error is raised)."""


def _results_in_order(futures: dict[str, Future[Any]]) -> dict[str, Any]:
    """Every future's result by name, in the dict's order; the first error in that order is raised.

    Work not yet started is cancelled as soon as one fails.
    """
    results: dict[str, Any] = {}
    try:
        for name, future in futures.items():
            results[name] = future.result()
    except BaseException:
        for future in futures.values():
            future.cancel()
        raise
    return results


def _prepare(
    case: ConvertedCase,
    site: SiteConfig,
    out_dir: Path,
    fingerprint: str,
    *,
    defacing: DefacingSettings,
    release_labels: ReleaseLabels,
    source_table: SourceLabelTable,
) -> PreparedCase:
    files = find_category_files(site.segmentations_dir, case.StudyInstanceUID)
    ct_img, ct_indexed = _load_converted(case.ct, "CT", voxels=site.deface)
    pt_img, pt_indexed = _load_converted(case.pt, "PET", voxels=site.deface)

    def load(category: str) -> CategoryMap:
        return load_category(files[category], ct_img, category, source=source_table, release=release_labels)

    def load_landmark(category: str) -> tuple[CategoryMap, np.ndarray | None]:
        """A landmark category's map and its landmark's mask (brain or skull), each on a worker of its own."""
        loaded = load(category)
        masks = landmark_masks({category: loaded.array}, release_labels.categories)
        return loaded, masks[LANDMARK_CATEGORIES.index(category)]

    ct_out, pt_out, before_out = out_dir / "CT.nii.gz", out_dir / "PT.nii.gz", out_dir / HEAD_BEFORE
    cylinder: DefaceCylinder | None = None
    head_missing_released = False
    lesion: np.ndarray | None = None
    planned = threading.Event()  # set once the cylinder and the lesion are known, or their planning failed

    def write_image(img: nib.Nifti1Image, indexed: IndexedNifti | None, source: ImageFile, out: Path,
                    fill: float, dtype: type, *, keep: tuple[slice, ...] | None = None) -> tuple[ImageFile, np.ndarray | None]:
        """Deface one volume and write it; with ``keep``, also the voxels of that box as they were."""
        assert cylinder is not None
        shape = tuple(int(n) for n in img.shape)
        if indexed is not None and indexed.dtype == np.dtype(dtype):
            # only the members holding the cylinder's planes (and the kept box's) are inflated and compressed again
            lo, hi = cylinder_planes(cylinder, shape, img.affine)
            if keep is not None:
                lo, hi = min(lo, keep[2].start), max(hi, keep[2].stop)
            first, stop = indexed.member_bounds(lo, max(hi, lo + 1))
            planes = indexed.planes(first, stop)
            kept = None if keep is None else np.array(planes[keep[0], keep[1], keep[2].start - first : keep[2].stop - first])
            deface_planes(cylinder, planes, img.affine, shape, first, fill)
            volume = indexed.with_planes(first, planes, img.affine, dtype=dtype)
            return write_compressed(volume, out), kept
        array = np.asanyarray(img.dataobj)  # the converted volume, in memory and writable: changed in place
        kept = None if keep is None else np.array(array[keep])
        deface_array(cylinder, array, img.affine, fill)  # only the voxels of the cylinder's box
        return write_nifti(_typed(array, dtype, source.path), img.affine, out, dtype=dtype), kept

    def write_ct(img: nib.Nifti1Image) -> tuple[ImageFile, ImageFile]:
        # the head cube as converted, kept for the QC pictures before it is defaced
        assert cylinder is not None
        box = review_box(cylinder, tuple(int(n) for n in img.shape), img.affine)
        ct_file, kept = write_image(img, ct_indexed, case.ct, ct_out, CT_FILL_HU, np.int16, keep=box)
        assert kept is not None
        shift = np.eye(4)
        shift[:3, 3] = [b.start for b in box]
        before = write_nifti(_typed(kept, np.int16, case.ct.path), img.affine @ shift, before_out, dtype=np.int16)
        return ct_file, before

    def finish(category: str, loaded: CategoryMap | None = None) -> _Written:
        loaded = load(category) if loaded is None else loaded  # read and remapped while the cylinder is planned
        planned.wait()
        if not done_planning:
            raise _PlanningFailed(category)  # never seen: the planning's own error is raised
        return _finish_category(loaded, out_dir / f"{category}.nii.gz", affine=ct_img.affine, lesion=lesion,
                                cylinder=cylinder, clear_labels=defacing.clear_labels)

    done_planning = False
    # one category at a time per worker: read, remap, lesion out, cylinder cleared, written, dropped;
    # the maps that are not landmarks are read while the landmarks plan the cylinder
    # category maps read, remapped and written at once (curation.threads.stage_threads, 2 alone):
    # each holds one CT-sized uint8 volume (84 MB at 512x512x320), and most of the work
    # (inflating, remapping, compressing) runs outside the GIL, so two use two cores
    with ThreadPoolExecutor(max_workers=stage_threads()) as pool:
        # landmarks come from the maps before the lesion is subtracted: a lesion in the head is still head
        landmarks = {c: pool.submit(load_landmark, c) for c in LANDMARK_CATEGORIES} if site.deface else {}
        lesion_future = pool.submit(
            lambda: _lesion_index(load_lesion_mask(lesion_file(site.lesions_dir, case.StudyInstanceUID), ct_img))
        )
        later = {c: pool.submit(finish, c) for c in CATEGORIES if c not in landmarks}
        try:
            found = {category: future.result() for category, future in landmarks.items()}
            landmarks.clear()  # a future keeps its result: the maps and masks would live to the end
            early = {category: loaded for category, (loaded, _) in found.items()}
            masks = [found[c][1] if c in found else None for c in LANDMARK_CATEGORIES]
            del found
            # the cylinder is planned while the lesion mask is still being read (planning does not
            # need it); a problem with the lesion mask is still reported before one with the head
            head_problem: Exception | None = None
            if site.deface:
                brain, skull = masks
                masks.clear()
                try:
                    cylinder = plan_cylinder(
                        ct_img, pt_img, brain, skull,
                        height_voxels=defacing.height_voxels, margin_mm=defacing.margin_mm,
                    )
                except Exception as exc:  # raised below, after the lesion mask's problem if it has one
                    head_problem = exc
                del brain, skull
            lesion = lesion_future.result()
            if head_problem is not None:
                if not isinstance(head_problem, HeadNotFoundError) \
                        or site.deface_missing_head is not MissingHeadPolicy.RELEASE:
                    raise head_problem
                head_missing_released = True
                logger.warning(
                    "case %s: released without defacing (deface_missing_head = release): %s",
                    case.key, head_problem.message,
                )
            done_planning = True
        finally:
            if not done_planning:
                for future in later.values():
                    future.cancel()
            planned.set()

        # the landmarks' maps, read already, are queued for the workers too; this thread writes the
        # CT and the PET, then finishes those the workers have not started
        submitted: dict[str, Future[_Written]] = {**later, **{c: pool.submit(finish, c, m) for c, m in early.items()}}
        defaced: tuple[tuple[ImageFile, ImageFile], tuple[ImageFile, np.ndarray | None]] | BaseException | None = None
        if cylinder is None:
            # not defaced: the converted files are released as they are
            for stale in (ct_out, pt_out, before_out):
                stale.unlink(missing_ok=True)
        else:
            # on this thread, while the workers finish the maps (queued behind them, the CT's
            # planes would be compressed again last, alone); its errors come after the maps'
            try:
                defaced = (write_ct(ct_img),
                           write_image(pt_img, pt_indexed, case.pt, pt_out, PET_FILL, np.float32))
            except Exception as exc:  # raised below, after the maps' errors
                defaced = exc
        for category, loaded in early.items():
            if submitted[category].cancel():  # still queued: finished here
                done: Future[_Written] = Future()
                try:
                    done.set_result(finish(category, loaded))
                except Exception as exc:  # raised in the maps' order below
                    done.set_exception(exc)
                submitted[category] = done
        early.clear()
        written: dict[str, _Written] = _results_in_order({c: submitted[c] for c in CATEGORIES})
        if isinstance(defaced, BaseException):
            raise defaced
        if defaced is not None:
            (ct_file, head_before), (pt_file, _) = defaced
        else:
            ct_file, pt_file, head_before = case.ct, case.pt, None

    labels = {category: written[category].image for category in CATEGORIES}
    dropped = {c: list(w.dropped) for c, w in written.items() if w.dropped}
    dropped_voxels = {c: w.dropped_voxels for c, w in written.items() if w.dropped}
    removed = sum(w.lesion_voxels for w in written.values())
    if lesion is not None:
        logger.info("case %s: lesion mask removed %d label voxels", case.key, removed)
    return PreparedCase(
        site=case.site,
        StudyInstanceUID=case.StudyInstanceUID,
        fingerprint=fingerprint,
        ct=ct_file,
        pt=pt_file,
        labels=labels,
        cylinder=cylinder,
        defaced=cylinder is not None,
        head_missing_released=head_missing_released,
        dropped_labels=dropped,
        lesion_voxels_removed=removed,
        dropped_voxels=dropped_voxels,
        head_before=head_before,
    )


@dataclass(frozen=True)
class PrepareStage(CaseStage[PreparedCase]):
    """Segmentations, lesion subtraction and defacing of one case (upstream: ``(ConvertedCase,)``).

    Attributes
    ----------
    site
        The case's site (``segmentations_dir``, ``lesions_dir``, ``deface``,
        ``deface_missing_head``).
    state
        The state folder; outputs go to ``state.prepared_dir(case.key)``.
    defacing
        The ``[defacing]`` settings.
    release_labels, source_table
        The release label set and the site's source label table
        (``[[site]] label_table``): every map of the site is read through it,
        whatever its file name; its digest is part of the fingerprint, so
        changing a site's table prepares its cases again.
    """

    name: ClassVar[str] = "prepare"
    phase: ClassVar[Phase] = Phase.BUILD
    # 3: input paths checked (conforming UID, inside the configured folders); 4: the head cube before defacing kept
    version: ClassVar[int] = 4
    record_type: ClassVar[type] = PreparedCase
    done: ClassVar[str] = "prepared"
    done_event: ClassVar[str] = "case-prepared"
    input_name: ClassVar[str] = "case"

    site: SiteConfig
    state: StatePaths
    defacing: DefacingSettings
    release_labels: ReleaseLabels
    source_table: SourceLabelTable

    def record_path(self, subject: StudySubject) -> Path:
        """``prepared/<key>/prepared.json``."""
        return self.state.prepared_record(subject.key)

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        """Converted volumes, every segmentation and lesion file, site switches, settings, label tables.

        Input paths that may not be read (a StudyInstanceUID that is not a
        UID, a link leaving its configured folder) are never hashed: the
        refusal stands in for them, and :meth:`produce` raises it.
        """
        (case,) = upstream[:1]
        try:
            segs, lesion = _input_files(case, self.site)
        except CurationError as exc:
            segs, lesion, refused = [], None, f"{exc.reason.value}: {exc.message}"
        else:
            refused = None
        return {
            "ct": case.ct.sha256,
            "pt": case.pt.sha256,
            "segmentations": [[p.name, sha256_file(p)] for p in segs],
            "lesion": sha256_file(lesion) if lesion is not None else None,
            "refused_inputs": refused,
            "deface": self.site.deface,
            "deface_missing_head": self.site.deface_missing_head.value,
            "defacing": to_jsonable(self.defacing) if self.site.deface else None,
            "release_labels": hashlib.sha256(labels_json_bytes(self.release_labels)).hexdigest(),
            "source_table": self.source_table.digest,
        }

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> PreparedCase:
        """Read, subtract, deface and write the case's images and label maps."""
        case: ConvertedCase = upstream[0]
        if case.site != self.site.id:
            raise ValueError(f"case {case.key} belongs to site {case.site!r}, not {self.site.id!r}")
        _input_files(case, self.site)  # raises the refusal of an input path that may not be read
        prepared = _prepare(
            case, self.site, self.state.prepared_dir(case.key), fingerprint,
            defacing=self.defacing, release_labels=self.release_labels, source_table=self.source_table,
        )
        logger.info(
            "case %s: prepared (defaced=%s, dropped %s, %d lesion voxels removed)",
            case.key, prepared.defaced, prepared.dropped_labels or "nothing", prepared.lesion_voxels_removed,
        )
        return prepared

    def outputs(self, record: PreparedCase) -> dict[str, ImageFile]:
        """CT, PET, the seven label maps and, for a defaced case, the head cube before defacing."""
        before = {HEAD_BEFORE: record.head_before} if record.head_before is not None else {}
        return {"CT.nii.gz": record.ct, "PT.nii.gz": record.pt,
                **{f"{cat}.nii.gz": img for cat, img in sorted(record.labels.items())}, **before}

    def parameters(self, record: PreparedCase) -> dict[str, Any]:
        """Defacing (cylinder, landmarks), dropped labels, lesion voxels removed."""
        return {
            "defaced": record.defaced,
            "cylinder": to_jsonable(record.cylinder),
            "head_missing_released": record.head_missing_released,
            "dropped_labels": record.dropped_labels,
            "lesion_voxels_removed": record.lesion_voxels_removed,
        }


def prepare_case(
    case: ConvertedCase,
    site: SiteConfig,
    state: StatePaths,
    *,
    defacing: DefacingSettings,
    release_labels: ReleaseLabels,
    source_table: SourceLabelTable,
) -> PreparedCase | Rejection:
    """Prepare one converted case for release (label maps, lesions, defacing).

    Parameters
    ----------
    case
        A converted case of ``site``.
    site
        Its site configuration.
    state
        The state folder; outputs go to ``state.prepared_dir(case.key)``.
    defacing
        The ``[defacing]`` settings.
    release_labels, source_table
        The release label set and the source label table.

    Returns
    -------
    PreparedCase | Rejection
        The prepared case, or a rejection in phase ``build`` for a data
        problem (segmentation missing, invalid or off the CT grid, head not
        found); either is recorded in ``state``.  ``lesion_voxels_removed``
        counts label voxels set to 0 by the lesion mask over all seven
        categories; ``dropped_voxels`` counts, per category, voxels of source
        labels the release does not carry.

    Raises
    ------
    ValueError
        When ``case`` is not a case of ``site``.
    """
    stage = PrepareStage(site=site, state=state, defacing=defacing,
                         release_labels=release_labels, source_table=source_table)
    return stage.run((case,)).outcome
