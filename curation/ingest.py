"""Ingest one study: select -> read once -> gate -> frames -> lossy check -> geometry QA -> convert -> metadata.

Each selected file is read with pydicom exactly once (a plain slice's pixel
data is located, not read, and the conversion reads it straight into its
volume: :func:`curation.dicomfile.read_dicom_header`); the same datasets serve
the gate (which walks every nested sequence, functional groups included), then,
as single-frame slices (:func:`curation.frames.expand_frames` turns each frame
of an enhanced multi-frame object into one), the lossy-compression check
(the site's ``lossy`` option), the geometry checks, the conversion and the
metadata.  The step is
the :class:`IngestStage` (see :mod:`curation.stage` for reuse and records): a
study whose recorded outcome has the same fingerprint (content digest of every
file of the study, the gate's rule table and the site's pseudonym pattern) is
not worked on again, and a study whose files or gate settings changed is redone.

Both series are converted and compressed in memory, in threads, while the other
series are read and the gate runs; nothing is written before every check passed, and a problem is reported in the
same order as if the steps ran one after the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import threading
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from anonymization.dates import date_strings, dates_in_value, iter_dates
from anonymization.gate import check_datasets, profile_digest, raise_for_findings
from curation.atomic import atomic_write_json
from curation.compression import lossy_compression
from curation.config import IdentityFlagPolicy, LossyPolicy, SiteConfig
from curation.convert import encode_series, series_label
from curation.dicomfile import (
    LAZY_DECODE_ERRORS,
    READ_ERRORS,
    PixelDataLocation,
    pixel_data_problem,
    read_dicom_file,
    read_dicom_header,
)
from curation.errors import (
    AmbiguousSeriesError,
    ConversionFailedError,
    CurationError,
    LossyCompressionError,
    UnreadableError,
)
from curation.frames import expand_frames, is_multi_frame
from curation.geometry import check_series_geometry
from curation.metadata import ct_metadata, pet_metadata
from curation.model import (
    ConvertedCase,
    ImageFile,
    Modality,
    Phase,
    Rejection,
    SeriesRecord,
    StudyRecord,
    index_identifiers,
    to_jsonable,
)
from curation.nifti import CompressedNifti, write_compressed
from curation.select import select_series
from curation.stage import CaseStage, StudySubject, read_record
from curation.state import StatePaths
from curation.threads import stage_threads
from curation.uids import check_uid, iter_uids, read_character_set, seen_before, shown

logger = logging.getLogger(__name__)

#: Identifying attributes whose values are recorded for the release leak scan.
SENSITIVE_KEYWORDS: tuple[str, ...] = ("PatientID", "PatientName", "AccessionNumber", "OtherPatientIDs")


def _unreadable(series: SeriesRecord, path: str, exc: BaseException) -> UnreadableError:
    return UnreadableError(
        f"{path}: file of {series.Modality} series {series.SeriesInstanceUID} cannot be read "
        f"({type(exc).__name__}: {exc})"
    )


def _read_series(series: SeriesRecord) -> list[Dataset]:
    """Read the header of every file of ``series`` once, within the bounds of :mod:`curation.dicomfile`.

    A file that cannot be read, or breaks a bound, rejects the study (``unreadable``).
    """
    datasets = []
    for path in series.files:
        try:
            datasets.append(read_dicom_file(path, stop_before_pixels=True))
        except READ_ERRORS as exc:
            raise _unreadable(series, path, exc) from exc
    return datasets


def _read_series_for_conversion(series: SeriesRecord) -> tuple[list[Dataset], list[PixelDataLocation | None]]:
    """Read every file of a selected series once: each header whole, a plain slice's pixel data located.

    The conversion reads located pixel data straight into its volume
    (:func:`curation.dicomfile.read_dicom_header`); any other file is read
    with its pixel data.  A file that cannot be read, or breaks a bound,
    rejects the study (``unreadable``).
    """
    datasets: list[Dataset] = []
    locations: list[PixelDataLocation | None] = []
    for path in series.files:
        try:
            ds, location = read_dicom_header(path)
        except READ_ERRORS as exc:
            raise _unreadable(series, path, exc) from exc
        datasets.append(ds)
        locations.append(location)
    return datasets, locations


def sensitive_values(datasets: Iterable[Dataset], *, uids: bool = True) -> set[str]:
    """Every UID (unless ``uids`` is False) and identifying value (:data:`SENSITIVE_KEYWORDS`) in ``datasets``."""
    found: set[str] = set()
    seen: set[Hashable] = set()  # an element every instance repeats is decoded once
    for ds in datasets:
        if uids:
            found.update(iter_uids(ds))
        charset = read_character_set(ds)
        for keyword in SENSITIVE_KEYWORDS:
            if seen_before(ds.get_item(keyword), charset, seen):
                continue
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            values = value if isinstance(value, MultiValue | list | tuple) else [value]
            found.update(str(v).strip() for v in values if str(v).strip())
    return found


def header_dates(datasets: Iterable[Dataset]) -> set[dt.date]:
    """Every date in ``datasets``: DA values and the date part of DT values, nested and private ones too.

    Parameters
    ----------
    datasets
        Headers of a study (every series read, decoys too).

    Returns
    -------
    set[datetime.date]
        The calendar dates (:func:`anonymization.dates.iter_dates`), for the
        leak scan of a release that shifts dates or keeps the year only.
    """
    seen: set[Hashable] = set()  # the elements every instance repeats are looked at once
    return {day for ds in datasets for day in iter_dates(ds, seen=seen)}


def index_dates(study: StudyRecord) -> set[dt.date]:
    """The dates the index already knows of a study, recorded even when it is rejected early.

    Parameters
    ----------
    study
        A study from the index.

    Returns
    -------
    set[datetime.date]
        Its StudyDate (empty when the index has none).
    """
    return set(dates_in_value("DA", study.StudyDate or ""))


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a study's headers are parsed and checked.

    pydicom makes tens of thousands of objects per study; each 700 allocations
    start a collection that walks the young objects, and every so often all of
    them: about a quarter of the CPU of reading and gating the bench study
    (0.15 of 0.65 s).  Reference counting still frees everything that is not a
    cycle; the collector is enabled again (if it was) when the last concurrent
    pause ends, and collects any cycles then.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _converted_for_another_site(study: StudyRecord, site: SiteConfig, state: StatePaths) -> str | None:
    """The id of another site whose recorded outcome for this StudyInstanceUID is a converted case."""
    for path in state.study_outcomes_of_every_site(study.key):
        other = path.parent.parent.name
        if other != site.id and isinstance(read_record(path, ConvertedCase), ConvertedCase):
            return other
    return None


def _clear_case(state: StatePaths, key: str) -> None:
    """Remove a previous conversion of a study that is now rejected (stale volumes)."""
    folder = state.case_dir(key)
    for name in ("CT.nii.gz", "PT.nii.gz", "case.json"):
        (folder / name).unlink(missing_ok=True)


def _write_sensitive(
    state: StatePaths, site: SiteConfig, study: StudyRecord, values: set[str], dates: Iterable[dt.date]
) -> None:
    """Record a study's identifying values and, as a list of their own, its dates in every release form.

    ``dates`` is separate because the leak scan searches for them only when the
    release does not publish dates as delivered.
    """
    atomic_write_json(
        state.sensitive_dir(site.id) / f"{study.key}.json",
        {"StudyInstanceUID": study.StudyInstanceUID, "values": sorted(values), "dates": date_strings(dates)},
    )


def _slices(datasets: list[Dataset], site: SiteConfig) -> list[Dataset]:
    """The series as single-frame slices, refused when lossy-compressed and the site rejects that.

    A multi-frame object's pixel data must fit its header before any frame is
    decoded (a single-frame slice is checked by the conversion, slice by slice).
    """
    label = series_label(datasets)
    for n, ds in enumerate(datasets):
        problem = pixel_data_problem(ds) if is_multi_frame(ds) else None
        if problem is not None:
            raise ConversionFailedError(f"{label}: instance {n} (multi-frame): pixel data cannot be decoded: {problem}")
    frames = expand_frames(datasets, series_label=label)
    lossy = lossy_compression(frames)
    if lossy.lossy and site.lossy is LossyPolicy.REJECT:
        raise LossyCompressionError(
            f"{label}: lossy-compressed: {lossy.evidence}; site {site.id!r} has lossy = 'reject' "
            "(set lossy = 'accept' to release it, the details sheets record the compression)"
        )
    return frames


#: The UIDs of every selected file that must conform (PS3.5 9.1): they name folders, files and cases.
CHECKED_UIDS: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


def check_study_uids(study: StudyRecord, selected: Iterable[SeriesRecord]) -> None:
    """Refuse a study whose StudyInstanceUID or selected series' UIDs are not DICOM UIDs.

    Raises
    ------
    InvalidUIDError
        Naming the attribute, the value and the series.
    """
    check_uid(study.StudyInstanceUID, keyword="StudyInstanceUID", where=f"study {shown(study.StudyInstanceUID)}")
    for series in selected:
        where = f"{series.Modality} series {shown(series.SeriesInstanceUID)} of study {study.StudyInstanceUID}"
        check_uid(series.SeriesInstanceUID, keyword="SeriesInstanceUID", where=where)
        check_uid(series.FrameOfReferenceUID, keyword="FrameOfReferenceUID", where=where)


def check_file_uids(series: SeriesRecord, datasets: Iterable[Dataset]) -> None:
    """Refuse a series one of whose files has a :data:`CHECKED_UIDS` value that is not a DICOM UID.

    Raises
    ------
    InvalidUIDError
        Naming the file, the attribute and the value.
    """
    for path, ds in zip(series.files, datasets, strict=True):
        for keyword in CHECKED_UIDS:
            value = ds.get(keyword)
            check_uid(str(value) if value is not None else "", keyword=keyword,
                      where=f"{path} ({series.Modality} series {series.SeriesInstanceUID})")


def _convert(study: StudyRecord, site: SiteConfig, state: StatePaths, fingerprint: str) -> ConvertedCase:
    # recorded before anything can reject the study: the leak scan covers every study seen
    _write_sensitive(state, site, study, index_identifiers(study), index_dates(study))
    check_study_uids(study, ())
    selection = select_series(study)
    check_study_uids(study, (selection.ct, selection.pt))
    case_dir = state.case_dir(study.key)
    # Both series are converted and compressed in memory, in threads started once both series'
    # headers are read (a conversion thread beside the reading would take the GIL at every file
    # the reader opens), while the other series are read and the gate runs. A conversion is
    # written only once every check passed, and its errors come after the gate's and the geometry's.
    # (one thread when the run's workers already fill the cores: curation.threads)
    pool = ThreadPoolExecutor(max_workers=stage_threads(), thread_name_prefix="conversion")
    jobs: list[Future[CompressedNifti]] = []
    try:
        ct_datasets, ct_pixels = _read_series_for_conversion(selection.ct)
        pt_datasets, pt_pixels = _read_series_for_conversion(selection.pt)
        jobs.append(pool.submit(encode_series, ct_datasets, modality=Modality.CT, pixel_data=ct_pixels))
        jobs.append(pool.submit(encode_series, pt_datasets, modality=Modality.PT, pixel_data=pt_pixels))
        ct_job, pt_job = jobs
        others = [
            ds
            for series in study.series
            if series.SeriesInstanceUID not in (selection.ct.SeriesInstanceUID, selection.pt.SeriesInstanceUID)
            for ds in _read_series(series)
        ]

        report = check_datasets(
            [*ct_datasets, *pt_datasets], pseudonym_pattern=site.pseudonym_pattern,
            identity_flag_required=site.identity_removed_flag is IdentityFlagPolicy.REQUIRED,
        )
        headers = [*ct_datasets, *pt_datasets, *others]
        # the gate's sensitive values hold every UID of the datasets it checked: not walked twice
        sensitive = (
            sensitive_values(others) | sensitive_values([*ct_datasets, *pt_datasets], uids=False)
            | set(report.sensitive_values)
        )
        _write_sensitive(
            state, site, study, sensitive | index_identifiers(study), header_dates(headers) | index_dates(study)
        )
        raise_for_findings(
            report,
            context=f"{series_label(ct_datasets)} / {series_label(pt_datasets)} of study {study.StudyInstanceUID}",
        )
        check_file_uids(selection.ct, ct_datasets)
        check_file_uids(selection.pt, pt_datasets)

        ct_frames = _slices(ct_datasets, site)
        pt_frames = _slices(pt_datasets, site)
        ct_stack = check_series_geometry(ct_frames, series_label=series_label(ct_datasets))
        pt_stack = check_series_geometry(pt_frames, series_label=series_label(pt_datasets))
        # read while the conversions finish; a value that cannot be decoded is raised after their problems
        try:
            metadata: tuple[dict[str, Any], dict[str, Any]] | BaseException = (
                ct_metadata(ct_stack.datasets, stack=ct_stack), pet_metadata(pt_stack.datasets, stack=pt_stack)
            )
        except LAZY_DECODE_ERRORS as exc:
            metadata = exc
        ct_image = write_compressed(ct_job.result(), case_dir / "CT.nii.gz")
        pt_image = write_compressed(pt_job.result(), case_dir / "PT.nii.gz")
        if isinstance(metadata, BaseException):
            raise metadata
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a rejected study: what has not started never runs
    case = ConvertedCase(
        site=site.id,
        StudyInstanceUID=study.StudyInstanceUID,
        PatientID=study.PatientID,
        StudyDate=study.StudyDate,
        fingerprint=fingerprint,
        ct_series=selection.ct.SeriesInstanceUID,
        pt_series=selection.pt.SeriesInstanceUID,
        ct=ct_image,
        pt=pt_image,
        ct_metadata=metadata[0],
        pt_metadata=metadata[1],
        ignored=selection.ignored,
        private_review=tuple(report.private_review),
    )
    atomic_write_json(case_dir / "case.json", to_jsonable(case))
    return case


@dataclass(frozen=True)
class IngestStage(CaseStage[ConvertedCase]):
    """Gate, select, check and convert one study of ``site`` (upstream: ``(StudyRecord,)``).

    The fingerprint covers the sha256 of every source file of the study
    (``StudyRecord.fingerprint``) and everything else that decides the outcome:
    the gate's rule table, the site's pseudonym pattern, its ``lossy`` option
    and its ``identity_removed_flag`` option, so a tightened gate re-checks
    studies converted before and a site that starts accepting lossy series (or
    stops requiring PatientIdentityRemoved) gets its rejected studies checked again.

    Attributes
    ----------
    site
        The site's configuration.
    state
        Where volumes, ``case.json``, identifying values and the record go.
    """

    name: ClassVar[str] = "ingest"
    phase: ClassVar[Phase] = Phase.INGEST
    # 3: every header date in the identifying values; 4: enhanced objects, lossy option and columns;
    # 5: SUV-ready PET columns; 6: the gate refuses a private person name in implicit VR (VR UN) and
    # records names typed with spaces for the leak scan
    version: ClassVar[int] = 6
    record_type: ClassVar[type] = ConvertedCase
    done: ClassVar[str] = "converted"
    done_event: ClassVar[str] = "study-converted"
    input_name: ClassVar[str] = "dicom"

    site: SiteConfig
    state: StatePaths

    def record_path(self, subject: StudySubject) -> Path:
        """``sites/<site>/studies/<key>.json``."""
        return self.state.study_outcome(subject.site, subject.key)

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        """Source files' content, gate rule table, pseudonym pattern, lossy option, identity flag option."""
        (study,) = upstream
        return {
            "dicom": study.fingerprint,
            "gate": profile_digest(),
            "pseudonym_pattern": self.site.pseudonym_pattern,
            "lossy": self.site.lossy.value,
            "identity_removed_flag": self.site.identity_removed_flag.value,
        }

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> ConvertedCase:
        """Convert the study; a study another site converted already is ``ambiguous-series``."""
        (study,) = upstream
        if study.site != self.site.id:
            raise ValueError(f"study {study.key} belongs to site {study.site!r}, not {self.site.id!r}")
        other = _converted_for_another_site(study, self.site, self.state)
        if other is not None:
            # one study is one case: the volumes under cases/<key> belong to the other site's case
            raise AmbiguousSeriesError(
                f"study {study.StudyInstanceUID} is also delivered by site {other!r}, where it was converted "
                "already: a study is released once; remove it from one of the two drops"
            )
        try:
            try:
                with _cyclic_gc_paused():
                    return _convert(study, self.site, self.state, fingerprint)
            except LAZY_DECODE_ERRORS as exc:
                # pydicom decodes an element when it is first used: a malformed one fails there
                raise UnreadableError(
                    f"study {study.StudyInstanceUID}: an element of a selected file cannot be decoded "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        except CurationError:
            _clear_case(self.state, study.key)  # no stale volumes of an earlier conversion
            raise

    def outputs(self, record: ConvertedCase) -> dict[str, ImageFile]:
        """The converted CT and PET volumes."""
        return {"CT.nii.gz": record.ct, "PT.nii.gz": record.pt}

    def parameters(self, record: ConvertedCase) -> dict[str, Any]:
        """The selected series, the ignored ones and why, private attributes for review, the identity flag option."""
        return {
            "identity_removed_flag": self.site.identity_removed_flag.value,
            "ct_series": record.ct_series,
            "pt_series": record.pt_series,
            "ignored_series": [{"series": s.SeriesInstanceUID, "why": s.why} for s in record.ignored],
            "private_attributes_for_review": list(record.private_review),
        }


def ingest_study(study: StudyRecord, site: SiteConfig, state: StatePaths) -> ConvertedCase | Rejection:
    """Make one study into a converted case, or reject it with a reason code.

    Parameters
    ----------
    study
        A study of ``site`` from :func:`curation.dicomindex.index_site`.
    site
        The site's configuration (``pseudonym_pattern`` for the gate).
    state
        Where volumes, ``case.json``, identifying values and the record go.

    Returns
    -------
    ConvertedCase | Rejection
        The outcome, also recorded in ``state``; an unchanged study's recorded
        outcome is returned without any work (:class:`IngestStage`).

    Raises
    ------
    ValueError
        When ``study`` is not a study of ``site``.
    """
    return IngestStage(site=site, state=state).run((study,)).outcome
