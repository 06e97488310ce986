"""Preparing a converted case for release: label maps, lesion subtraction, defacing.

:func:`prepare_case` turns a :class:`~curation.model.ConvertedCase` into a
:class:`~curation.model.PreparedCase` under ``state.prepared_dir(key)``:

1. read the seven category maps onto the CT grid in release values
   (:mod:`curation.segmentations`);
2. take the defacing landmarks (Organs ``brain``, Peripheral-Bones ``skull``)
   from those maps *before* the lesion is subtracted: a lesion inside the head
   is still head, and removing it could move the landmarks;
3. subtract the lesion mask from every category (the released labels describe
   healthy tissue only);
4. for sites with ``deface = true``: plan and apply the cylinder
   (:mod:`anonymization.deface`) to CT, PET and, with ``clear_labels``, the
   labels; a scan that does not reach the head is held back
   (``head-not-found``) unless the site says ``deface_missing_head = "release"``;
5. write ``<Category>.nii.gz`` (uint8) and, for defaced cases, ``CT.nii.gz``
   (int16) and ``PT.nii.gz`` (float32), then ``prepared.json``.

Images of cases that are not defaced are not rewritten: the prepared case
refers to the converted files.

The step is idempotent: its fingerprint covers every input (the converted
volumes' sha256, the content of every segmentation and lesion file, the
defacing settings and site switches, both label tables and
:data:`PREPARE_VERSION`), and a case whose ``prepared.json`` carries the same
fingerprint is returned without any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from anonymization.deface import apply_cylinder, landmark_masks, plan_cylinder
from curation.atomic import sha256_file
from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
from curation.errors import CurationError, HeadNotFoundError, UnreadableError
from curation.labels import ReleaseLabels, SourceLabelTable, labels_json_bytes
from curation.model import (
    CATEGORIES,
    ConvertedCase,
    DefaceCylinder,
    ImageFile,
    PreparedCase,
    Rejection,
    to_jsonable,
)
from curation.nifti import write_nifti
from curation.segmentations import (
    find_category_files,
    is_release_named,
    load_category,
    load_lesion_mask,
)
from curation.state import StatePaths, read_prepared, write_prepared

logger = logging.getLogger(__name__)

#: Part of every fingerprint: raise it when preparation changes what it writes.
PREPARE_VERSION = 1
_RECORD = "prepared.json"


# ---------------------------------------------------------------------------
# fingerprint


def _input_files(case: ConvertedCase, site: SiteConfig) -> tuple[list[Path], Path | None]:
    """Every segmentation file of the study's folder, and the lesion file if there is one."""
    folder = site.segmentations_dir / case.StudyInstanceUID
    segs = sorted(p for p in folder.glob("*.nii.gz") if p.is_file()) if folder.is_dir() else []
    lesion = None
    if site.lesions_dir is not None:
        candidate = site.lesions_dir / f"{case.StudyInstanceUID}.nii.gz"
        lesion = candidate if candidate.is_file() else None
    return segs, lesion


def prepare_fingerprint(
    case: ConvertedCase,
    site: SiteConfig,
    *,
    defacing: DefacingSettings,
    release_labels: ReleaseLabels,
    source_table: SourceLabelTable,
) -> str:
    """The content key of a case's preparation (sha256 hex).

    Covers the converted CT/PT (their recorded sha256), the name and content
    sha256 of every ``.nii.gz`` in the study's segmentation folder and of the
    lesion file, the site's ``deface`` and ``deface_missing_head``, the
    defacing settings (only for defaced sites), both label tables and
    :data:`PREPARE_VERSION`.
    """
    segs, lesion = _input_files(case, site)
    doc = {
        "version": PREPARE_VERSION,
        "ct": case.ct.sha256,
        "pt": case.pt.sha256,
        "segmentations": [[p.name, sha256_file(p)] for p in segs],
        "lesion": sha256_file(lesion) if lesion is not None else None,
        "deface": site.deface,
        "deface_missing_head": site.deface_missing_head.value,
        "defacing": to_jsonable(defacing) if site.deface else None,
        "release_labels": hashlib.sha256(labels_json_bytes(release_labels)).hexdigest(),
        "source_table": source_table.digest,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def _cached(record: Path, fingerprint: str) -> PreparedCase | None:
    if not record.is_file():
        return None
    try:
        prepared = read_prepared(record)
    except (ValueError, KeyError, TypeError) as exc:  # damaged or from another version: redo
        logger.warning("%s: unreadable prepared record (%s); preparing again", record, exc)
        return None
    if prepared.fingerprint != fingerprint:
        return None
    # the outputs must still be the bytes recorded: a damaged or edited file is prepared again
    for image in (prepared.ct, prepared.pt, *prepared.labels.values()):
        if not Path(image.path).is_file() or sha256_file(image.path) != image.sha256:
            logger.warning("%s differs from its record %s; preparing the case again", image.path, record)
            return None
    return prepared


# ---------------------------------------------------------------------------
# the step


def _load_converted(image: ImageFile, what: str) -> nib.Nifti1Image:
    """Open a converted volume, checking it is still the file ingest recorded."""
    try:
        digest = sha256_file(image.path)
        img = nib.load(image.path)
    except (ImageFileError, OSError) as exc:
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
    return img


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
    ct_img = _load_converted(case.ct, "CT")
    pt_img = _load_converted(case.pt, "PET")

    maps: dict[str, np.ndarray] = {}
    dropped: dict[str, list[str]] = {}
    dropped_voxels: dict[str, int] = {}
    for category, path in files.items():
        loaded = load_category(
            path, ct_img, category,
            source=source_table, release=release_labels, source_is_release_values=is_release_named(path),
        )
        maps[category] = loaded.array
        if loaded.dropped:
            dropped[category] = list(loaded.dropped)
            dropped_voxels[category] = loaded.dropped_voxels

    brain = skull = None
    if site.deface:
        # before the lesion is subtracted: a lesion in the head is still head
        brain, skull = landmark_masks(maps, release_labels.categories)

    lesion_path = site.lesions_dir / f"{case.StudyInstanceUID}.nii.gz" if site.lesions_dir else None
    lesion = load_lesion_mask(lesion_path, ct_img)
    removed = 0
    if lesion is not None:
        where = np.nonzero(lesion)  # lesions are small: index them once, not mask 7 volumes twice
        for array in maps.values():
            removed += int(np.count_nonzero(array[where]))
            array[where] = 0
        logger.info("case %s: lesion mask removed %d label voxels", case.key, removed)

    cylinder: DefaceCylinder | None = None
    head_missing_released = False
    if site.deface:
        try:
            cylinder = plan_cylinder(
                ct_img, pt_img, brain, skull,
                height_voxels=defacing.height_voxels, margin_mm=defacing.margin_mm,
            )
        except HeadNotFoundError as exc:
            if site.deface_missing_head is not MissingHeadPolicy.RELEASE:
                raise
            head_missing_released = True
            logger.warning(
                "case %s: released without defacing (deface_missing_head = release): %s", case.key, exc.message
            )
    del brain, skull

    ct_out, pt_out = out_dir / "CT.nii.gz", out_dir / "PT.nii.gz"
    if cylinder is not None:
        defaced = apply_cylinder(cylinder, ct_img, pt_img, maps, clear_labels=defacing.clear_labels)
        maps = defaced.labels
        ct_file = write_nifti(_typed(defaced.ct, np.int16, case.ct.path), ct_img.affine, ct_out, dtype=np.int16)
        pt_file = write_nifti(_typed(defaced.pt, np.float32, case.pt.path), pt_img.affine, pt_out, dtype=np.float32)
        del defaced
    else:
        # not defaced: the converted files are released as they are
        ct_out.unlink(missing_ok=True)
        pt_out.unlink(missing_ok=True)
        ct_file, pt_file = case.ct, case.pt

    labels = {
        category: write_nifti(maps[category], ct_img.affine, out_dir / f"{category}.nii.gz", dtype=np.uint8)
        for category in CATEGORIES
    }
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
    )


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
        Its site configuration (``segmentations_dir``, ``lesions_dir``,
        ``deface``, ``deface_missing_head``).
    state
        The state folder; outputs go to ``state.prepared_dir(case.key)``.
    defacing
        The ``[defacing]`` settings.
    release_labels, source_table
        The release label set and the source label table.

    Returns
    -------
    PreparedCase | Rejection
        The prepared case (also written as ``prepared.json``), or a rejection
        with stage ``"build"`` and the preparation fingerprint for a data
        problem (segmentation missing, invalid or off the CT grid, head not
        found).  A rejection is not written here: the caller records it.
        ``lesion_voxels_removed`` counts label voxels set to 0 by the lesion
        mask over all seven categories; ``dropped_voxels`` counts, per
        category, voxels of source labels the release does not carry.

    Raises
    ------
    ValueError
        When ``case`` is not a case of ``site``.
    """
    if case.site != site.id:
        raise ValueError(f"case {case.key} belongs to site {case.site!r}, not {site.id!r}")
    fingerprint = prepare_fingerprint(
        case, site, defacing=defacing, release_labels=release_labels, source_table=source_table
    )
    out_dir = state.prepared_dir(case.key)
    record = out_dir / _RECORD
    cached = _cached(record, fingerprint)
    if cached is not None:
        logger.info("case %s: prepared already with the same inputs", case.key)
        return cached
    # a stale record must not outlive a failed or interrupted redo
    record.unlink(missing_ok=True)
    try:
        prepared = _prepare(
            case, site, out_dir, fingerprint,
            defacing=defacing, release_labels=release_labels, source_table=source_table,
        )
    except CurationError as exc:
        logger.warning("case %s of site %s: held back (%s): %s", case.key, site.id, exc.reason, exc.message)
        return Rejection(
            site=case.site,
            StudyInstanceUID=case.StudyInstanceUID,
            reason=exc.reason,
            message=exc.message,
            stage="build",
            fingerprint=fingerprint,
        )
    write_prepared(state, prepared)
    logger.info(
        "case %s: prepared (defaced=%s, dropped %s, %d lesion voxels removed)",
        case.key, prepared.defaced, prepared.dropped_labels or "nothing", prepared.lesion_voxels_removed,
    )
    return prepared


