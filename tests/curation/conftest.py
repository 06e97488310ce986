"""Shared set-up for the curation tests: the small phantom ingested once, a site, a preparation.

``prepare_case`` and the QC pictures start from a really ingested phantom
study; building one costs seconds, so each is made once per module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
from curation.dicomindex import index_site
from curation.ingest import ingest_study
from curation.labels import load_release_labels, load_site_tables, load_source_table
from curation.model import ConvertedCase, PreparedCase, Rejection
from curation.prepare import prepare_case
from curation.state import StatePaths

RELEASE = load_release_labels("builtin:enhance-pet")
MOOSE = load_source_table()
DEFACING = DefacingSettings(height_voxels=16, margin_mm=5.0, clear_labels=True)


def make_site(root: Path, *, deface: bool, lesions: bool = True,
              missing_head: MissingHeadPolicy = MissingHeadPolicy.HOLD,
              label_table: str = "builtin:release") -> SiteConfig:
    """A site whose segmentations and lesions go under ``root`` (its DICOM is set by the caller).

    ``label_table`` defaults to ``builtin:release``: the phantom writes release
    values unless asked for MOOSE names (then pass ``builtin:moose``).
    """
    return SiteConfig(
        id="leipzig",
        dicom_dir=root / "drop",
        segmentations_dir=root / "seg",
        lesions_dir=root / "lesions" if lesions else None,
        license="CC-BY-4.0",
        deface=deface,
        indication="lung cancer",
        clinical_sheet=None,
        pseudonym_pattern="",
        deface_missing_head=missing_head,
        label_table=label_table,
    )


def ingest_one(study_root: Path, study_uid: str, root: Path) -> ConvertedCase:
    """One study of a phantom drop through the real index and ingest, into ``root/state``."""
    site = dataclasses.replace(make_site(root, deface=True), dicom_dir=study_root)
    index = index_site(site.id, study_root)
    (record,) = [s for s in index.studies if s.StudyInstanceUID == study_uid]
    case = ingest_study(record, site, StatePaths(root / "state"))
    assert isinstance(case, ConvertedCase), case
    return case


def prepare(case: ConvertedCase, site: SiteConfig, root: Path, **changes) -> PreparedCase | Rejection:
    """``prepare_case`` with the release labels and the site's own source label table into ``root/state``."""
    return prepare_case(
        case, site, StatePaths(root / "state"),
        defacing=changes.get("defacing", DEFACING), release_labels=RELEASE,
        source_table=load_site_tables([site], RELEASE)[site.id],
    )


@pytest.fixture(scope="module")
def ingested(small_study, tmp_path_factory) -> ConvertedCase:
    """The small phantom study through the real index and ingest (shared, read-only)."""
    return ingest_one(small_study.root, small_study.StudyInstanceUID, tmp_path_factory.mktemp("prepare_ingest"))
