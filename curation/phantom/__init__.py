"""Synthetic PET/CT phantom sites: the data every test and ``petct-release demo`` runs on.

:func:`make_phantom` builds the phantom's CT and PET volumes, labels and
landmarks (:mod:`curation.phantom.anatomy`); :func:`write_study` writes one
study as a site would deliver it (:mod:`curation.phantom.dicom`);
:func:`write_segmentations` and :func:`write_lesion` write the site's label
maps (:mod:`curation.phantom.nifti`); :func:`write_demo_sites` writes three
complete sites and their ``release.toml`` (:mod:`curation.phantom.sites`).
Everything is deterministic: the same arguments give byte-identical files.
"""

from curation.phantom.anatomy import (
    LANDMARKS,
    SIZES,
    Phantom,
    PhantomGeometry,
    make_phantom,
    release_label_table,
)
from curation.phantom.dicom import (
    DEFECTS,
    PLANTED_PHI,
    PatientInfo,
    StudyFiles,
    Vendor,
    write_study,
)
from curation.phantom.nifti import moose_label_table, write_lesion, write_segmentations
from curation.phantom.sites import (
    DEMO_MARKER,
    EXPECTED_REASON,
    MANIFEST_NAME,
    DemoFolderError,
    demo_sites,
    write_demo_sites,
)

__all__ = [
    "DEFECTS",
    "DEMO_MARKER",
    "EXPECTED_REASON",
    "LANDMARKS",
    "MANIFEST_NAME",
    "PLANTED_PHI",
    "SIZES",
    "DemoFolderError",
    "PatientInfo",
    "Phantom",
    "PhantomGeometry",
    "StudyFiles",
    "Vendor",
    "demo_sites",
    "make_phantom",
    "moose_label_table",
    "release_label_table",
    "write_demo_sites",
    "write_lesion",
    "write_segmentations",
    "write_study",
]
