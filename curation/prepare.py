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

The step is the :class:`PrepareStage` (see :mod:`curation.stage` for reuse and
records): its fingerprint covers every input (the converted volumes' sha256,
the content of every segmentation and lesion file, the defacing settings and
site switches, both label tables), and a case whose record carries the same
fingerprint and whose outputs are intact is returned without any work.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

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
    Phase,
    PreparedCase,
    Rejection,
    to_jsonable,
)
from curation.nifti import NIFTI_READ_ERRORS, load_nifti, write_nifti
from curation.segmentations import (
    category_files_in,
    find_category_files,
    lesion_file,
    load_category,
    load_lesion_mask,
)
from curation.stage import CaseStage, StudySubject
from curation.state import StatePaths

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


def _load_converted(image: ImageFile, what: str) -> nib.Nifti1Image:
    """Read a converted volume into memory (one read), checking it is still the file ingest recorded."""
    try:
        loaded = load_nifti(image.path)
    except NIFTI_READ_ERRORS as exc:
        raise UnreadableError(f"converted {what} {image.path} cannot be read ({exc}); run ingest again") from None
    img, digest = loaded.image, loaded.sha256
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
            source=source_table, release=release_labels,
        )
        maps[category] = loaded.array
        if loaded.dropped:
            dropped[category] = list(loaded.dropped)
            dropped_voxels[category] = loaded.dropped_voxels

    brain = skull = None
    if site.deface:
        # before the lesion is subtracted: a lesion in the head is still head
        brain, skull = landmark_masks(maps, release_labels.categories)

    lesion = load_lesion_mask(lesion_file(site.lesions_dir, case.StudyInstanceUID), ct_img)
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
    version: ClassVar[int] = 3  # 3: input paths checked (conforming UID, inside the configured folders)
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
        """CT, PET and the seven label maps."""
        return {"CT.nii.gz": record.ct, "PT.nii.gz": record.pt,
                **{f"{cat}.nii.gz": img for cat, img in sorted(record.labels.items())}}

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
