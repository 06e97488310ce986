"""Reason codes and the error family for studies that cannot be released.

Every data problem the pipeline finds in a study is raised as a subclass of
:class:`CurationError` carrying one :class:`RejectReason`.  The message is a
human sentence naming the series or file and the evidence; it never contains an
identifying *value* (a UID in the message is fine: rejection records live in
``state_dir`` and the audit log, which are never released).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RejectReason(StrEnum):
    """Why a study was not made into a released case (fixed value set)."""

    UNREADABLE = "unreadable"
    NO_CT = "no-ct"
    NO_AC_PET = "no-ac-pet"
    AMBIGUOUS_SERIES = "ambiguous-series"
    FRAME_OF_REFERENCE_MISMATCH = "frame-of-reference-mismatch"
    MISSING_SLICES = "missing-slices"
    NON_UNIFORM_SPACING = "non-uniform-spacing"
    GANTRY_TILT = "gantry-tilt"
    INCONSISTENT_ORIENTATION = "inconsistent-orientation"
    CONVERSION_FAILED = "conversion-failed"
    LOSSY_COMPRESSION = "lossy-compression"
    PHI_DETECTED = "phi-detected"
    BURNED_IN_ANNOTATION = "burned-in-annotation"
    HEAD_NOT_FOUND = "head-not-found"
    SEGMENTATION_MISSING = "segmentation-missing"
    SEGMENTATION_GRID_MISMATCH = "segmentation-grid-mismatch"
    SEGMENTATION_INVALID = "segmentation-invalid"
    INVALID_UID = "invalid-uid"

    def __str__(self) -> str:  # so f"{reason}" prints the code
        return self.value


@dataclass(frozen=True)
class AttributeFinding:
    """One header attribute that stops a study, named by tag and keyword (never its value).

    Attributes
    ----------
    tag
        ``"(gggg,eeee)"``.
    keyword
        The DICOM keyword, or a description for private and unknown attributes.
    rule
        The rule of the de-identification profile that the attribute breaks.
    """

    tag: str
    keyword: str
    rule: str


class CurationError(Exception):
    """A data problem with one study: it is rejected with :attr:`reason`.

    Parameters
    ----------
    message
        A sentence naming the series or file and the evidence (never an identifying value).
    findings
        The attributes behind the problem, as data, for whoever reports it
        (the de-identification gate fills them).
    """

    reason: RejectReason = RejectReason.UNREADABLE

    def __init__(self, message: str, *, findings: tuple[AttributeFinding, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.findings = findings


class UnreadableError(CurationError):
    """A file of the study cannot be read as DICOM."""

    reason = RejectReason.UNREADABLE


class NoCTError(CurationError):
    """The study has no usable CT series."""

    reason = RejectReason.NO_CT


class NoACPETError(CurationError):
    """The study has no attenuation-corrected PET series."""

    reason = RejectReason.NO_AC_PET


class AmbiguousSeriesError(CurationError):
    """More than one series qualifies as the CT or the PET (or the study is delivered twice)."""

    reason = RejectReason.AMBIGUOUS_SERIES


class FrameOfReferenceMismatchError(CurationError):
    """The CT and PET series do not share a frame of reference."""

    reason = RejectReason.FRAME_OF_REFERENCE_MISMATCH


class MissingSlicesError(CurationError):
    """A series has a gap where slices are missing."""

    reason = RejectReason.MISSING_SLICES


class NonUniformSpacingError(CurationError):
    """A series' slices are not evenly spaced."""

    reason = RejectReason.NON_UNIFORM_SPACING


class GantryTiltError(CurationError):
    """A series was acquired with a tilted gantry (slices not perpendicular to their stack)."""

    reason = RejectReason.GANTRY_TILT


class InconsistentOrientationError(CurationError):
    """The slices of a series do not share one orientation."""

    reason = RejectReason.INCONSISTENT_ORIENTATION


class ConversionFailedError(CurationError):
    """A series cannot be converted to NIfTI."""

    reason = RejectReason.CONVERSION_FAILED


class LossyCompressionError(CurationError):
    """A selected series was lossy-compressed and the site's ``lossy`` option is ``reject``."""

    reason = RejectReason.LOSSY_COMPRESSION


class PHIDetectedError(CurationError):
    """A header still holds identifying attributes (the de-identification gate)."""

    reason = RejectReason.PHI_DETECTED


class BurnedInAnnotationError(CurationError):
    """A header declares identifying text burned into the pixels."""

    reason = RejectReason.BURNED_IN_ANNOTATION


class HeadNotFoundError(CurationError):
    """No head is found in a case of a site whose cases are defaced."""

    reason = RejectReason.HEAD_NOT_FOUND


class SegmentationMissingError(CurationError):
    """A study's segmentation folder or one of its categories is missing."""

    reason = RejectReason.SEGMENTATION_MISSING


class SegmentationGridMismatchError(CurationError):
    """A label map is not on the CT's voxel grid."""

    reason = RejectReason.SEGMENTATION_GRID_MISMATCH


class SegmentationInvalidError(CurationError):
    """A label map is unreadable, delivered twice, or holds values its label table does not define."""

    reason = RejectReason.SEGMENTATION_INVALID


class InvalidUIDError(CurationError):
    """A UID the study relies on is not a DICOM UID (PS3.5 9.1); it may never name a file."""

    reason = RejectReason.INVALID_UID


class RunRefusedError(RuntimeError):
    """A run that refuses to go on rather than overwrite or race (the CLI's exit code 1).

    Raised for a second concurrent build of one release, or a release of the
    same name and version whose content would differ.
    """
