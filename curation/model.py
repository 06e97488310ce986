"""The small, JSON-serialisable records that stages pass to one another.

Stages take paths and these frozen dataclasses and return them; volumes never
travel between stages (they live in NIfTI files under ``state_dir``).  Every
record round-trips through :func:`to_jsonable` / :func:`from_jsonable`, which is
how the state files, the audit log and Prefect task results store them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from enum import Enum, StrEnum
from typing import Any, TypeVar

from curation.errors import AttributeFinding, RejectReason

T = TypeVar("T")

#: Enhanced PET correction flags (YES/NO) and the CorrectedImage (0028,0051) term each stands for.
ENHANCED_PET_CORRECTIONS: tuple[tuple[str, str], ...] = (
    ("DetectorNormalizationCorrection", "NORM"),
    ("DeadTimeCorrected", "DTIM"),
    ("AttenuationCorrected", "ATTN"),
    ("ScatterCorrected", "SCAT"),
    ("DecayCorrected", "DECY"),
    ("RandomsCorrected", "RAN"),
    ("GantryMotionCorrected", "MOTN"),
    ("PatientMotionCorrected", "PMOT"),
    ("CountLossNormalizationCorrected", "CLN"),
    ("NonUniformRadialSamplingCorrected", "RADL"),
    ("SensitivityCalibrated", "DCAL"),
)

#: The seven release categories, in release order.
CATEGORIES: tuple[str, ...] = (
    "Body-Composition",
    "Cardiac",
    "Muscles",
    "Organs",
    "Peripheral-Bones",
    "Ribs",
    "Vertebrae",
)

#: MOOSE model names accepted as aliases of the release categories.
CATEGORY_ALIASES: dict[str, str] = {
    "clin_ct_body_composition": "Body-Composition",
    "clin_ct_cardiac": "Cardiac",
    "clin_ct_muscles": "Muscles",
    "clin_ct_organs": "Organs",
    "clin_ct_peripheral_bones": "Peripheral-Bones",
    "clin_ct_ribs": "Ribs",
    "clin_ct_vertebrae": "Vertebrae",
}


class Modality(StrEnum):
    """The two modalities a case is made of (DICOM Modality values)."""

    CT = "CT"
    PT = "PT"


class Phase(StrEnum):
    """Where in the pipeline a study was stopped: rejected at ingest, or held back at build."""

    INGEST = "ingest"
    BUILD = "build"


class Landmarks(StrEnum):
    """Where a defacing cylinder's brain and skull landmarks came from."""

    SEGMENTATION = "segmentation"  # the study's Organs (brain) and Peripheral-Bones (skull) maps
    CT_FALLBACK = "ct-fallback"  # bone threshold and connected components on the CT


def study_key(study_instance_uid: str) -> str:
    """The name a study's state goes under: a digest, so no UID is ever a file name.

    The digest is over the value's exact UTF-8 bytes (lone surrogates kept), so
    two different values never share a key; for ASCII values (every
    conforming UID) these are the bytes the key has always been made of.
    """
    return hashlib.sha256(study_instance_uid.encode("utf-8", "surrogatepass")).hexdigest()[:24]


# ---------------------------------------------------------------------------
# ingest


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file under ``dicom_dir`` that is not usable DICOM."""

    path: str
    why: str


@dataclasses.dataclass(frozen=True)
class SeriesRecord:
    """One series as the index saw it (header-only reads)."""

    SeriesInstanceUID: str
    Modality: str
    SOPClassUID: str
    SeriesDescription: str
    SeriesNumber: int | None
    ImageType: tuple[str, ...]
    FrameOfReferenceUID: str
    CorrectedImage: tuple[str, ...]
    Units: str
    files: tuple[str, ...]  # absolute paths, sorted by name (never by position: see geometry)


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """One study of a site: what ingest works on."""

    site: str
    StudyInstanceUID: str
    PatientID: str
    StudyDate: str
    series: tuple[SeriesRecord, ...]
    fingerprint: str  # sha256 over the sorted sha256 of every file of the study (content key)

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`study_key`)."""
        return study_key(self.StudyInstanceUID)


def index_identifiers(study: StudyRecord) -> set[str]:
    """The identifying values the index already knows of a study: its UIDs and PatientID.

    Recorded even when the study is rejected early; the flows blank them in artifacts.
    """
    values = {study.StudyInstanceUID, study.PatientID}
    for series in study.series:
        values.update((series.SeriesInstanceUID, series.FrameOfReferenceUID))
    return {v.strip() for v in values if v and v.strip()}


@dataclasses.dataclass(frozen=True)
class SiteIndex:
    """The result of walking one site's ``dicom_dir`` once."""

    site: str
    dicom_dir: str
    files_seen: int
    skipped: tuple[SkippedFile, ...]
    studies: tuple[StudyRecord, ...]


@dataclasses.dataclass(frozen=True)
class IgnoredSeries:
    """A series of a study that is not one of the two selected, and why."""

    SeriesInstanceUID: str
    Modality: str
    SeriesDescription: str
    why: str


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """A NIfTI file written by a stage."""

    path: str
    sha256: str
    shape: tuple[int, ...]
    dtype: str
    affine: tuple[tuple[float, ...], ...]  # 4x4, NIfTI (RAS+) world coordinates in mm


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A study that was not made into a case (or a case held back), with its reason.

    Attributes
    ----------
    site, StudyInstanceUID
        The study.
    reason
        The reason code.
    message
        A sentence naming the series or file and the evidence (no identifying value).
    phase
        :attr:`Phase.INGEST` (the study was rejected) or :attr:`Phase.BUILD` (held back).
    stage
        The name of the stage that stopped it (``"ingest"``, ``"prepare"``, ...).
    fingerprint
        The stage's content key: the rejection stands while the inputs are unchanged.
    findings
        The attributes behind the reason, as data (the de-identification gate's findings).
    """

    site: str
    StudyInstanceUID: str
    reason: RejectReason
    message: str
    phase: Phase
    stage: str
    fingerprint: str
    findings: tuple[AttributeFinding, ...] = ()

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`study_key`)."""
        return study_key(self.StudyInstanceUID)


@dataclasses.dataclass(frozen=True)
class ConvertedCase:
    """A study that passed ingest: two checked NIfTI volumes and their metadata."""

    site: str
    StudyInstanceUID: str
    PatientID: str
    StudyDate: str
    fingerprint: str
    ct_series: str  # SeriesInstanceUID
    pt_series: str
    ct: ImageFile
    pt: ImageFile
    ct_metadata: dict[str, Any]
    pt_metadata: dict[str, Any]
    ignored: tuple[IgnoredSeries, ...]
    private_review: tuple[str, ...]  # private attributes (tag keyword) listed for review, never values

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`study_key`)."""
        return study_key(self.StudyInstanceUID)


# ---------------------------------------------------------------------------
# build


@dataclasses.dataclass(frozen=True)
class DefaceCylinder:
    """The defaced volume of one case, in NIfTI world coordinates (mm)."""

    z_lo: float
    z_hi: float
    axis_x: float
    axis_y: float
    radius: float
    landmarks: Landmarks


@dataclasses.dataclass(frozen=True)
class PreparedCase:
    """A case ready to be laid out in a release: defaced images and label maps."""

    site: str
    StudyInstanceUID: str
    fingerprint: str  # over the converted case and every segmentation/lesion input
    ct: ImageFile
    pt: ImageFile
    labels: dict[str, ImageFile]  # category -> uint8 label map on the CT grid
    cylinder: DefaceCylinder | None
    defaced: bool
    head_missing_released: bool  # deface_missing_head = "release" was used
    dropped_labels: dict[str, list[str]]  # category -> source label names dropped
    lesion_voxels_removed: int
    # category -> voxels set to 0 because their source label is not in the release
    dropped_voxels: dict[str, int] = dataclasses.field(default_factory=dict)
    # defaced cases: the converted CT's head cube (anonymization.deface.review_box) before defacing, never released
    head_before: ImageFile | None = None

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`study_key`)."""
        return study_key(self.StudyInstanceUID)


@dataclasses.dataclass(frozen=True)
class PNGFile:
    """A PNG written by the QC stage."""

    path: str
    sha256: str
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class QCImage:
    """One QC picture of a case: full size, thumbnail, and where its pixels are.

    Pixel ``(row, column)`` of the full-size image shows the world (RAS+ mm)
    point ``top_left + column * right + row * down`` (pixel centres), so a
    test or a viewer can put a world position on the picture.
    """

    name: str  # e.g. "pet-mip-coronal"; the files are <name>.png and <name>.thumb.png
    title: str  # what the picture shows, one line
    full: PNGFile
    thumbnail: PNGFile
    top_left: tuple[float, float, float]
    right: tuple[float, float, float]
    down: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class CaseQC:
    """The QC pictures of one prepared case and the few numbers worth showing beside them."""

    site: str
    StudyInstanceUID: str
    fingerprint: str  # over the rendered inputs (see curation.qc.qc_fingerprint)
    images: tuple[QCImage, ...]
    defaced: bool
    head_view: str  # "cylinder" | "brain-label" | "none": where the head pictures are centred
    colours: str  # "recommendedDisplayRGBValue" | "palette" | "mixed": where the label colours came from
    body_centroid: tuple[float, float, float]  # world mm; the coronal and sagittal slices go through it
    pet_max: float  # Bq/mL
    pet_inside_body: float  # fraction of the PET activity inside the CT body outline (misregistration)
    face_voxels_blanked: int  # CT voxels the defacing changed (0 when not defaced)

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`study_key`)."""
        return study_key(self.StudyInstanceUID)


# ---------------------------------------------------------------------------
# JSON round trip


def to_jsonable(obj: Any) -> Any:
    """Turn a record (nested dataclasses, tuples, enums) into plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


def from_jsonable(cls: type[T], data: Any) -> T:
    """Rebuild a record of type ``cls`` from :func:`to_jsonable` output."""
    return _build(cls, data)


def _build(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _build(hints[f.name], data[f.name]) for f in dataclasses.fields(tp)})
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(arms[0], data)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in data)
        return tuple(_build(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return [_build(arg, v) for v in data]
    if origin is dict:
        _, val = typing.get_args(tp)
        return {k: _build(val, v) for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    if tp is float and isinstance(data, int):
        return float(data)
    return data
