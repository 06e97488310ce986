"""Reason codes and the error family for studies that cannot be released.

Every data problem the pipeline finds in a study is raised as a subclass of
:class:`CurationError` carrying one :class:`RejectReason`.  The message is a
human sentence naming the series or file and the evidence; it never contains an
identifying *value* (a UID in the message is fine: rejection records live in
``state_dir`` and the audit log, which are never released).
"""

from __future__ import annotations

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
    PHI_DETECTED = "phi-detected"
    BURNED_IN_ANNOTATION = "burned-in-annotation"
    HEAD_NOT_FOUND = "head-not-found"
    SEGMENTATION_MISSING = "segmentation-missing"
    SEGMENTATION_GRID_MISMATCH = "segmentation-grid-mismatch"
    SEGMENTATION_INVALID = "segmentation-invalid"

    def __str__(self) -> str:  # so f"{reason}" prints the code
        return self.value


class CurationError(Exception):
    """A data problem with one study: it is rejected with :attr:`reason`."""

    reason: RejectReason = RejectReason.UNREADABLE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @classmethod
    def for_reason(cls, reason: RejectReason, message: str) -> CurationError:
        """Build the subclass registered for ``reason``."""
        return _BY_REASON[reason](message)


class UnreadableError(CurationError):
    reason = RejectReason.UNREADABLE


class NoCTError(CurationError):
    reason = RejectReason.NO_CT


class NoACPETError(CurationError):
    reason = RejectReason.NO_AC_PET


class AmbiguousSeriesError(CurationError):
    reason = RejectReason.AMBIGUOUS_SERIES


class FrameOfReferenceMismatchError(CurationError):
    reason = RejectReason.FRAME_OF_REFERENCE_MISMATCH


class MissingSlicesError(CurationError):
    reason = RejectReason.MISSING_SLICES


class NonUniformSpacingError(CurationError):
    reason = RejectReason.NON_UNIFORM_SPACING


class GantryTiltError(CurationError):
    reason = RejectReason.GANTRY_TILT


class InconsistentOrientationError(CurationError):
    reason = RejectReason.INCONSISTENT_ORIENTATION


class ConversionFailedError(CurationError):
    reason = RejectReason.CONVERSION_FAILED


class PHIDetectedError(CurationError):
    reason = RejectReason.PHI_DETECTED


class BurnedInAnnotationError(CurationError):
    reason = RejectReason.BURNED_IN_ANNOTATION


class HeadNotFoundError(CurationError):
    reason = RejectReason.HEAD_NOT_FOUND


class SegmentationMissingError(CurationError):
    reason = RejectReason.SEGMENTATION_MISSING


class SegmentationGridMismatchError(CurationError):
    reason = RejectReason.SEGMENTATION_GRID_MISMATCH


class SegmentationInvalidError(CurationError):
    reason = RejectReason.SEGMENTATION_INVALID


_BY_REASON: dict[RejectReason, type[CurationError]] = {
    cls.reason: cls
    for cls in (
        UnreadableError,
        NoCTError,
        NoACPETError,
        AmbiguousSeriesError,
        FrameOfReferenceMismatchError,
        MissingSlicesError,
        NonUniformSpacingError,
        GantryTiltError,
        InconsistentOrientationError,
        ConversionFailedError,
        PHIDetectedError,
        BurnedInAnnotationError,
        HeadNotFoundError,
        SegmentationMissingError,
        SegmentationGridMismatchError,
        SegmentationInvalidError,
    )
}
assert set(_BY_REASON) == set(RejectReason), "every reason code needs an error class"
