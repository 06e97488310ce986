"""Ingest one study: select -> read once -> de-identification gate -> geometry QA -> convert -> metadata.

Each selected file is read with pydicom exactly once; the same datasets serve
the gate, the geometry checks, the conversion and the metadata.  The outcome
(a :class:`ConvertedCase` or a :class:`Rejection`) is written last, atomically,
so it is the commit point: a study whose outcome holds the same
:func:`ingest_key` (content digest of every file of the study, the gate's rule
table and the site's pseudonym pattern) is not worked on again, and a study
whose files or gate settings changed is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from anonymization.gate import check_datasets, profile_digest, raise_for_findings
from curation.atomic import atomic_write_json, sha256_file
from curation.config import SiteConfig
from curation.convert import convert_series, series_label
from curation.dicomindex import index_site
from curation.errors import CurationError, RejectReason, UnreadableError
from curation.geometry import check_series_geometry
from curation.metadata import ct_metadata, pet_metadata
from curation.model import (
    ConvertedCase,
    Modality,
    Rejection,
    SeriesRecord,
    StudyRecord,
    to_jsonable,
)
from curation.select import select_series
from curation.state import StatePaths, read_outcome, write_outcome

logger = logging.getLogger(__name__)

#: Identifying attributes whose values are recorded for the release leak scan.
SENSITIVE_KEYWORDS: tuple[str, ...] = ("PatientID", "PatientName", "AccessionNumber", "OtherPatientIDs")
#: UIDs under this root are DICOM-defined (SOP classes, transfer syntaxes), not identifiers.
_DICOM_ROOT = "1.2.840.10008."
#: Part of every ingest key: raise it when ingest changes what it decides or writes.
INGEST_VERSION = 1
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, struct.error, KeyError, TypeError)


def _read_series(series: SeriesRecord, *, pixels: bool) -> list[Dataset]:
    """Read every file of ``series`` once; a file that cannot be read rejects the study."""
    datasets = []
    for path in series.files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=not pixels))
        except _READ_ERRORS as exc:
            raise UnreadableError(
                f"{path}: file of {series.Modality} series {series.SeriesInstanceUID} cannot be read "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    return datasets


def _uids(ds: Dataset) -> Iterable[str]:
    """Every UID value in ``ds`` and its sequences, converting only UI and SQ elements (fast)."""
    for raw in ds.elements():  # raw elements: other values are never decoded
        vr = raw.VR or ds[raw.tag].VR
        if vr == "UI":
            value = ds[raw.tag].value
            for text in value if isinstance(value, MultiValue | list | tuple) else [value]:
                text = str(text or "").strip()
                if text and not text.startswith(_DICOM_ROOT):
                    yield text
        elif vr == "SQ":
            for item in ds[raw.tag].value or ():
                yield from _uids(item)


def sensitive_values(datasets: Iterable[Dataset]) -> set[str]:
    """Every UID and identifying value (:data:`SENSITIVE_KEYWORDS`) in ``datasets``."""
    found: set[str] = set()
    for ds in datasets:
        found.update(_uids(ds))
        for keyword in SENSITIVE_KEYWORDS:
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            values = value if isinstance(value, MultiValue | list | tuple) else [value]
            found.update(str(v).strip() for v in values if str(v).strip())
    return found


def ingest_key(study: StudyRecord, site: SiteConfig) -> str:
    """The content key of a study's ingest outcome.

    The sha256 of every source file (``study.fingerprint``) and everything else
    that decides the outcome: the gate's rule table and the site's pseudonym
    pattern (a tightened gate re-checks studies converted before) and
    :data:`INGEST_VERSION`.
    """
    doc = [study.fingerprint, profile_digest(), site.pseudonym_pattern, INGEST_VERSION]
    return hashlib.sha256(json.dumps(doc).encode("utf-8")).hexdigest()


def _cached(study: StudyRecord, site: SiteConfig, state: StatePaths) -> ConvertedCase | Rejection | None:
    path = state.study_outcome(study.site, study.key)
    if not path.is_file():
        return None
    outcome = read_outcome(path)
    if outcome.fingerprint != ingest_key(study, site):
        return None
    if isinstance(outcome, Rejection):
        return outcome if outcome.stage == "ingest" else None
    # the volumes must still be the ones recorded (a damaged or edited file is redone)
    for image in (outcome.ct, outcome.pt):
        if not Path(image.path).is_file() or sha256_file(image.path) != image.sha256:
            logger.warning("site %s study %s: %s differs from its record; converting again",
                           site.id, study.key, image.path)
            return None
    return outcome


def _converted_for_another_site(study: StudyRecord, site: SiteConfig, state: StatePaths) -> str | None:
    """The id of another site whose recorded outcome for this StudyInstanceUID is a converted case."""
    for path in sorted((state.root / "sites").glob(f"*/studies/{study.key}.json")):
        other = path.parent.parent.name
        if other != site.id and isinstance(read_outcome(path), ConvertedCase):
            return other
    return None


def _clear_case(state: StatePaths, key: str) -> None:
    """Remove a previous conversion of a study that is now rejected (stale volumes)."""
    folder = state.case_dir(key)
    for name in ("CT.nii.gz", "PT.nii.gz", "case.json"):
        (folder / name).unlink(missing_ok=True)


def index_identifiers(study: StudyRecord) -> set[str]:
    """The identifying values the index already knows of a study: its UIDs and PatientID.

    Recorded even when the study is rejected early; the flows blank them in artifacts.
    """
    values = {study.StudyInstanceUID, study.PatientID}
    for series in study.series:
        values.update((series.SeriesInstanceUID, series.FrameOfReferenceUID))
    return {v.strip() for v in values if v and v.strip()}


def _write_sensitive(state: StatePaths, site: SiteConfig, study: StudyRecord, values: set[str]) -> None:
    atomic_write_json(
        state.sensitive_dir(site.id) / f"{study.key}.json",
        {"StudyInstanceUID": study.StudyInstanceUID, "values": sorted(values)},
    )


def _convert(study: StudyRecord, site: SiteConfig, state: StatePaths) -> ConvertedCase:
    # recorded before anything can reject the study: the leak scan covers every study seen
    _write_sensitive(state, site, study, index_identifiers(study))
    selection = select_series(study)
    ct_datasets = _read_series(selection.ct, pixels=True)
    pt_datasets = _read_series(selection.pt, pixels=True)
    others = [
        ds
        for series in study.series
        if series.SeriesInstanceUID not in (selection.ct.SeriesInstanceUID, selection.pt.SeriesInstanceUID)
        for ds in _read_series(series, pixels=False)
    ]

    report = check_datasets([*ct_datasets, *pt_datasets], pseudonym_pattern=site.pseudonym_pattern)
    sensitive = sensitive_values([*ct_datasets, *pt_datasets, *others]) | set(report.sensitive_values)
    _write_sensitive(state, site, study, sensitive | index_identifiers(study))
    raise_for_findings(
        report,
        context=f"{series_label(ct_datasets)} / {series_label(pt_datasets)} of study {study.StudyInstanceUID}",
    )

    ct_stack = check_series_geometry(ct_datasets, series_label=series_label(ct_datasets))
    pt_stack = check_series_geometry(pt_datasets, series_label=series_label(pt_datasets))
    case_dir = state.case_dir(study.key)
    ct_image = convert_series(ct_stack.datasets, case_dir / "CT.nii.gz", modality=Modality.CT)
    pt_image = convert_series(pt_stack.datasets, case_dir / "PT.nii.gz", modality=Modality.PT)
    case = ConvertedCase(
        site=site.id,
        StudyInstanceUID=study.StudyInstanceUID,
        PatientID=study.PatientID,
        StudyDate=study.StudyDate,
        fingerprint=ingest_key(study, site),
        ct_series=selection.ct.SeriesInstanceUID,
        pt_series=selection.pt.SeriesInstanceUID,
        ct=ct_image,
        pt=pt_image,
        ct_metadata=ct_metadata(ct_stack.datasets),
        pt_metadata=pet_metadata(pt_stack.datasets),
        ignored=selection.ignored,
        private_review=tuple(report.private_review),
    )
    atomic_write_json(case_dir / "case.json", to_jsonable(case))
    return case


def ingest_study(study: StudyRecord, site: SiteConfig, state: StatePaths) -> ConvertedCase | Rejection:
    """Make one study into a converted case, or reject it with a reason code.

    Parameters
    ----------
    study
        A study of ``site`` from :func:`curation.dicomindex.index_site`.
    site
        The site's configuration (``pseudonym_pattern`` for the gate).
    state
        Where volumes, ``case.json``, sensitive values and the outcome go.

    Returns
    -------
    ConvertedCase | Rejection
        The outcome, also written with :func:`curation.state.write_outcome`.
        If the recorded outcome already has the same :func:`ingest_key` it is
        returned without any work.

    Raises
    ------
    Exception
        Only programming errors; every data problem is a :class:`Rejection`.
    """
    cached = _cached(study, site, state)
    if cached is not None:
        logger.info("site %s study %s: unchanged since the last ingest (%s)", site.id, study.key, type(cached).__name__)
        return cached
    outcome: ConvertedCase | Rejection
    other = _converted_for_another_site(study, site, state)
    if other is not None:
        # one study is one case: the volumes under cases/<key> belong to the other site's case
        outcome = Rejection(
            site=site.id,
            StudyInstanceUID=study.StudyInstanceUID,
            reason=RejectReason.AMBIGUOUS_SERIES,
            message=(
                f"study {study.StudyInstanceUID} is also delivered by site {other!r}, where it was converted "
                "already: a study is released once; remove it from one of the two drops"
            ),
            stage="ingest",
            fingerprint=ingest_key(study, site),
        )
        logger.warning("site %s study %s: rejected (%s): %s", site.id, study.key, outcome.reason, outcome.message)
        write_outcome(state, outcome)
        return outcome
    try:
        outcome = _convert(study, site, state)
        logger.info("site %s study %s: converted", site.id, study.key)
    except CurationError as exc:
        _clear_case(state, study.key)
        outcome = Rejection(
            site=site.id,
            StudyInstanceUID=study.StudyInstanceUID,
            reason=exc.reason,
            message=exc.message,
            stage="ingest",
            fingerprint=ingest_key(study, site),
        )
        logger.warning("site %s study %s: rejected (%s): %s", site.id, study.key, exc.reason, exc.message)
    write_outcome(state, outcome)
    return outcome


def ingest_site(site: SiteConfig, state: StatePaths) -> list[ConvertedCase | Rejection]:
    """Index ``site.dicom_dir`` and ingest every study, one after the other.

    Parameters
    ----------
    site
        The site to ingest.
    state
        The state folder; the index goes to ``state.site_index(site.id)``.

    Returns
    -------
    list
        One outcome per study, in index order (by StudyInstanceUID).
    """
    index = index_site(site.id, site.dicom_dir)
    atomic_write_json(state.site_index(site.id), to_jsonable(index))
    return [ingest_study(study, site, state) for study in index.studies]
