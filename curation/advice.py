"""What a data steward can do about each reason a study was rejected or a case held back.

Shown beside every rejection in the steward's report (:mod:`flows.report`).
Every :class:`~curation.errors.RejectReason` has an entry: a new reason code
without advice fails at import.
"""

from __future__ import annotations

from curation.errors import RejectReason

#: Reason code -> what the steward can do, in one or two sentences.
STEWARD_ADVICE: dict[RejectReason, str] = {
    RejectReason.UNREADABLE: (
        "A file of the study could not be read, or a converted volume changed after ingest. "
        "Ask the site to export the study again; if the message names a converted volume, run ingest again."
    ),
    RejectReason.NO_CT: (
        "The study has no diagnostic axial CT series (only localisers, dose reports or derived images). "
        "Ask the site whether the CT was left out of the export, and for that series."
    ),
    RejectReason.NO_AC_PET: (
        "No attenuation-corrected PET series in Bq/mL was found (only non-corrected, counts or SUV). "
        "Ask the site for the attenuation-corrected reconstruction with Units BQML."
    ),
    RejectReason.AMBIGUOUS_SERIES: (
        "More than one series could be the case's CT or PET, or the study was already converted for "
        "another site. Ask the site which series is meant and to deliver only that one; check that the "
        "study belongs to this site."
    ),
    RejectReason.FRAME_OF_REFERENCE_MISMATCH: (
        "CT and PET do not share a FrameOfReferenceUID, so nothing says they are registered. Ask the site "
        "whether both come from the same PET/CT acquisition; do not register them here."
    ),
    RejectReason.MISSING_SLICES: (
        "Slices are missing from a series (a gap in the slice positions). Ask the site to export the "
        "complete series again; an interrupted transfer looks the same."
    ),
    RejectReason.NON_UNIFORM_SPACING: (
        "The slices of a series are not evenly spaced. Ask the site for a reconstruction with uniform "
        "spacing, or for a complete export if slices went missing."
    ),
    RejectReason.GANTRY_TILT: (
        "The CT was acquired with a tilted gantry. Ask the site for an axial reconstruction without tilt; "
        "tilted volumes are not released."
    ),
    RejectReason.INCONSISTENT_ORIENTATION: (
        "The slices of a series do not share one orientation (mixed stacks). Ask the site to export the "
        "single axial series again."
    ),
    RejectReason.CONVERSION_FAILED: (
        "The series could not be converted to a volume. Ask the site for a fresh export; if it fails "
        "again, report the message to the pipeline's maintainers."
    ),
    RejectReason.LOSSY_COMPRESSION: (
        "The CT or PET was lossy-compressed (the message says which instance and why). Ask the "
        "site for a lossless or uncompressed export; or, if lossy images are acceptable for this "
        "release, set lossy = \"accept\" for the site: the details sheets then record the compression."
    ),
    RejectReason.PHI_DETECTED: (
        "The de-identification gate found identifying attributes (named in the message, never their "
        "values). Ask the site to anonymise the study again with its profile and deliver it again; never "
        "edit the files here."
    ),
    RejectReason.BURNED_IN_ANNOTATION: (
        "A series says it carries burned-in annotation (text in the pixels). Ask the site for a series "
        "without burned-in annotation."
    ),
    RejectReason.HEAD_NOT_FOUND: (
        "The site is defaced but no head was found (the scan does not reach it, or no brain or skull was "
        "found). Check the scan range on the pictures; a scan without the head may be released undefaced "
        "with deface_missing_head = \"release\" for the site."
    ),
    RejectReason.SEGMENTATION_MISSING: (
        "A category's segmentation is missing. Ask for <StudyInstanceUID>/<Category>.nii.gz of all seven "
        "categories in the site's segmentations_dir, then run build again."
    ),
    RejectReason.SEGMENTATION_GRID_MISMATCH: (
        "A segmentation is not on the study's CT grid (shape or geometry differ); maps are never "
        "resampled. Segment the converted CT of this study again, then run build again."
    ),
    RejectReason.SEGMENTATION_INVALID: (
        "A segmentation cannot be read, holds values its label table does not define, or is a symbolic "
        "link leading outside the site's segmentations_dir or lesions_dir (named in the message). Check the "
        "site's label_table against the segmentation model, replace links by the files, then deliver the "
        "maps again."
    ),
    RejectReason.INVALID_UID: (
        "A UID of the study (StudyInstanceUID, or a selected file's SeriesInstanceUID, FrameOfReferenceUID "
        "or SOPInstanceUID) is not a DICOM UID: only digits and dots, at most 64 characters. Ask the site's "
        "anonymiser to write conforming UIDs and deliver the study again; never rename files here."
    ),
}
assert set(STEWARD_ADVICE) == set(RejectReason), "every reason code needs advice for the steward"


def advice_for(reason: RejectReason) -> str:
    """What the steward can do about a study rejected (or a case held back) for ``reason``."""
    return STEWARD_ADVICE[reason]
